"""Transparency-log entries inside v0.3 bundles (`tlogEntries`), checked offline by their SET.

A real public-good entry (from cosign's own test data) proves the SET and `dsse` body checks
against Rekor's real key; key-signed bundles with a log entry cannot be produced here (no Rekor
runs on this machine), so that path uses a log key of the test's own, in a custom trust root.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imagegate.core import keys
from imagegate.signatures import cosign, rekor, roots
from imagegate.signatures.failures import BadTransparencyLogEntry

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def attestation(shared_fixtures: Path) -> dict[str, Any]:
    folder = shared_fixtures / "signatures" / "cosign-oci-attestation-bundle"
    bundle: dict[str, Any] = json.loads((folder / "oci-attestation.sigstore.json").read_text())
    return bundle


def _parts(bundle: dict[str, Any]) -> tuple[Any, bytes, bytes, bytes]:
    envelope = bundle["dsseEnvelope"]
    certificate = x509.load_der_x509_certificate(
        base64.b64decode(bundle["verificationMaterial"]["certificate"]["rawBytes"])
    )
    return (
        bundle["verificationMaterial"]["tlogEntries"],
        base64.b64decode(envelope["payload"]),
        base64.b64decode(envelope["signatures"][0]["sig"]),
        certificate.public_bytes(serialization.Encoding.DER),
    )


def test_a_real_public_good_dsse_entry_verifies(attestation: dict[str, Any]) -> None:
    entries, payload, signature, signer = _parts(attestation)
    root = roots.public_good_json()
    rekor.verify_bundle_entries(entries, payload, signature, signer, root)


def test_a_real_entry_does_not_vouch_for_another_signature_payload_or_time(
    attestation: dict[str, Any],
) -> None:
    entries, payload, signature, signer = _parts(attestation)
    root = roots.public_good_json()

    def refused(text: str) -> pytest.RaisesContext[BadTransparencyLogEntry]:
        return pytest.raises(BadTransparencyLogEntry, match=f"^{re.escape(text)}$")

    with refused("bad SET: the log entry is for another payload"):
        rekor.verify_bundle_entries(entries, payload + b" ", signature, signer, root)
    moved = json.loads(json.dumps(entries))
    moved[0]["integratedTime"] = str(int(moved[0]["integratedTime"]) + 1)
    with refused("bad SET: the log's signature does not verify"):
        rekor.verify_bundle_entries(moved, payload, signature, signer, root)
    with refused("no transparency log entry in the bundle"):
        rekor.verify_bundle_entries([], payload, signature, signer, root)
    no_promise = [{k: v for k, v in entries[0].items() if k != "inclusionPromise"}]
    with pytest.raises(BadTransparencyLogEntry, match="no usable inclusion promise"):
        rekor.verify_bundle_entries(no_promise, payload, signature, signer, root)


class PrivateLog:
    """A transparency log of the test's own: a key, and the trust root that names it."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.log_id = hashlib.sha256(der).digest()
        self.root = {
            "tlogs": [
                {
                    "logId": {"keyId": base64.b64encode(self.log_id).decode()},
                    "publicKey": {
                        "rawBytes": base64.b64encode(der).decode(),
                        "validFor": {"start": "2020-01-01T00:00:00Z"},
                    },
                }
            ]
        }

    def entry(self, payload: bytes, signature: bytes, signer_pem: bytes) -> dict[str, Any]:
        body = {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256", "value": "00" * 32},
                "payloadHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(payload).hexdigest(),
                },
                "signatures": [
                    {
                        "signature": base64.b64encode(signature).decode(),
                        "verifier": base64.b64encode(signer_pem).decode(),
                    }
                ],
            },
        }
        encoded = base64.b64encode(json.dumps(body).encode()).decode()
        promised = {
            "body": encoded,
            "integratedTime": 1_760_000_000,
            "logID": self.log_id.hex(),
            "logIndex": 7,
        }
        canonical = json.dumps(promised, sort_keys=True, separators=(",", ":")).encode()
        return {
            "logIndex": "7",
            "logId": {"keyId": base64.b64encode(self.log_id).decode()},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": "1760000000",
            "inclusionPromise": {
                "signedEntryTimestamp": base64.b64encode(
                    self.key.sign(canonical, ec.ECDSA(hashes.SHA256()))
                ).decode()
            },
            "canonicalizedBody": encoded,
        }


def _key_signed_bundle(
    log: PrivateLog, signer: ec.EllipticCurvePrivateKey, *, logged_by: bytes | None = None
) -> cosign.FoundSignature:
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "img", "digest": {"sha256": DIGEST.split(":")[1]}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1",
            "predicate": {},
        }
    ).encode()
    signed = cosign.pae(cosign.IN_TOTO, statement)
    signature = signer.sign(signed, ec.ECDSA(hashes.SHA256()))
    pem = logged_by or signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cosign.FoundSignature(
        "bundle", signed, signature, statement, transparency=[log.entry(statement, signature, pem)]
    )


def _public(key: ec.EllipticCurvePrivateKey) -> keys.PublicKey:
    return keys.load_public_key(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_a_key_signed_bundle_with_a_log_entry_verifies_against_the_logs_root() -> None:
    log, signer = PrivateLog(), ec.generate_private_key(ec.SECP256R1())
    found = [_key_signed_bundle(log, signer)]
    verify = cosign.verify_with_key
    verify(found, _public(signer), DIGEST, require_tlog=True, trusted_root=log.root)
    # The public-good root does not know this log.
    with pytest.raises(BadTransparencyLogEntry, match="not in the trust root"):
        verify(found, _public(signer), DIGEST, require_tlog=True)


def test_a_log_entry_for_another_key_is_refused() -> None:
    log, signer = PrivateLog(), ec.generate_private_key(ec.SECP256R1())
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    found = [
        _key_signed_bundle(
            log,
            signer,
            logged_by=stranger.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
    ]
    names_another_key = r"^bad SET: the log entry names another key$"
    with pytest.raises(BadTransparencyLogEntry, match=names_another_key):
        cosign.verify_with_key(
            found, _public(signer), DIGEST, require_tlog=True, trusted_root=log.root
        )
