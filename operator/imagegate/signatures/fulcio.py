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
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store
from cryptography.x509.verification import VerificationError as X509VerificationError
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
            envelope=found.envelope,
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
    """Every certificate of the trust root's Fulcio CAs that were valid at `when`.

    A CA without `validFor.start` is left out, as a log key is (rekor.py): with no start it
    would vouch for certificates dated before it was trusted.
    """
    anchors = []
    for authority in root_json.get("certificateAuthorities", []):
        window = authority.get("validFor") if isinstance(authority, Mapping) else None
        if not isinstance(window, Mapping) or not window.get("start"):
            continue
        if not rekor.valid_at(window, when):
            continue
        for entry in authority.get("certChain", {}).get("certificates", []):
            try:
                anchors.append(x509.load_der_x509_certificate(base64.b64decode(entry["rawBytes"])))
            except (KeyError, ValueError, binascii.Error):
                continue
    return anchors


def _valid_then(certificate: x509.Certificate, when: datetime.datetime) -> bool:
    return certificate.not_valid_before_utc <= when <= certificate.not_valid_after_utc


def _chain_to_root(
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    when: datetime.datetime,
) -> list[x509.Certificate]:
    """The path leaf → … → trust anchor, as cryptography's RFC 5280 path validation builds it at
    `when` (what sigstore-python does for bundles); raises UntrustedCertificate when there is
    none. The presented chain only offers intermediates: trust comes from `anchors` alone.
    """
    if not _valid_then(leaf, when):
        raise UntrustedCertificate(
            "untrusted certificate: not valid when the log saw the signature"
        )
    _check_signing_profile(leaf)
    if not anchors:
        raise UntrustedCertificate(
            "untrusted CA: the certificate does not chain to a trusted root "
            "(no Fulcio CA of the trust root was valid then)"
        )
    # Client verifiers require the client-auth EKU; Fulcio leaves carry code signing, checked
    # above. Only the EKU rule is relaxed: the other WebPKI rules (basic constraints, path
    # length, key usage, critical extensions) stay.
    ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store(list(anchors)))
        .time(when)
        .max_chain_depth(MAX_CHAIN)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        return list(verifier.verify(leaf, list(chain)).chain)
    except (X509VerificationError, x509.UnsupportedGeneralNameType) as error:
        detail = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise UntrustedCertificate(
            f"untrusted CA: the certificate does not chain to a trusted root ({detail})"
        ) from None


def _check_signing_profile(leaf: x509.Certificate) -> None:
    """Fulcio's profile for a signing certificate: a non-CA leaf for digital signatures and
    code signing (what sigstore-python requires beside the path)."""
    try:
        basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        raise UntrustedCertificate("untrusted certificate: a CA certificate, not a signer's")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise UntrustedCertificate("untrusted certificate: no key usage") from None
    if not usage.digital_signature:
        raise UntrustedCertificate("untrusted certificate: not issued for digital signatures")
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise UntrustedCertificate("untrusted certificate: no extended key usage") from None
    if ExtendedKeyUsageOID.CODE_SIGNING not in usages:
        raise UntrustedCertificate("untrusted certificate: not issued for code signing")
