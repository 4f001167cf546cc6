"""Transparency-log entries that cosign and sigstore-conformance refuse (or accept), on a log of
the test's own: log keys without a start, hash algorithms and versions other than cosign's,
bundles with a bad entry beside a good one, several DSSE signatures, and key signatures logged
with the signer's certificate."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any
from unittest import mock

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import sigstore_pki as pki
from imagegate.core import keys
from imagegate.policy import engine, model
from imagegate.signatures import cosign, rekor, roots
from imagegate.signatures.failures import BadTransparencyLogEntry, SignatureFailure
from imagegate.signatures.verifier import CosignVerifier

IMAGE = f"registry.invalid/app@{pki.DIGEST}"


def public(key: ec.EllipticCurvePrivateKey) -> keys.PublicKey:
    return keys.load_public_key(pki.spki_pem(key.public_key()).decode())


def key_signed_legacy(
    signer: ec.EllipticCurvePrivateKey, log: pki.Log, body: dict[str, Any] | None = None
) -> cosign.FoundSignature:
    """A legacy key signature whose log entry is `body` (by default, the right hashedrekord)."""
    payload = pki.simple_signing()
    signature = signer.sign(payload, ec.ECDSA(hashes.SHA256()))
    body = body or pki.hashedrekord(payload, signature, pki.spki_pem(signer.public_key()))
    return cosign.FoundSignature(
        "legacy", payload, signature, payload, transparency=json.dumps(log.promise(body))
    )


def verify_key(
    found: cosign.FoundSignature, signer: ec.EllipticCurvePrivateKey, root: dict[str, Any]
) -> None:
    cosign.verify_one_with_key(
        found, public(signer), pki.DIGEST, require_tlog=True, trusted_root=root
    )


def refused(reason: str) -> pytest.RaisesContext[BadTransparencyLogEntry]:
    return pytest.raises(BadTransparencyLogEntry, match=f"^{re.escape(reason)}$")


def test_a_log_key_without_a_start_is_not_trusted() -> None:
    log, signer = pki.Log(valid_for={}), ec.generate_private_key(ec.SECP256R1())
    found = key_signed_legacy(signer, log)
    reason = "bad SET: the trust root's key for its log has no validFor.start (cannot be trusted)"
    with refused(reason):
        verify_key(found, signer, pki.trust_root([], [log]))
    ended_only = pki.Log(valid_for={"end": "2099-01-01T00:00:00Z"})
    with refused(reason):
        verify_key(key_signed_legacy(signer, ended_only), signer, pki.trust_root([], [ended_only]))


def _rewritten(body: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(body))
    target = copy
    for name in path[:-1]:
        target = target[name]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return copy


def _hashedrekord_for(signer: ec.EllipticCurvePrivateKey) -> tuple[bytes, dict[str, Any]]:
    # ECDSA signatures are randomised: sign once, log that signature.
    found = key_signed_legacy(signer, pki.Log())
    body = pki.hashedrekord(found.signed, found.signature, pki.spki_pem(signer.public_key()))
    return found.signature, body


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("spec", "data", "hash", "algorithm"), "sha512", "payload hash is 'sha512', not sha256"),
        (("apiVersion",), "0.0.2", "log entry version '0.0.2', not 0.0.1"),
        (("apiVersion",), None, "log entry version None, not 0.0.1"),
    ],
)
def test_a_hashedrekord_entry_other_than_cosigns_is_refused(
    path: tuple[str, ...], value: object, reason: str
) -> None:
    log, signer = pki.Log(), ec.generate_private_key(ec.SECP256R1())
    signature, body = _hashedrekord_for(signer)
    payload = pki.simple_signing()
    found = cosign.FoundSignature(
        "legacy",
        payload,
        signature,
        payload,
        transparency=json.dumps(log.promise(_rewritten(body, path, value))),
    )
    root = pki.trust_root([], [log])
    with pytest.raises(BadTransparencyLogEntry, match=re.escape(reason)):
        verify_key(found, signer, root)


def _dsse_bundle_found(bundle: dict[str, Any]) -> list[cosign.FoundSignature]:
    found = cosign._from_bundle(bundle, json.dumps(bundle).encode())
    return found if isinstance(found, list) else [found]


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("apiVersion",), "0.0.2", "log entry version '0.0.2', not 0.0.1"),
        (("spec", "envelopeHash"), None, "the log entry's body is malformed"),
        (("spec", "envelopeHash", "algorithm"), "sha1", "hashes are 'sha1', not sha256"),
        (("spec", "envelopeHash", "value"), "not hex", "the log entry's body is malformed"),
        (("spec", "payloadHash", "algorithm"), "sha512", "hashes are 'sha512', not sha256"),
    ],
)
def test_a_dsse_entry_other_than_cosigns_is_refused(
    path: tuple[str, ...], value: object, reason: str
) -> None:
    log, signer = pki.Log(), ec.generate_private_key(ec.SECP256R1())
    bundle = pki.key_bundle([signer])
    envelope = bundle["dsseEnvelope"]
    body = pki.dsse(
        base64.b64decode(envelope["payload"]),
        [(base64.b64decode(envelope["signatures"][0]["sig"]), pki.spki_pem(signer.public_key()))],
    )
    entry = log.bundle_entry(_rewritten(body, path, value))
    bundle["verificationMaterial"]["tlogEntries"] = [entry]
    root = pki.trust_root([], [log])
    with pytest.raises(SignatureFailure, match=re.escape(reason)):
        cosign.verify_with_key(
            _dsse_bundle_found(bundle),
            public(signer),
            pki.DIGEST,
            require_tlog=True,
            trusted_root=root,
        )


@pytest.mark.parametrize("bad_first", [True, False], ids=["bad-then-good", "good-then-bad"])
def test_every_log_entry_of_a_bundle_must_verify(bad_first: bool) -> None:
    log, signer = pki.Log(), ec.generate_private_key(ec.SECP256R1())
    bundle = pki.key_bundle([signer], log)
    good = bundle["verificationMaterial"]["tlogEntries"][0]
    bad = json.loads(json.dumps(good))
    bad["integratedTime"] = str(int(bad["integratedTime"]) + 1)  # the SET no longer covers it
    bundle["verificationMaterial"]["tlogEntries"] = [bad, good] if bad_first else [good, bad]
    root = pki.trust_root([], [log])
    with pytest.raises(BadTransparencyLogEntry, match=r"^bad SET: the log's signature does not"):
        cosign.verify_with_key(
            _dsse_bundle_found(bundle),
            public(signer),
            pki.DIGEST,
            require_tlog=True,
            trusted_root=root,
        )


async def _verdict(
    registry: pki.Registry, needs: model.Signatures, trusted_root: dict[str, Any]
) -> engine.SignatureVerdict:
    verifier = CosignVerifier(registry)  # type: ignore[arg-type]
    check = engine.SignatureCheck(IMAGE, "p", "s", needs)
    root = roots.Root(trusted_root, lambda: None)
    with mock.patch.object(roots, "public_good", return_value=root):
        return (await verifier.verify([check], time.monotonic() + 30))[check]


def _needs(key: ec.EllipticCurvePrivateKey) -> model.Signatures:
    return model.Signatures.model_validate(
        {"keys": [{"publicKey": pki.spki_pem(key.public_key()).decode()}]}
    )


async def test_a_valid_dsse_signature_placed_second_is_found() -> None:
    log = pki.Log()
    stranger, signer = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    bundle = pki.key_bundle([stranger, signer], log)
    registry = pki.Registry(bundles=[json.dumps(bundle).encode()])
    verdict = await _verdict(registry, _needs(signer), pki.trust_root([], [log]))
    assert verdict == engine.SignatureVerdict(True, digest=pki.DIGEST)
    nobody = ec.generate_private_key(ec.SECP256R1())
    verdict = await _verdict(registry, _needs(nobody), pki.trust_root([], [log]))
    assert verdict.reason == f"{pki.DIGEST}: keys[0]: signature does not verify with the key"


def test_a_key_signature_logged_with_the_signers_certificate_is_accepted() -> None:
    """`cosign sign --key k --certificate c`: the log entry carries c, whose key is k."""
    log = pki.Log()
    root_ca = pki.ca("any ca")
    certified = pki.leaf(root_ca)
    payload = pki.simple_signing()
    signature = certified.key.sign(payload, ec.ECDSA(hashes.SHA256()))
    body = pki.hashedrekord(payload, signature, certified.pem.encode())
    found = cosign.FoundSignature(
        "legacy", payload, signature, payload, transparency=json.dumps(log.promise(body))
    )
    verify_key(found, certified.key, pki.trust_root([], [log]))
    # Another key's certificate still names another key.
    other = pki.leaf(root_ca)
    body = pki.hashedrekord(payload, signature, other.pem.encode())
    found = cosign.FoundSignature(
        "legacy", payload, signature, payload, transparency=json.dumps(log.promise(body))
    )
    with refused("bad SET: the log entry names another key"):
        verify_key(found, certified.key, pki.trust_root([], [log]))


def test_a_bundle_entry_declaring_another_kind_than_its_body_is_refused() -> None:
    log, signer = pki.Log(), ec.generate_private_key(ec.SECP256R1())
    bundle = pki.key_bundle([signer], log)
    bundle["verificationMaterial"]["tlogEntries"][0]["kindVersion"]["kind"] = "hashedrekord"
    with refused("bad SET: the log entry's kindVersion is not its body's"):
        cosign.verify_with_key(
            _dsse_bundle_found(bundle),
            public(signer),
            pki.DIGEST,
            require_tlog=True,
            trusted_root=pki.trust_root([], [log]),
        )


def test_a_keyless_entry_must_name_the_certificate_not_only_its_key() -> None:
    """The other direction stays strict: a keyless signer is its certificate."""
    signer = pki.leaf(pki.ca("any ca"))
    payload = pki.simple_signing()
    signature = signer.key.sign(payload, ec.ECDSA(hashes.SHA256()))
    body = pki.hashedrekord(payload, signature, pki.spki_pem(signer.key.public_key()))
    with refused("bad SET: the log entry names another key"):
        rekor._check_body(body, payload, signature, signer.der)
