"""Key-based cosign signatures that other projects made (../shared/fixtures/signatures)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from imagegate.core import keys
from imagegate.signatures import cosign, rekor, roots
from imagegate.signatures.cosign import FoundSignature
from imagegate.signatures.failures import (
    BadTransparencyLogEntry,
    NoSignatures,
    SignatureFailure,
    WrongImage,
    WrongKey,
)


def exactly(text: str) -> str:
    return f"^{re.escape(text)}$"


def _legacy(
    payload: bytes, signature_b64: str, transparency: object | None = None
) -> FoundSignature:
    return FoundSignature(
        "legacy", payload, base64.b64decode(signature_b64), payload, transparency=transparency
    )


@pytest.fixture(scope="module")
def connaisseur(shared_fixtures: Path) -> Path:
    return shared_fixtures / "signatures" / "connaisseur-keyed-testimage"


def _connaisseur_signatures(folder: Path, digest: str) -> list[FoundSignature]:
    manifest = json.loads((folder / f"{digest.replace(':', '-')}.sig.json").read_text())
    found = []
    for layer in manifest["layers"]:
        payload = (folder / f"payload-{layer['digest'].split(':')[1]}.json").read_bytes()
        found.append(_legacy(payload, layer["annotations"][cosign.SIGNATURE_ANNOTATION]))
    return found


MULTI = "sha256:bfec161fecb0a887df7cb85e4da327c65986ccda7060cf3cd92171c6c90d7533"
SINGLE = "sha256:071bf7a986f1ca9cb2a1f0bc8392822a7777f90d58f2d2c6f271913e08de7c81"


@pytest.mark.parametrize("signer", ["alice", "bob", "charlie"])
def test_each_of_several_signers_verifies_with_their_own_key(
    connaisseur: Path, signer: str
) -> None:
    key = keys.load_public_key((connaisseur / f"{signer}.pub").read_bytes())
    found = _connaisseur_signatures(connaisseur, MULTI)
    cosign.verify_with_key(found, key, MULTI, require_tlog=False)


def test_a_key_that_signed_nothing_is_refused(connaisseur: Path) -> None:
    key = keys.load_public_key((connaisseur / "default.pub").read_bytes())
    found = _connaisseur_signatures(connaisseur, MULTI)
    with pytest.raises(WrongKey, match=exactly("signature does not verify with the key")):
        cosign.verify_with_key(found, key, MULTI, require_tlog=False)


def test_a_signature_copied_from_another_image_is_refused(connaisseur: Path) -> None:
    key = keys.load_public_key((connaisseur / "alice.pub").read_bytes())
    copied = _connaisseur_signatures(connaisseur, SINGLE)  # alice signed SINGLE, not MULTI
    with pytest.raises(WrongImage, match=r"\(digest mismatch\)$"):
        cosign.verify_with_key(copied, key, MULTI, require_tlog=False)


def test_no_signature_at_all(connaisseur: Path) -> None:
    key = keys.load_public_key((connaisseur / "alice.pub").read_bytes())
    with pytest.raises(NoSignatures, match=exactly("no signature found")):
        cosign.verify_with_key([], key, MULTI, require_tlog=False)


@pytest.mark.parametrize("kind", ["ECDSAP256", "ECDSAP384", "RSA256", "RSA384"])
def test_rsa_and_ecdsa_keys_verify_only_their_own_signatures(
    shared_fixtures: Path, kind: str
) -> None:
    folder = shared_fixtures / "signatures" / "ratify-keyed-hello-world"
    payload = (folder / "payload.json").read_bytes()
    digest = json.loads(payload)["critical"]["image"]["docker-manifest-digest"]
    found = [_legacy(payload, (folder / f"signature-{kind}.b64").read_text().strip())]
    for other in ["ECDSAP256", "ECDSAP384", "RSA256", "RSA384"]:
        key = keys.load_public_key((folder / f"valid{other}PubKey.pem").read_bytes())
        if other == kind:
            cosign.verify_with_key(found, key, digest, require_tlog=False)
        else:
            with pytest.raises(WrongKey):
                cosign.verify_with_key(found, key, digest, require_tlog=False)


def test_a_signature_with_a_log_entry_and_the_transparency_requirement(
    shared_fixtures: Path,
) -> None:
    folder = shared_fixtures / "signatures" / "containers-image-dir-img-cosign-key-rekor-valid"
    payload = (folder / "payload.json").read_bytes()
    digest = json.loads(payload)["critical"]["image"]["docker-manifest-digest"]
    found = [
        _legacy(
            payload,
            (folder / "signature.b64").read_text().strip(),
            transparency=(folder / "bundle.json").read_text(),
        )
    ]
    right = keys.load_public_key((folder / "cosign2.pub").read_bytes())
    wrong = keys.load_public_key((folder / "cosign.pub").read_bytes())
    cosign.verify_with_key(found, right, digest, require_tlog=False)
    with pytest.raises(SignatureFailure):
        cosign.verify_with_key(found, wrong, digest, require_tlog=False)
    # The Rekor SET is checked against the public-good log key, offline.
    cosign.verify_with_key(found, right, digest, require_tlog=True)


def _rekor_fixture(shared_fixtures: Path) -> tuple[bytes, bytes, dict[str, object], keys.PublicKey]:
    folder = shared_fixtures / "signatures" / "containers-image-dir-img-cosign-key-rekor-valid"
    return (
        (folder / "payload.json").read_bytes(),
        base64.b64decode((folder / "signature.b64").read_text().strip()),
        json.loads((folder / "bundle.json").read_text()),
        keys.load_public_key((folder / "cosign2.pub").read_bytes()),
    )


def test_a_forged_or_mismatched_set_is_refused(shared_fixtures: Path) -> None:
    payload, signature, bundle, key = _rekor_fixture(shared_fixtures)
    root = roots.public_good_json()
    rekor.verify_set(bundle, payload, signature, key.der, root)
    with pytest.raises(
        BadTransparencyLogEntry, match=exactly("bad SET: the log entry is for another payload")
    ):
        rekor.verify_set(bundle, payload + b" ", signature, key.der, root)
    forged = json.loads(json.dumps(bundle))
    forged["Payload"]["integratedTime"] += 1
    with pytest.raises(
        BadTransparencyLogEntry, match=exactly("bad SET: the log's signature does not verify")
    ):
        rekor.verify_set(forged, payload, signature, key.der, root)
    unknown_log = json.loads(json.dumps(bundle))
    unknown_log["Payload"]["logID"] = "00" * 32
    with pytest.raises(BadTransparencyLogEntry, match="not in the trust root"):
        rekor.verify_set(unknown_log, payload, signature, key.der, root)
    stranger = keys.load_public_key(
        (
            shared_fixtures
            / "signatures"
            / "containers-image-dir-img-cosign-key-rekor-valid"
            / "cosign.pub"
        ).read_bytes()
    )
    with pytest.raises(
        BadTransparencyLogEntry, match=exactly("bad SET: the log entry names another key")
    ):
        rekor.verify_set(bundle, payload, signature, stranger.der, root)


def test_a_tampered_payload_fails(connaisseur: Path) -> None:
    key = keys.load_public_key((connaisseur / "alice.pub").read_bytes())
    (signature,) = _connaisseur_signatures(connaisseur, SINGLE)
    tampered = FoundSignature(
        "legacy", signature.signed + b" ", signature.signature, signature.claims
    )
    with pytest.raises(WrongKey, match=exactly("signature does not verify with the key")):
        cosign.verify_with_key([tampered], key, SINGLE, require_tlog=False)


def test_keys_that_are_not_keys_are_refused() -> None:
    with pytest.raises(keys.UnusableKeyError):
        keys.load_public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_pae_matches_the_dsse_spec() -> None:
    assert cosign.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
