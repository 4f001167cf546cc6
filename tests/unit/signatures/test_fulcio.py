"""Legacy keyless `.sig` signatures other projects made, verified offline end to end."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from imagegate.policy import model
from imagegate.signatures import cosign, fulcio, roots
from imagegate.signatures.failures import (
    BadTransparencyLogEntry,
    SignatureFailure,
    UntrustedCertificate,
    WrongIdentity,
    WrongImage,
)

OAUTH = "https://github.com/login/oauth"


def found_in(folder: Path, *, chain: bool = True) -> cosign.FoundSignature:
    payload = (folder / "payload.json").read_bytes()
    return cosign.FoundSignature(
        "legacy",
        payload,
        base64.b64decode((folder / "signature.b64").read_text().strip()),
        payload,
        certificate=(folder / "cert.pem").read_text(),
        transparency=(folder / "bundle.json").read_text(),
        chain=(folder / "chain.pem").read_text()
        if chain and (folder / "chain.pem").exists()
        else None,
    )


def digest_of(found: cosign.FoundSignature) -> str:
    return str(json.loads(found.claims)["critical"]["image"]["docker-manifest-digest"])


def who(subject: str, issuer: str = OAUTH) -> model.KeylessAuthority:
    return model.KeylessAuthority.model_validate({"issuer": issuer, "subject": subject})


def verify(found: cosign.FoundSignature, digest: str, authority: model.KeylessAuthority) -> None:
    fulcio.verify_legacy(
        found, digest, authority, roots.public_good_json(), roots.public_good_root()
    )


CASES = [
    ("connaisseur-keyless-rekor-test", "philipp.belitz@securesystems.de"),
    ("containers-image-dir-img-cosign-fulcio-rekor-valid", "mitr@redhat.com"),
]


@pytest.mark.parametrize(("folder", "signer"), CASES)
def test_real_legacy_keyless_signatures_verify(
    shared_fixtures: Path, folder: str, signer: str
) -> None:
    found = found_in(shared_fixtures / "signatures" / folder)
    verify(found, digest_of(found), who(signer))


@pytest.mark.parametrize(("folder", "signer"), CASES)
def test_they_fail_for_another_identity_or_digest(
    shared_fixtures: Path, folder: str, signer: str
) -> None:
    found = found_in(shared_fixtures / "signatures" / folder)
    with pytest.raises(WrongIdentity, match=r"^wrong identity"):
        verify(found, digest_of(found), who("someone@else.example"))
    with pytest.raises(WrongIdentity, match=r"^wrong identity"):
        verify(found, digest_of(found), who(signer, "https://accounts.google.com"))
    other = "sha256:" + "0" * 64
    with pytest.raises(WrongImage, match=r"\(digest mismatch\)$"):
        verify(found, other, who(signer))


def test_the_chain_can_come_from_the_trust_root_alone(shared_fixtures: Path) -> None:
    folder = shared_fixtures / "signatures" / "connaisseur-keyless-rekor-test"
    found = found_in(folder, chain=False)
    verify(found, digest_of(found), who("philipp.belitz@securesystems.de"))


def test_a_2021_signature_without_an_sct_is_refused(shared_fixtures: Path) -> None:
    """Signature, SET, body and chain are all valid; the missing SCT alone must refuse it."""
    found = found_in(
        shared_fixtures / "signatures" / "sigstore-rs-2021-rekord-disallow-service-nodeport"
    )
    with pytest.raises(UntrustedCertificate, match=r"^untrusted certificate: no valid SCT"):
        verify(found, digest_of(found), who("flavio@castelli.me"))


def test_without_a_log_entry_a_keyless_signature_is_refused(shared_fixtures: Path) -> None:
    found = found_in(shared_fixtures / "signatures" / "connaisseur-keyless-rekor-test")
    bare = cosign.FoundSignature(
        found.format,
        found.signed,
        found.signature,
        found.claims,
        certificate=found.certificate,
        chain=found.chain,
    )
    text = "no transparency log entry (keyless signatures need one)"
    with pytest.raises(BadTransparencyLogEntry, match=f"^{re.escape(text)}$"):
        verify(bare, digest_of(found), who("philipp.belitz@securesystems.de"))


def test_a_certificate_that_is_not_the_signers_is_refused(shared_fixtures: Path) -> None:
    a = found_in(shared_fixtures / "signatures" / "connaisseur-keyless-rekor-test")
    b = found_in(
        shared_fixtures / "signatures" / "containers-image-dir-img-cosign-fulcio-rekor-valid"
    )
    swapped = cosign.FoundSignature(
        a.format,
        a.signed,
        a.signature,
        a.claims,
        certificate=b.certificate,
        transparency=a.transparency,
        chain=a.chain,
    )
    with pytest.raises(
        SignatureFailure, match=r"^the signature does not verify with its certificate$"
    ):
        verify(swapped, digest_of(a), who("mitr@redhat.com"))


def test_a_certificate_outside_its_validity_at_signing_time_is_refused(
    shared_fixtures: Path,
) -> None:
    """Fulcio certificates live ten minutes: the log's time must fall inside them."""
    import datetime

    from cryptography import x509

    found = found_in(shared_fixtures / "signatures" / "connaisseur-keyless-rekor-test")
    assert found.certificate is not None
    assert found.chain is not None
    leaf = x509.load_pem_x509_certificate(found.certificate.encode())
    chain = x509.load_pem_x509_certificates(found.chain.encode())
    signed_at = leaf.not_valid_before_utc + datetime.timedelta(minutes=1)
    anchors = fulcio._fulcio_anchors(roots.public_good_json(), signed_at)
    assert isinstance(fulcio._chain_to_root(leaf, chain, anchors, signed_at), list)
    late = leaf.not_valid_after_utc + datetime.timedelta(seconds=1)
    with pytest.raises(
        UntrustedCertificate,
        match=r"^untrusted certificate: not valid when the log saw the signature$",
    ):
        fulcio._chain_to_root(leaf, chain, anchors, late)
