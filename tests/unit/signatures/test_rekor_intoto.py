"""Legacy `.att` attestations logged in Rekor as `intoto` entries (design.md §9.8), built with
the test's own Fulcio and log: 0.0.2 (and 0.0.1) bodies whose SET verifies, checked against the
envelope the layer stores, its payload, its signature and its signer; each mismatch is refused
with its reason, never an exception."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import sigstore_pki as pki
from imagegate.policy import model
from imagegate.signatures import attestations, authorities, cosign, roots
from imagegate.signatures.failures import SignatureFailure

HOST, REPOSITORY = "registry.test", "team/app"
PROVENANCE = "https://slsa.dev/provenance/v0.2"
FULCIO_ROOT = pki.ca("test fulcio root")
INTERMEDIATE = pki.ca("test fulcio intermediate", FULCIO_ROOT, path_length=0)
SIGNER = pki.leaf(INTERMEDIATE)
OTHER = pki.leaf(INTERMEDIATE)
KEY = ec.generate_private_key(ec.SECP256R1())
LOG = pki.Log()
ROOT = roots.custom(json.dumps(pki.trust_root([[INTERMEDIATE, FULCIO_ROOT]], [LOG])))

Body = Callable[[bytes], dict[str, Any]]


def envelope_json(signer: ec.EllipticCurvePrivateKey = SIGNER.key) -> bytes:
    statement = pki.attestation_statement(PROVENANCE, {"builder": {"id": "https://ci.example"}})
    return json.dumps(pki.envelope(statement, [signer])).encode()


def v002(envelope: bytes) -> dict[str, Any]:
    return pki.intoto_v002(envelope, [SIGNER.pem.encode()])


def v001(envelope: bytes) -> dict[str, Any]:
    return pki.intoto_v001(envelope, SIGNER.pem.encode())


async def found_att(
    envelope: bytes, body: dict[str, Any], *, certificate: str | None = SIGNER.pem
) -> list[cosign.FoundSignature]:
    """What `cosign.find_attestations` reads from an `.att` layer storing `envelope`, logged
    with `body` (a valid SET over it)."""
    layer = pki.att_layer(
        envelope,
        certificate=certificate,
        chain=INTERMEDIATE.pem + FULCIO_ROOT.pem,
        bundle=json.dumps(LOG.promise(body)),
    )
    registry = pki.Registry(attestation_layers=[layer])
    return await cosign.find_attestations(registry, HOST, REPOSITORY, pki.DIGEST, deadline=None)  # type: ignore[arg-type]


def keyless(subject: str = pki.SIGNER) -> authorities.AnyOf:
    needs = model.Signatures.model_validate(
        {"keyless": [{"issuer": pki.ISSUER, "subject": subject}], "requireTransparencyLog": True}
    )
    return authorities.of_requirement(needs, [], ROOT)


def keyed() -> authorities.AnyOf:
    from imagegate.core import keys

    pem = pki.spki_pem(KEY.public_key()).decode()
    needs = model.Signatures.model_validate(
        {"keys": [{"publicKey": pem}], "requireTransparencyLog": True}
    )
    return authorities.of_requirement(needs, [keys.load_public_key(pem)], ROOT)


def requirement(authority: authorities.AnyOf) -> Callable[[list[cosign.FoundSignature]], None]:
    wanted = model.Attestation.model_validate({"predicateType": "slsaprovenance"})

    def verify(found: list[cosign.FoundSignature]) -> None:
        attestations.verify(wanted, found, pki.DIGEST, authority, pki.NOW)

    return verify


def refusal(run: Callable[[], None]) -> str:
    with pytest.raises(SignatureFailure) as refused:
        run()
    return refused.value.user_message


@pytest.mark.parametrize("body", [v002, v001], ids=["0.0.2", "0.0.1"])
async def test_a_keyless_att_logged_as_intoto_verifies_with_the_log_required(body: Body) -> None:
    envelope = envelope_json()
    requirement(keyless())(await found_att(envelope, body(envelope)))


async def test_a_key_signed_att_logged_as_intoto_0_0_2_verifies() -> None:
    """cosign logs a key signer's PEM public key in the entry."""
    envelope = envelope_json(KEY)
    body = pki.intoto_v002(envelope, [pki.spki_pem(KEY.public_key())])
    requirement(keyed())(await found_att(envelope, body, certificate=None))


def _sig_of(body: dict[str, Any], sig: str) -> dict[str, Any]:
    body["spec"]["content"]["envelope"]["signatures"][0]["sig"] = sig
    return body


