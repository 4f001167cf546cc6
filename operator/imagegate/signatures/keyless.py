"""Keyless (Fulcio certificate) signatures in Sigstore bundles, verified offline.

sigstore-python checks the bundle: the certificate chains to the trust root's Fulcio CA at the
time the transparency log (or a timestamp authority) saw the signature, the SCT, the inclusion
proof and checkpoint, and the DSSE signature. imagegate adds what is specific to images: the
signer's identity (subject and issuer, each exact or an anchored regular expression) and that the
signed statement is a cosign signature of *this* digest.

The trust root comes from roots.py (the public-good root shipped with sigstore-python). A check
that fails raises the `failures.SignatureFailure` that says why.
"""

from __future__ import annotations

import json

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from sigstore.errors import Error as SigstoreError
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import VerificationPolicy

from imagegate.core import patterns
from imagegate.policy import model
from imagegate.signatures import cosign
from imagegate.signatures.failures import MalformedSignature, SignatureFailure, WrongIdentity

#: Fulcio's issuer extensions: v2 is a DER UTF8String, v1 (deprecated) the raw bytes.
OIDC_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OIDC_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
#: The otherName type Fulcio puts a username identity in (a DER UTF8String); no other counts.
FULCIO_USERNAME = ObjectIdentifier("1.3.6.1.4.1.57264.1.7")


class IdentityMismatch(SigstoreError):
    """The certificate was not issued to the identity the policy names."""


def certificate_identities(certificate: x509.Certificate) -> list[str]:
    """The subject alternative names Fulcio puts the signer's identity in."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found: list[str] = []
    found += names.get_values_for_type(x509.UniformResourceIdentifier)
    found += names.get_values_for_type(x509.RFC822Name)
    for other in names.get_values_for_type(x509.OtherName):
        text = _der_utf8(other.value) if other.type_id == FULCIO_USERNAME else None
        if text is not None:
            found.append(text)
    return found


def certificate_issuer(certificate: x509.Certificate) -> str | None:
    for oid, decode in ((OIDC_ISSUER_V2, _der_utf8), (OIDC_ISSUER_V1, _raw_utf8)):
        try:
            extension = certificate.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        if isinstance(extension, x509.UnrecognizedExtension):
            return decode(extension.value)
    return None


def _der_utf8(data: bytes) -> str | None:
    """The text of a DER UTF8String (tag 0x0c, definite length, the text, nothing after); None
    when `data` is anything else, trailing bytes included."""
    if len(data) < 2 or data[0] != 0x0C:
        return None
    length, offset = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or len(data) < 2 + count:
            return None
        length, offset = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    if offset + length != len(data):
        return None
    try:
        return data[offset:].decode()
    except UnicodeDecodeError:
        return None


def _raw_utf8(data: bytes) -> str | None:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


class IdentityPolicy(VerificationPolicy):
    """Issuer and subject, each exact or an anchored (full-match) regular expression."""

    def __init__(self, authority: model.KeylessAuthority) -> None:
        self._authority = authority

    def verify(self, cert: x509.Certificate) -> None:
        authority = self._authority
        issuer = certificate_issuer(cert)
        if not _matches(issuer, authority.issuer, authority.issuer_regexp):
            raise IdentityMismatch(f"certificate issuer is {issuer!r}")
        identities = certificate_identities(cert)
        if not any(_matches(i, authority.subject, authority.subject_regexp) for i in identities):
            raise IdentityMismatch(f"certificate subject is {', '.join(identities) or 'empty'}")


def _matches(value: str | None, exact: str | None, pattern: str | None) -> bool:
    if value is None:
        return False
    if exact is not None:
        return value == exact
    return pattern is not None and patterns.fullmatches(pattern, value)


def verify_bundle(
    bundle_json: bytes,
    digest: str,
    authority: model.KeylessAuthority,
    root: TrustedRoot,
    *,
    predicate: str = cosign.COSIGN_PREDICATE,
) -> None:
    """Returns when the bundle is a valid cosign signature (or, with `predicate`, attestation)
    of `digest` by `authority`; raises why not."""
    try:
        material = json.loads(bundle_json).get("verificationMaterial") or {}
    except (ValueError, AttributeError):
        raise MalformedSignature("unreadable bundle: not JSON") from None
    if not isinstance(material, dict):
        raise MalformedSignature("unreadable bundle: no verification material")
    if "certificate" not in material and "x509CertificateChain" not in material:
        raise SignatureFailure("the bundle was signed with a key, not a Fulcio certificate")
    try:
        bundle = Bundle.from_json(bundle_json)
    except (SigstoreError, ValueError) as error:
        # sigstore-python's parse errors are long pydantic dumps: the first line says enough.
        raise MalformedSignature(f"unreadable bundle: {str(error).splitlines()[0][:200]}") from None
    try:
        payload_type, payload = Verifier(trusted_root=root).verify_dsse(
            bundle, IdentityPolicy(authority)
        )
    except IdentityMismatch as error:
        raise WrongIdentity(f"wrong identity: {error}") from None
    except SigstoreError as error:
        raise SignatureFailure(f"bundle does not verify: {error}") from None
    if payload_type != cosign.IN_TOTO:
        raise SignatureFailure(f"the bundle signs {payload_type!r}, not an in-toto statement")
    signed = cosign.FoundSignature("bundle", b"", b"", payload, expected_predicate=predicate)
    cosign.verify_claims(signed, digest)
