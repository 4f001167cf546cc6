"""Rekor signed entry timestamps (SETs), checked offline.

sigstore-python refuses log entries without an inclusion proof, and legacy cosign signatures
carry only a SET, so this part is done here, as cosign itself does it:

1. the SET is the log's ECDSA signature over the canonical JSON of
   {body, integratedTime, logID, logIndex}, by the log key the trust root names for `logID`,
   valid at `integratedTime`;
2. the entry's body is about *this* signature: same signature bytes, same public key (or
   certificate), and the SHA-256 of the signed payload. Legacy signatures are logged as
   `hashedrekord` (or `rekord`); the DSSE envelopes of cosign v3 bundles as `dsse`; legacy
   `.att` attestations as `intoto` (0.0.1 or 0.0.2, design.md §9.8), whose entry is checked
   against the envelope exactly as the layer stores it.

Key-signed v0.3 bundles go through sigstore-python nowhere (it verifies certificates only), so
their `tlogEntries` are checked here too, by the same SET (the `inclusionPromise`), which is
what cosign accepts offline as well.

Each check returns None when the entry proves the signature and raises
`failures.BadTransparencyLogEntry` with the reason otherwise.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
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
    *,
    envelope: bytes | None = None,
) -> None:
    """Raises BadTransparencyLogEntry unless the SET proves this signature is in a trusted log.

    `signer_der` is the public key (SubjectPublicKeyInfo DER) or the certificate (DER) the log
    entry must name. `envelope` is the DSSE envelope an `.att` layer stores, byte for byte (what
    an `intoto` entry hashes); None for anything else, which no `intoto` entry can prove.
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
    log_key = _log_key(trusted_root, str(entry["logID"]), integrated_at)
    try:
        log_key.verify(signed_timestamp, canonical, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _bad("the log's signature does not verify") from None
    _check_body(body, payload, signature, signer_der, envelope)


def _bad(reason: str) -> BadTransparencyLogEntry:
    return BadTransparencyLogEntry(f"bad SET: {reason}")


def verify_bundle_entries(
    entries: object,
    payload: bytes,
    signature: bytes,
    signer_der: bytes,
    trusted_root: Mapping[str, Any],
) -> None:
    """Raises BadTransparencyLogEntry unless every one of a v0.3 bundle's `tlogEntries` proves
    this DSSE signature is logged.

    Every entry, not any: a bundle carrying an entry that does not verify is malformed, and a
    good entry beside it does not make it whole (sigstore-conformance).
    `payload` is the envelope's payload (the in-toto statement), not its PAE encoding.
    """
    if not isinstance(entries, list) or not entries:
        raise BadTransparencyLogEntry("no transparency log entry in the bundle")
    for index, entry in enumerate(entries):
        try:
            verify_set(_annotation_of(entry), payload, signature, signer_der, trusted_root)
        except BadTransparencyLogEntry as failure:
            which = f"log entry {index + 1} of {len(entries)}" if len(entries) > 1 else ""
            raise BadTransparencyLogEntry(
                f"{failure.user_message} ({which})" if which else failure.user_message
            ) from None


def _annotation_of(entry: object) -> dict[str, Any]:
    """A bundle's log entry in the shape of the legacy annotation `verify_set` reads."""
    if not isinstance(entry, dict):
        raise _bad("a bundle log entry has no usable inclusion promise")
    try:
        kind_version = entry.get("kindVersion")
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
        raise _bad("a bundle log entry has no usable inclusion promise") from None
    if isinstance(kind_version, dict):
        # The entry's declared kind must be the body's (sigstore-python reads the declared one).
        try:
            body = json.loads(base64.b64decode(entry["canonicalizedBody"], validate=True))
        except (ValueError, binascii.Error):
            raise _bad("the transparency log bundle is malformed") from None
        declared = (kind_version.get("kind"), kind_version.get("version"))
        if not isinstance(body, dict) or declared != (body.get("kind"), body.get("apiVersion")):
            raise _bad("the log entry's kindVersion is not its body's")
    return annotation


def _log_key(
    trusted_root: Mapping[str, Any], log_id_hex: str, when: datetime.datetime
) -> ec.EllipticCurvePublicKey:
    """The trust root's key for log `log_id_hex`, valid at `when`; raises why there is none.

    A key without `validFor.start` is refused (as sigstore-conformance requires): with no start
    it would vouch for entries dated before the key existed.
    """
    reason = "the log that signed it is not in the trust root (or was not valid then)"
    for log in trusted_root.get("tlogs", []):
        try:
            key_id = base64.b64decode(log["logId"]["keyId"]).hex()
            raw = base64.b64decode(log["publicKey"]["rawBytes"])
            window = log["publicKey"].get("validFor") or {}
        except (KeyError, TypeError, AttributeError, binascii.Error):
            continue
        if key_id != log_id_hex:
            continue
        if not isinstance(window, Mapping) or not window.get("start"):
            reason = "the trust root's key for its log has no validFor.start (cannot be trusted)"
            continue
        if not valid_at(window, when):
            continue
        try:
            key = serialization.load_der_public_key(raw)
        except (ValueError, UnsupportedAlgorithm):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            return key
    raise _bad(reason)


def valid_at(window: Mapping[str, str], when: datetime.datetime) -> bool:
    """Whether `when` falls in a trust root's `validFor`; an unreadable time is no window."""

    def parse(text: str | None) -> datetime.datetime | None:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    try:
        start, end = parse(window.get("start")), parse(window.get("end"))
        return (start is None or start <= when) and (end is None or when <= end)
    except (ValueError, TypeError, AttributeError):
        return False


#: The only entry version and hash cosign accepts for the kinds it logs.
API_VERSION = "0.0.1"
SHA256 = "sha256"


def _check_body(
    body: Mapping[str, Any],
    payload: bytes,
    signature: bytes,
    signer_der: bytes,
    envelope: bytes | None = None,
) -> None:
    if not isinstance(body, Mapping):
        raise _bad("the log entry's body is malformed")
    kind = body.get("kind")
    if kind == "intoto":
        _check_intoto_body(body, signature, signer_der, envelope)
        return
    # `rekord` (cosign before 2022) carries the same fields as `hashedrekord`.
    if kind not in ("hashedrekord", "rekord", "dsse"):
        raise _bad(f"log entry kind {kind!r}, not hashedrekord, rekord, dsse or intoto")
    if body.get("apiVersion") != API_VERSION:
        raise _bad(f"log entry version {body.get('apiVersion')!r}, not {API_VERSION}")
    if kind == "dsse":
        _check_dsse_body(body, payload, signature, signer_der)
        return
    spec = body.get("spec") or {}
    try:
        logged_algorithm = spec["data"]["hash"]["algorithm"]
        logged_hash = spec["data"]["hash"]["value"]
        logged_signature = base64.b64decode(spec["signature"]["content"])
        logged_pem = base64.b64decode(spec["signature"]["publicKey"]["content"])
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise _bad("the log entry's body is malformed") from None
    if logged_algorithm != SHA256:
        raise _bad(f"the log entry's payload hash is {logged_algorithm!r}, not sha256")
    if logged_hash != hashlib.sha256(payload).hexdigest():
        raise _bad("the log entry is for another payload")
    if logged_signature != signature:
        raise _bad("the log entry is for another signature")
    if not _names_signer(logged_pem, signer_der):
        raise _bad("the log entry names another key")


def _check_dsse_body(
    body: Mapping[str, Any], payload: bytes, signature: bytes, signer_der: bytes
) -> None:
    """A `dsse` entry logs the payload's hash, the envelope's hash and each (signature,
    verifier) of the envelope.

    The envelope hash is over the envelope's JSON as submitted, which no one can reproduce from
    the (re-serialised) bundle, so only its form is checked, as sigstore-python does.
    """
    spec = body.get("spec") or {}
    try:
        payload_hash, envelope_hash = spec["payloadHash"], spec["envelopeHash"]
        logged = [
            (
                base64.b64decode(entry["signature"], validate=True),
                base64.b64decode(entry["verifier"], validate=True),
            )
            for entry in spec["signatures"]
        ]
        hashes_logged = [(payload_hash["algorithm"], payload_hash["value"])]
        hashes_logged.append((envelope_hash["algorithm"], envelope_hash["value"]))
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise _bad("the log entry's body is malformed") from None
    for algorithm, value in hashes_logged:
        if algorithm != SHA256:
            raise _bad(f"the log entry's hashes are {algorithm!r}, not sha256")
        if not _is_sha256_hex(value):
            raise _bad("the log entry's body is malformed")
    if payload_hash["value"] != hashlib.sha256(payload).hexdigest():
        raise _bad("the log entry is for another payload")
    signers = [verifier for logged_signature, verifier in logged if logged_signature == signature]
    if not signers:
        raise _bad("the log entry is for another signature")
    if not any(_names_signer(verifier, signer_der) for verifier in signers):
        raise _bad("the log entry names another key")


#: The `intoto` entry versions cosign writes for `.att` layers (Rekor's pkg/types/intoto).
INTOTO_VERSIONS = ("0.0.1", "0.0.2")


def _check_intoto_body(
    body: Mapping[str, Any], signature: bytes, signer_der: bytes, envelope: bytes | None
) -> None:
    """An `intoto` entry logs the envelope's SHA-256 (`content.hash`, over the bytes cosign
    uploaded, which are the `.att` layer's), its payload's (`content.payloadHash`) and the
    signer: 0.0.1 one `publicKey`, 0.0.2 the envelope's payloadType and each (sig, publicKey).

    The envelope hash binds the entry to the layer's every byte; the rest is checked too, so a
    mismatch names what differs.
    """
    if envelope is None:
        raise _bad("an intoto log entry, which only a DSSE envelope (.att layer) can match")
    version = body.get("apiVersion")
    if version not in INTOTO_VERSIONS:
        raise _bad(f"intoto log entry version {version!r}, not 0.0.1 or 0.0.2")
    presented = _presented_envelope(envelope)
    content, logged = _intoto_content(body)
    envelope_hash = _logged_sha256(content.get("hash"))
    payload_hash = _logged_sha256(content.get("payloadHash"))
    if signature not in presented.signatures:
        raise _bad("the log entry is for another signature")
    if envelope_hash != hashlib.sha256(envelope).hexdigest():
        raise _bad("the log entry is for another envelope (content.hash)")
    if payload_hash != hashlib.sha256(presented.payload).hexdigest():
        raise _bad("the log entry is for another payload")
    if logged.payload_type is not None and logged.payload_type != presented.payload_type:
        raise _bad("the log entry is for another payload type")
    signers = [key for sig, key in logged.signers if sig is None or sig == signature]
    if not signers:
        raise _bad("the log entry is for another signature")
    if not any(_names_signer(key, signer_der) for key in signers):
        raise _bad("the log entry names another key")


@dataclasses.dataclass(frozen=True)
class _Envelope:
    """What an `intoto` entry is checked against: a DSSE envelope, or what its entry logs of
    one (`signers`: each signature, None where the entry does not log it, with its PEM key)."""

    payload_type: str | None
    payload: bytes = b""
    signatures: tuple[bytes, ...] = ()
    signers: tuple[tuple[bytes | None, bytes], ...] = ()


def _presented_envelope(envelope: bytes) -> _Envelope:
    try:
        document = json.loads(envelope)
        return _Envelope(
            str(document["payloadType"]),
            base64.b64decode(document["payload"], validate=True),
            tuple(base64.b64decode(s["sig"], validate=True) for s in document["signatures"]),
        )
    except (KeyError, TypeError, ValueError, RecursionError, binascii.Error):
        raise _bad("the attestation's envelope is malformed") from None


def _intoto_content(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], _Envelope]:
    """The entry's `content` and what it logs of the envelope.

    0.0.2 logs each signature as the base64 of the envelope's (itself base64) `sig` text, and
    each key as the base64 of its PEM; 0.0.1 logs one PEM key (base64) and no signature.
    """
    try:
        spec = body["spec"]
        content = spec["content"]
        if body["apiVersion"] == "0.0.1":
            key = base64.b64decode(spec["publicKey"], validate=True)
            logged = _Envelope(None, signers=((None, key),))
        else:
            listed = content["envelope"]["signatures"]
            if not isinstance(listed, list):
                raise TypeError("signatures")
            logged = _Envelope(
                str(content["envelope"]["payloadType"]),
                signers=tuple(
                    (
                        base64.b64decode(base64.b64decode(s["sig"], validate=True), validate=True),
                        base64.b64decode(s["publicKey"], validate=True),
                    )
                    for s in listed
                ),
            )
        if not isinstance(content, Mapping):
            raise TypeError("content")
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise _bad("the log entry's body is malformed") from None
    return content, logged


def _logged_sha256(logged: object) -> str:
    """The hex value of a logged `{algorithm, value}` hash; only SHA-256, as cosign."""
    if not isinstance(logged, Mapping):
        raise _bad("the log entry's body is malformed")
    if logged.get("algorithm") != SHA256:
        raise _bad(f"the log entry's hashes are {logged.get('algorithm')!r}, not sha256")
    value = logged.get("value")
    if not _is_sha256_hex(value):
        raise _bad("the log entry's body is malformed")
    return str(value)


def _is_sha256_hex(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _names_signer(logged_pem: bytes, signer_der: bytes) -> bool:
    """Whether the key or certificate a log entry carries is the signer's.

    `signer_der` is a certificate (keyless) or a public key (key signatures). A key signature
    logged with a certificate (`cosign sign --key k --certificate c`) names its signer when the
    certificate's key is that key, which is what cosign accepts.
    """
    try:
        if b"BEGIN CERTIFICATE" in logged_pem:
            certificate = x509.load_pem_x509_certificate(logged_pem)
            key_der = certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return signer_der in (certificate.public_bytes(serialization.Encoding.DER), key_der)
        key = serialization.load_pem_public_key(logged_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return (
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == signer_der
    )
