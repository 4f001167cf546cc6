"""Rekor signed entry timestamps (SETs), checked offline.

sigstore-python refuses log entries without an inclusion proof, and legacy cosign signatures
carry only a SET, so this part is done here, as cosign itself does it:

1. the SET is the log's ECDSA signature over the canonical JSON of
   {body, integratedTime, logID, logIndex}, by the log key the trust root names for `logID`,
   valid at `integratedTime`;
2. the entry's body is about *this* signature: same signature bytes, same public key (or
   certificate), and the SHA-256 of the signed payload. Legacy signatures are logged as
   `hashedrekord` (or `rekord`); the DSSE envelopes of cosign v3 bundles as `dsse`.

Key-signed v0.3 bundles go through sigstore-python nowhere (it verifies certificates only), so
their `tlogEntries` are checked here too, by the same SET (the `inclusionPromise`), which is
what cosign accepts offline as well.

Each check returns None when the entry proves the signature and raises
`failures.BadTransparencyLogEntry` with the reason otherwise.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imagegate.signatures.failures import BadTransparencyLogEntry


def verify_set(
    annotation: object,
    payload: bytes,
    signature: bytes,
    signer_der: bytes,
    trusted_root: Mapping[str, Any],
) -> None:
    """Raises BadTransparencyLogEntry unless the SET proves this signature is in a trusted log.

    `signer_der` is the public key (SubjectPublicKeyInfo DER) or the certificate (DER) the log
    entry must name.
    """
    try:
        bundle: Any = json.loads(annotation) if isinstance(annotation, str) else annotation
        entry = bundle["Payload"]
        signed_timestamp = base64.b64decode(bundle["SignedEntryTimestamp"], validate=True)
        canonical = json.dumps(
            {
                "body": entry["body"],
                "integratedTime": int(entry["integratedTime"]),
                "logID": entry["logID"],
                "logIndex": int(entry["logIndex"]),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        body = json.loads(base64.b64decode(entry["body"], validate=True))
        # A time no calendar holds (integratedTime 1e20) is as malformed as a missing one.
        integrated_at = datetime.datetime.fromtimestamp(int(entry["integratedTime"]), datetime.UTC)
    except (ValueError, KeyError, TypeError, OverflowError, OSError, binascii.Error):
        raise _bad("the transparency log bundle is malformed") from None
    log_key = _log_key(trusted_root, entry["logID"], integrated_at)
    if log_key is None:
        raise _bad("the log that signed it is not in the trust root (or was not valid then)")
    try:
        log_key.verify(signed_timestamp, canonical, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _bad("the log's signature does not verify") from None
    _check_body(body, payload, signature, signer_der)


def _bad(reason: str) -> BadTransparencyLogEntry:
    return BadTransparencyLogEntry(f"bad SET: {reason}")


def verify_bundle_entries(
    entries: object,
    payload: bytes,
    signature: bytes,
    signer_der: bytes,
    trusted_root: Mapping[str, Any],
) -> None:
    """Raises BadTransparencyLogEntry unless one of a v0.3 bundle's `tlogEntries` proves this
    DSSE signature is logged.

    `payload` is the envelope's payload (the in-toto statement), not its PAE encoding.
    """
    if not isinstance(entries, list) or not entries:
        raise BadTransparencyLogEntry("no transparency log entry in the bundle")
    reasons = []
    for entry in entries:
        try:
            annotation = {
                "SignedEntryTimestamp": entry["inclusionPromise"]["signedEntryTimestamp"],
                "Payload": {
                    "body": entry["canonicalizedBody"],
                    "integratedTime": int(entry["integratedTime"]),
                    "logIndex": int(entry["logIndex"]),
                    "logID": base64.b64decode(entry["logId"]["keyId"], validate=True).hex(),
                },
            }
        except (KeyError, TypeError, ValueError, binascii.Error):
            reasons.append("bad SET: a bundle log entry has no usable inclusion promise")
            continue
        try:
            verify_set(annotation, payload, signature, signer_der, trusted_root)
        except BadTransparencyLogEntry as failure:
            reasons.append(failure.user_message)
            continue
        return
    raise BadTransparencyLogEntry("; ".join(sorted(set(reasons))))


def _log_key(
    trusted_root: Mapping[str, Any], log_id_hex: str, when: datetime.datetime
) -> ec.EllipticCurvePublicKey | None:
    for log in trusted_root.get("tlogs", []):
        try:
            key_id = base64.b64decode(log["logId"]["keyId"]).hex()
            raw = base64.b64decode(log["publicKey"]["rawBytes"])
        except (KeyError, TypeError, binascii.Error):
            continue
        if key_id != log_id_hex or not valid_at(log["publicKey"].get("validFor", {}), when):
            continue
        key = serialization.load_der_public_key(raw)
        if isinstance(key, ec.EllipticCurvePublicKey):
            return key
    return None


def valid_at(window: Mapping[str, str], when: datetime.datetime) -> bool:
    def parse(text: str | None) -> datetime.datetime | None:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    start, end = parse(window.get("start")), parse(window.get("end"))
    return (start is None or start <= when) and (end is None or when <= end)


def _check_body(
    body: Mapping[str, Any], payload: bytes, signature: bytes, signer_der: bytes
) -> None:
    if not isinstance(body, Mapping):
        raise _bad("the log entry's body is malformed")
    if body.get("kind") == "dsse":
        _check_dsse_body(body, payload, signature, signer_der)
        return
    # `rekord` (cosign before 2022) carries the same fields as `hashedrekord`.
    if body.get("kind") not in ("hashedrekord", "rekord"):
        raise _bad(f"log entry kind {body.get('kind')!r}, not hashedrekord, rekord or dsse")
    spec = body.get("spec") or {}
    try:
        logged_hash = spec["data"]["hash"]["value"]
        logged_signature = base64.b64decode(spec["signature"]["content"])
        logged_pem = base64.b64decode(spec["signature"]["publicKey"]["content"])
        logged_der = _signer_der(logged_pem)
    except (KeyError, TypeError, ValueError, UnsupportedAlgorithm, binascii.Error):
        raise _bad("the log entry's body is malformed") from None
    if logged_hash != hashlib.sha256(payload).hexdigest():
        raise _bad("the log entry is for another payload")
    if logged_signature != signature:
        raise _bad("the log entry is for another signature")
    if logged_der != signer_der:
        raise _bad("the log entry names another key")


def _check_dsse_body(
    body: Mapping[str, Any], payload: bytes, signature: bytes, signer_der: bytes
) -> None:
    """A `dsse` entry logs the payload's hash and each (signature, verifier) of the envelope."""
    spec = body.get("spec") or {}
    try:
        logged_hash = spec["payloadHash"]["value"]
        logged = [
            (
                base64.b64decode(entry["signature"], validate=True),
                _signer_der(base64.b64decode(entry["verifier"], validate=True)),
            )
            for entry in spec["signatures"]
        ]
    except (KeyError, TypeError, ValueError, UnsupportedAlgorithm, binascii.Error):
        raise _bad("the log entry's body is malformed") from None
    if logged_hash != hashlib.sha256(payload).hexdigest():
        raise _bad("the log entry is for another payload")
    if not any(logged_signature == signature for logged_signature, _ in logged):
        raise _bad("the log entry is for another signature")
    if (signature, signer_der) not in logged:
        raise _bad("the log entry names another key")


def _signer_der(pem: bytes) -> bytes:
    """DER of the key or certificate a hashedrekord entry carries (keyless entries log the cert)."""
    if b"BEGIN CERTIFICATE" in pem:
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