def _other_signature(body: dict[str, Any]) -> dict[str, Any]:
    other = json.loads(envelope_json())["signatures"][0]["sig"]  # ECDSA: a new signature
    return _sig_of(body, base64.b64encode(other.encode()).decode())


def _hash(field: str, value: str = "00" * 32, algorithm: str = "sha256") -> Body:
    def body(envelope: bytes) -> dict[str, Any]:
        changed = v002(envelope)
        changed["spec"]["content"][field] = {"algorithm": algorithm, "value": value}
        return changed

    return body


def _changed(change: Callable[[dict[str, Any]], object]) -> Body:
    def body(envelope: bytes) -> dict[str, Any]:
        changed = v002(envelope)
        change(changed)
        return changed

    return body


def _set_signer(body: dict[str, Any], pem: bytes) -> None:
    body["spec"]["content"]["envelope"]["signatures"][0]["publicKey"] = base64.b64encode(
        pem
    ).decode()


TAMPERED: dict[str, tuple[Body, str]] = {
    "envelope hash": (_hash("hash"), "the log entry is for another envelope (content.hash)"),
    "payload hash": (_hash("payloadHash"), "the log entry is for another payload"),
    "sha512 hash": (_hash("hash", "00" * 64, "sha512"), "hashes are 'sha512', not sha256"),
    "hash not hex": (_hash("payloadHash", "zz" * 32), "the log entry's body is malformed"),
    "payload type": (
        _changed(lambda b: b["spec"]["content"]["envelope"].update(payloadType="text/plain")),
        "the log entry is for another payload type",
    ),
    "other signature": (_changed(_other_signature), "the log entry is for another signature"),
    # The raw signature, not the base64 of the envelope's base64 text: a 0.0.2 entry never is.
    "sig encoded once": (
        _changed(lambda b: _sig_of(b, json.loads(envelope_json())["signatures"][0]["sig"])),
        "the log entry's body is malformed",
    ),
    "other cert": (
        _changed(lambda b: _set_signer(b, OTHER.pem.encode())),
        "the log entry names another key",
    ),
    "no signatures": (
        _changed(lambda b: b["spec"]["content"]["envelope"].update(signatures="x")),
        "the log entry's body is malformed",
    ),
    "no spec": (_changed(lambda b: b.pop("spec")), "the log entry's body is malformed"),
    "version": (
        _changed(lambda b: b.update(apiVersion="0.0.3")),
        "intoto log entry version '0.0.3', not 0.0.1 or 0.0.2",
    ),
}


@pytest.mark.parametrize("name", TAMPERED)
async def test_a_tampered_intoto_0_0_2_entry_is_refused_with_its_reason(name: str) -> None:
    body, reason = TAMPERED[name]
    envelope = envelope_json()
    found = await found_att(envelope, body(envelope))
    assert reason in refusal(lambda: requirement(keyless())(found))


@pytest.mark.parametrize("body", [v002, v001], ids=["0.0.2", "0.0.1"])
async def test_a_layer_other_than_the_logged_envelope_is_refused(body: Body) -> None:
    """The same statement and signature, re-serialised: the entry hashed other bytes."""
    envelope = envelope_json()
    respaced = json.dumps(json.loads(envelope), indent=1).encode()
    found = await found_att(respaced, body(envelope))
    assert "the log entry is for another envelope (content.hash)" in refusal(
        lambda: requirement(keyless())(found)
    )


async def test_an_intoto_0_0_1_entry_naming_another_cert_is_refused() -> None:
    envelope = envelope_json()
    body = pki.intoto_v001(envelope, OTHER.pem.encode())
    found = await found_att(envelope, body)
    assert "the log entry names another key" in refusal(lambda: requirement(keyless())(found))


async def test_an_intoto_entry_does_not_prove_a_sig_layer() -> None:
    """A `.sig` signature has no envelope an `intoto` entry could be about."""
    from imagegate.signatures import rekor

    envelope = envelope_json()
    promise = LOG.promise(v002(envelope))
    signature = base64.b64decode(json.loads(envelope)["signatures"][0]["sig"])
    with pytest.raises(SignatureFailure, match="only a DSSE envelope"):
        rekor.verify_set(promise, b"payload", signature, SIGNER.der, ROOT.document)


async def test_a_malformed_envelope_beside_an_intoto_entry_is_a_reason() -> None:
    from imagegate.signatures import rekor

    envelope = envelope_json()
    promise = LOG.promise(v002(envelope))
    with pytest.raises(SignatureFailure, match="the attestation's envelope is malformed"):
        rekor.verify_set(promise, b"", b"sig", SIGNER.der, ROOT.document, envelope=b"[1]")
