"""Signature layers an attacker who can push to the `.sig` tag adds beside a valid signature.

Each layer is judged on its own: one that cannot be read is a reason for that layer, never an
exception that escapes the verifier and hides the valid signature next to it. Driven through
`CosignVerifier` with an in-memory registry, so `find` is covered as well as the checks.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import sigstore_pki as pki
from imagegate.policy import engine, model
from imagegate.signatures import cosign
from imagegate.signatures.verifier import CosignVerifier

HOST, REPOSITORY = "registry.test", "team/app"
OAUTH = "https://github.com/login/oauth"
KEYLESS = "connaisseur-keyless-rekor-test"
KEYLESS_SIGNER = "philipp.belitz@securesystems.de"
KEYED = "containers-image-dir-img-cosign-key-rekor-valid"


class Registry:
    """Serves one `.sig` manifest and its blobs; no referrers (the legacy format only)."""

    def __init__(self, layers: list[tuple[dict[str, Any], bytes]]) -> None:
        self.blobs = {layer["digest"]: blob for layer, blob in layers}
        self.manifest_body = json.dumps({"layers": [layer for layer, _ in layers]}).encode()

    async def manifest(self, *_: str, deadline: float | None) -> tuple[bytes, str]:
        return self.manifest_body, "sha256:" + hashlib.sha256(self.manifest_body).hexdigest()

    async def blob(self, _host: str, _repository: str, digest: str, **_: Any) -> bytes:
        return self.blobs[digest]

    async def referrers(self, *_: str, **__: Any) -> list[Any]:
        return []


layer = pki.sig_layer


def digest_of(payload: bytes) -> str:
    return str(json.loads(payload)["critical"]["image"]["docker-manifest-digest"])


async def verdict(
    layers: list[tuple[dict[str, Any], bytes]], digest: str, needs: model.Signatures
) -> engine.SignatureVerdict:
    verifier = CosignVerifier(Registry(layers))  # type: ignore[arg-type]
    check = engine.SignatureCheck(f"{HOST}/{REPOSITORY}@{digest}", "p", "s", needs)
    return (await verifier.verify([check], time.monotonic() + 30))[check]


# --- a valid keyless signature, and certificates an attacker makes ------------------------------


def keyless_layer(shared_fixtures: Path) -> tuple[dict[str, Any], bytes]:
    folder = shared_fixtures / "signatures" / KEYLESS
    return layer(
        (folder / "payload.json").read_bytes(),
        (folder / "signature.b64").read_text().strip(),
        certificate=(folder / "cert.pem").read_text(),
        chain=(folder / "chain.pem").read_text(),
        bundle=(folder / "bundle.json").read_text(),
    )


#: Keyless without a log, so an attacker's own certificate reaches the certificate checks.
KEYLESS_NO_LOG = model.Signatures.model_validate(
    {
        "keyless": [{"issuer": OAUTH, "subject": KEYLESS_SIGNER}],
        "requireTransparencyLog": False,
    }
)


def attacker_certificate(
    key: ec.EllipticCurvePrivateKey, extension: x509.ExtensionType | None = None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if extension is not None:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())


def pem(certificate: x509.Certificate | bytes) -> str:
    der = (
        certificate
        if isinstance(certificate, bytes)
        else certificate.public_bytes(serialization.Encoding.DER)
    )
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def unparsable_certificate(payload: bytes) -> tuple[dict[str, Any], bytes]:
    return layer(payload, base64.b64encode(b"sig").decode(), certificate=pem(b"\x30\x03\x02\x01"))


def unknown_key_algorithm(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """A certificate whose key is of an algorithm no one knows (id-ecPublicKey's OID, moved)."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = attacker_certificate(key).public_bytes(serialization.Encoding.DER)
    ec_public_key = bytes.fromhex("06072a8648ce3d0201")  # OID 1.2.840.10045.2.1
    assert der.count(ec_public_key) == 1
    der = der.replace(ec_public_key, bytes.fromhex("06072a8648ce3d0209"))
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return layer(payload, base64.b64encode(signature).decode(), certificate=pem(der))


def empty_extended_key_usage(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """Signed by its own certificate's key, whose extended key usage is an empty SEQUENCE."""
    key = ec.generate_private_key(ec.SECP256R1())
    empty = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.37"), b"\x30\x00")
    certificate = attacker_certificate(key, empty)
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return layer(payload, base64.b64encode(signature).decode(), certificate=pem(certificate))


CERTIFICATE_ATTACKS = {
    "unparsable certificate": (unparsable_certificate, "certificate is unreadable"),
    "unknown key algorithm": (unknown_key_algorithm, "malformed signature"),
    "empty extended key usage": (empty_extended_key_usage, "malformed signature"),
}


@pytest.mark.parametrize("attack", CERTIFICATE_ATTACKS)
@pytest.mark.parametrize("hostile_first", [True, False], ids=["before", "after"])
async def test_a_hostile_certificate_layer_does_not_hide_a_valid_keyless_signature(
    shared_fixtures: Path, attack: str, hostile_first: bool
) -> None:
    valid = keyless_layer(shared_fixtures)
    hostile = CERTIFICATE_ATTACKS[attack][0](valid[1])
    layers = [hostile, valid] if hostile_first else [valid, hostile]
    digest = digest_of(valid[1])
    assert await verdict(layers, digest, KEYLESS_NO_LOG) == engine.SignatureVerdict(
        True, digest=digest
    )


@pytest.mark.parametrize("attack", CERTIFICATE_ATTACKS)
async def test_a_hostile_certificate_layer_alone_is_a_denial_with_its_reason(
    shared_fixtures: Path, attack: str
) -> None:
    make, reason = CERTIFICATE_ATTACKS[attack]
    payload = keyless_layer(shared_fixtures)[1]
    result = await verdict([make(payload)], digest_of(payload), KEYLESS_NO_LOG)
    assert not result.verified
    assert result.reason.startswith(f"{digest_of(payload)}: keyless[0]: ")
    assert reason in result.reason


# --- a valid key signature with a log entry, and layers an attacker makes of it -----------------


def keyed(shared_fixtures: Path) -> tuple[tuple[dict[str, Any], bytes], model.Signatures]:
    folder = shared_fixtures / "signatures" / KEYED
    valid = layer(
        (folder / "payload.json").read_bytes(),
        (folder / "signature.b64").read_text().strip(),
        bundle=(folder / "bundle.json").read_text(),
    )
    needs = model.Signatures.model_validate(
        {"keys": [{"publicKey": (folder / "cosign2.pub").read_text()}]}
    )
    return valid, needs


def far_future_log_entry(valid: tuple[dict[str, Any], bytes]) -> tuple[dict[str, Any], bytes]:
    """The valid signature again, with a log entry seen in a year no calendar holds."""
    descriptor, payload = valid
    annotations = descriptor["annotations"]
    bundle = json.loads(annotations[cosign.REKOR_ANNOTATION])
    bundle["Payload"]["integratedTime"] = 1e20
    return layer(payload, annotations[cosign.SIGNATURE_ANNOTATION], bundle=json.dumps(bundle))


def garbage_base64_signature(valid: tuple[dict[str, Any], bytes]) -> tuple[dict[str, Any], bytes]:
    return layer(valid[1], "%%% not base64 %%%")


KEY_ATTACKS = {
    "integratedTime 1e20": (
        far_future_log_entry,
        "bad SET: the transparency log bundle is malformed",
    ),
    "garbage base64 signature": (garbage_base64_signature, "malformed signature: not base64"),
}


@pytest.mark.parametrize("attack", KEY_ATTACKS)
@pytest.mark.parametrize("hostile_first", [True, False], ids=["before", "after"])
async def test_a_hostile_layer_does_not_hide_a_valid_key_signature(
    shared_fixtures: Path, attack: str, hostile_first: bool
) -> None:
    valid, needs = keyed(shared_fixtures)
    hostile = KEY_ATTACKS[attack][0](valid)
    layers = [hostile, valid] if hostile_first else [valid, hostile]
    digest = digest_of(valid[1])
    assert await verdict(layers, digest, needs) == engine.SignatureVerdict(True, digest=digest)


@pytest.mark.parametrize("attack", KEY_ATTACKS)
async def test_a_hostile_layer_alone_is_a_denial_with_its_reason(
    shared_fixtures: Path, attack: str
) -> None:
    valid, needs = keyed(shared_fixtures)
    make, reason = KEY_ATTACKS[attack]
    digest = digest_of(valid[1])
    result = await verdict([make(valid)], digest, needs)
    assert result == engine.SignatureVerdict(False, f"{digest}: keys[0]: {reason}", digest=digest)
