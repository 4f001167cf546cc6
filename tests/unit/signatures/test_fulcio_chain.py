"""The X.509 path check of legacy keyless signatures, on chains the test makes (sigstore-go's,
sigstore-rs' and cosign's certificate test cases): each chain is valid but for one thing.

The trust root has no CT logs, so the chain is the only thing a certificate is judged on here
(no SCT check hides a bad chain), and no log: `require_tlog=False` holds it to "now".
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

import sigstore_pki as pki
from imagegate.policy import model
from imagegate.signatures import cosign, fulcio
from imagegate.signatures.failures import UntrustedCertificate, WrongIdentity

NO_CHAIN = "untrusted CA: the certificate does not chain to a trusted root"


def who(subject: str = pki.SIGNER) -> model.KeylessAuthority:
    return model.KeylessAuthority.model_validate({"issuer": pki.ISSUER, "subject": subject})


def verify(found: cosign.FoundSignature, root: dict[str, Any], subject: str = pki.SIGNER) -> None:
    fulcio.verify_legacy(found, pki.DIGEST, who(subject), root, None, require_tlog=False)


@pytest.fixture(scope="module")
def fulcio_ca() -> tuple[pki.Issued, pki.Issued]:
    root = pki.ca("test fulcio root")
    return root, pki.ca("test fulcio intermediate", root, path_length=0)


def test_a_chain_made_to_fulcios_profile_verifies(fulcio_ca: tuple[pki.Issued, ...]) -> None:
    """The control case: what every refusal below differs from by one thing."""
    root, intermediate = fulcio_ca
    signer = pki.leaf(intermediate)
    verify(pki.legacy(signer, [intermediate, root]), pki.trust_root([[intermediate, root]]))


def _refused(found: cosign.FoundSignature, root: dict[str, Any], reason: str) -> None:
    with pytest.raises(UntrustedCertificate, match=f"^{re.escape(reason)}"):
        verify(found, root)


def test_a_ca_certificate_as_the_signer_is_refused(fulcio_ca: tuple[pki.Issued, ...]) -> None:
    root, intermediate = fulcio_ca
    signer = pki.leaf(intermediate, pki.Leaf(is_ca=True))
    _refused(
        pki.legacy(signer, [intermediate, root]),
        pki.trust_root([[intermediate, root]]),
        "untrusted certificate: a CA certificate, not a signer's",
    )


def test_a_signer_without_digital_signature_key_usage_is_refused(
    fulcio_ca: tuple[pki.Issued, ...],
) -> None:
    root, intermediate = fulcio_ca
    signer = pki.leaf(intermediate, pki.Leaf(digital_signature=False))
    _refused(
        pki.legacy(signer, [intermediate, root]),
        pki.trust_root([[intermediate, root]]),
        "untrusted certificate: not issued for digital signatures",
    )


def test_an_unknown_critical_extension_is_refused(fulcio_ca: tuple[pki.Issued, ...]) -> None:
    root, intermediate = fulcio_ca
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    signer = pki.leaf(intermediate, pki.Leaf(extra=[(unknown, True)]))
    _refused(
        pki.legacy(signer, [intermediate, root]),
        pki.trust_root([[intermediate, root]]),
        NO_CHAIN,
    )


def test_a_sub_ca_under_a_pathlen_0_intermediate_is_refused(
    fulcio_ca: tuple[pki.Issued, ...],
) -> None:
    root, intermediate = fulcio_ca
    sub_ca = pki.ca("sub ca", intermediate)
    signer = pki.leaf(sub_ca)
    _refused(
        pki.legacy(signer, [sub_ca, intermediate, root]),
        pki.trust_root([[intermediate, root]]),
        NO_CHAIN,
    )


def test_an_intermediate_without_key_cert_sign_is_refused() -> None:
    root = pki.ca("test fulcio root")
    intermediate = pki.ca("no keyCertSign", root, key_cert_sign=False)
    signer = pki.leaf(intermediate)
    _refused(pki.legacy(signer, [intermediate, root]), pki.trust_root([[root]]), NO_CHAIN)


def test_a_rogue_self_signed_root_in_the_presented_chain_is_refused(
    fulcio_ca: tuple[pki.Issued, ...],
) -> None:
    """The chain annotation is the signer's to write: a root of their own is no anchor."""
    root, intermediate = fulcio_ca
    rogue = pki.ca("test fulcio root")  # same name as the trusted root, another key
    rogue_intermediate = pki.ca("test fulcio intermediate", rogue, path_length=0)
    signer = pki.leaf(rogue_intermediate)
    _refused(
        pki.legacy(signer, [rogue_intermediate, rogue]),
        pki.trust_root([[intermediate, root]]),
        NO_CHAIN,
    )


def test_the_identity_comes_only_from_fulcios_username_other_name(
    fulcio_ca: tuple[pki.Issued, ...],
) -> None:
    """An otherName of any other type is not an identity Fulcio vouched for."""
    root, intermediate = fulcio_ca
    chain, trust = [intermediate, root], pki.trust_root([[intermediate, root]])
    foreign = x509.OtherName(ObjectIdentifier("1.3.6.1.4.1.99999.7"), pki.der_utf8("admin"))
    signer = pki.leaf(intermediate, pki.Leaf(email=None, other_names=[foreign]))
    with pytest.raises(WrongIdentity, match=r"^wrong identity: certificate subject is empty$"):
        verify(pki.legacy(signer, chain), trust, "admin")
    username = x509.OtherName(pki.FULCIO_USERNAME, pki.der_utf8("admin"))
    signer = pki.leaf(intermediate, pki.Leaf(email=None, other_names=[username]))
    verify(pki.legacy(signer, chain), trust, "admin")


def test_an_issuer_string_with_trailing_bytes_is_no_issuer(
    fulcio_ca: tuple[pki.Issued, ...],
) -> None:
    """The issuer extension is a DER UTF8String: bytes after it make it no DER at all."""
    root, intermediate = fulcio_ca
    chain, trust = [intermediate, root], pki.trust_root([[intermediate, root]])
    signer = pki.leaf(intermediate, pki.Leaf(issuer_value=pki.der_utf8(pki.ISSUER) + b"\x00"))
    with pytest.raises(WrongIdentity, match=r"^wrong identity: certificate issuer is None$"):
        verify(pki.legacy(signer, chain), trust)
