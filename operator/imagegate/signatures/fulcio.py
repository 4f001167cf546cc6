"""Legacy keyless cosign signatures (`.sig` with a Fulcio certificate), verified offline.

What cosign checks for these, done here because sigstore-python will not take a log entry with
only a SET:

1. the signature over the payload verifies with the certificate's key;
2. the Rekor SET is valid and its entry is this payload, signature and certificate (rekor.py);
3. the certificate chains, through the annotation's chain, to a Fulcio CA of the trust root, and
   every certificate on the path was valid when the log saw the signature (`integratedTime`):
   a short-lived certificate is only ever valid *then*;
4. the certificate carries an SCT from a CT log of the trust root (sigstore-python's check);
5. the signer's identity matches the policy, and the payload names this digest.

A check that fails raises the `failures.SignatureFailure` that says why.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from sigstore.models import TrustedRoot

from imagegate.policy import model
from imagegate.signatures import cosign, keyless, rekor, sigstore_internals
from imagegate.signatures.failures import (
    BadTransparencyLogEntry,
    MalformedSignature,
    SignatureFailure,
    UntrustedCertificate,
    WrongIdentity,
)

MAX_CHAIN = 4


def verify_legacy(
    found: cosign.FoundSignature,
    digest: str,
    authority: model.KeylessAuthority,
    root_json: Mapping[str, Any],
    root: TrustedRoot | None,
    *,
    require_tlog: bool = True,
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
) -> None:
    """Returns when `found` is a valid keyless signature of `digest` by `authority`; raises why
    not.

    Without a log entry (allowed only with `require_tlog=False`, for private CAs signing without
    a log) the certificate must be valid now, there being no other time to hold it to. SCTs are
    required exactly when the trust root lists CT logs.
    """
    if found.certificate is None:
        raise SignatureFailure("the signature carries no certificate")
    try:
        leaf = x509.load_pem_x509_certificate(found.certificate.encode())
        chain = x509.load_pem_x509_certificates(found.chain.encode()) if found.chain else []
    except ValueError:
        raise MalformedSignature("the signature's certificate is unreadable") from None
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UntrustedCertificate("the certificate's key is not ECDSA")
    try:
        key.verify(found.signature, found.signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        # Not WrongKey: keyless denials list every reason, as they always have.
        raise SignatureFailure("the signature does not verify with its certificate") from None
    if found.transparency is None:
        if require_tlog:
            raise BadTransparencyLogEntry("no transparency log entry (keyless signatures need one)")
        signed_at = now()
    else:
        rekor.verify_set(
            found.transparency,
            found.signed,
            found.signature,
            leaf.public_bytes(Encoding.DER),
            root_json,
        )
        signed_at = _integrated_time(found.transparency)
    path = _chain_to_root(leaf, chain, _fulcio_anchors(root_json, signed_at), signed_at)
    if root_json.get("ctlogs"):
        if root is None:
            raise UntrustedCertificate(
                "untrusted certificate: the trust root's CT logs could not be read"
            )
        try:
            sigstore_internals.verify_sct(leaf, path[1:], root)
        except sigstore_internals.SCTError as error:
            raise UntrustedCertificate(f"untrusted certificate: no valid SCT ({error})") from None
    try:
        keyless.IdentityPolicy(authority).verify(leaf)
    except keyless.IdentityMismatch as error:
        raise WrongIdentity(f"wrong identity: {error}") from None
    cosign.verify_claims(found, digest)


def _integrated_time(transparency: object) -> datetime.datetime:
    bundle: Any = json.loads(transparency) if isinstance(transparency, str) else transparency
    return datetime.datetime.fromtimestamp(int(bundle["Payload"]["integratedTime"]), datetime.UTC)


def _fulcio_anchors(
    root_json: Mapping[str, Any], when: datetime.datetime
) -> list[x509.Certificate]:
    """Every certificate of the trust root's Fulcio CAs that were valid at `when`."""
    anchors = []
    for authority in root_json.get("certificateAuthorities", []):
        if not rekor.valid_at(authority.get("validFor", {}), when):
            continue
        for entry in authority.get("certChain", {}).get("certificates", []):
            try:
                anchors.append(x509.load_der_x509_certificate(base64.b64decode(entry["rawBytes"])))
            except (KeyError, ValueError, binascii.Error):
                continue
    return anchors


def _valid_then(certificate: x509.Certificate, when: datetime.datetime) -> bool:
    return certificate.not_valid_before_utc <= when <= certificate.not_valid_after_utc


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _chain_to_root(
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    when: datetime.datetime,
) -> list[x509.Certificate]:
    """The path leaf → … → trust anchor, every link checked; raises UntrustedCertificate when
    there is none."""
    if not _valid_then(leaf, when):
        raise UntrustedCertificate(
            "untrusted certificate: not valid when the log saw the signature"
        )
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise UntrustedCertificate("untrusted certificate: no extended key usage") from None
    if ExtendedKeyUsageOID.CODE_SIGNING not in usages:
        raise UntrustedCertificate("untrusted certificate: not issued for code signing")
    anchor_bytes = {a.public_bytes(Encoding.DER) for a in anchors}
    candidates = [*chain, *anchors]
    path = [leaf]
    current = leaf
    for _ in range(MAX_CHAIN):
        issuer = next(
            (c for c in candidates if c.subject == current.issuer and _issued(current, c)), None
        )
        if issuer is None or not _is_ca(issuer) or not _valid_then(issuer, when):
            raise UntrustedCertificate(
                "untrusted CA: the certificate does not chain to the trust root's Fulcio CA"
            )
        path.append(issuer)
        if issuer.public_bytes(Encoding.DER) in anchor_bytes:
            return path
        current = issuer
    raise UntrustedCertificate("untrusted CA: certificate chain too long")


def _issued(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
