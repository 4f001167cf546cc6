"""Keyless Sigstore bundles that other projects made, verified offline (no network here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegate.policy import model
from imagegate.signatures import keyless, roots
from imagegate.signatures.failures import SignatureFailure, WrongImage

KUBEWARDEN_DIGEST = "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172"
KUBEWARDEN_SUBJECT = (
    "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml"
    "@refs/tags/v1.34.0"
)
GITHUB_ACTIONS = "https://token.actions.githubusercontent.com"


@pytest.fixture(scope="module")
def kubewarden(shared_fixtures: Path) -> bytes:
    folder = (
        shared_fixtures / "signatures" / "sigstore-rs-kubewarden-controller-v1.34.0-bundle-v0.3"
    )
    return (folder / "bundle_v03.json").read_bytes()


def authority(**fields: str) -> model.KeylessAuthority:
    return model.KeylessAuthority.model_validate(fields)


@pytest.mark.parametrize(
    "identity",
    [
        {"issuer": GITHUB_ACTIONS, "subject": KUBEWARDEN_SUBJECT},
        {
            "issuer": GITHUB_ACTIONS,
            "subjectRegExp": r"https://github\.com/kubewarden/.+/release\.yml@refs/tags/v.*",
        },
        {
            "issuerRegExp": r"https://token\.actions\.githubusercontent\.com",
            "subject": KUBEWARDEN_SUBJECT,
        },
    ],
)
def test_a_real_cosign_v3_bundle_verifies_for_its_identity(
    kubewarden: bytes, identity: dict[str, str]
) -> None:
    keyless.verify_bundle(
        kubewarden, KUBEWARDEN_DIGEST, authority(**identity), roots.public_good_root()
    )


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        ({"issuer": GITHUB_ACTIONS, "subject": KUBEWARDEN_SUBJECT + "x"}, "wrong identity"),
        ({"issuer": "https://accounts.google.com", "subject": KUBEWARDEN_SUBJECT}, "issuer"),
        # Anchored: a pattern that only matches a prefix does not match.
        ({"issuer": GITHUB_ACTIONS, "subjectRegExp": "https://github.com/kubewarden"}, "subject"),
    ],
)
def test_another_identity_is_refused(
    kubewarden: bytes, identity: dict[str, str], reason: str
) -> None:
    with pytest.raises(SignatureFailure, match=reason):
        keyless.verify_bundle(
            kubewarden, KUBEWARDEN_DIGEST, authority(**identity), roots.public_good_root()
        )


def test_the_bundle_does_not_vouch_for_another_digest(kubewarden: bytes) -> None:
    other = "sha256:" + "0" * 64
    with pytest.raises(
        WrongImage, match=rf"^the bundle's subject is not {other} \(digest mismatch\)$"
    ):
        keyless.verify_bundle(
            kubewarden,
            other,
            authority(issuer=GITHUB_ACTIONS, subject=KUBEWARDEN_SUBJECT),
            roots.public_good_root(),
        )


def test_an_attestation_is_not_a_signature(shared_fixtures: Path) -> None:
    bundle = (
        shared_fixtures
        / "signatures"
        / "cosign-oci-attestation-bundle"
        / "oci-attestation.sigstore.json"
    ).read_bytes()
    digest = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
    with pytest.raises(WrongImage, match="not a cosign signature"):
        keyless.verify_bundle(
            bundle,
            digest,
            authority(issuer="https://github.com/login/oauth", subject="cody@soyland.com"),
            roots.public_good_root(),
        )


def test_a_tampered_bundle_does_not_verify(kubewarden: bytes) -> None:
    import base64
    import json

    bundle = json.loads(kubewarden)
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "1" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(SignatureFailure, match=r"^bundle does not verify"):
        keyless.verify_bundle(
            json.dumps(bundle).encode(),
            "sha256:" + "1" * 64,
            authority(issuer=GITHUB_ACTIONS, subject=KUBEWARDEN_SUBJECT),
            roots.public_good_root(),
        )


def test_the_shipped_root_matches_the_shared_copy(shared_fixtures: Path) -> None:
    import json

    shipped = json.loads(
        (shared_fixtures / "signatures" / "public-good-trusted_root.json").read_text()
    )
    assert roots.public_good_root() is roots.public_good_root()  # loaded once
    assert shipped["mediaType"].startswith("application/vnd.dev.sigstore.trustedroot")
