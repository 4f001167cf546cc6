"""The real local registry and the real cosign CLI: sign an image, read the signature back.

Proves the test bed is what later tiers rely on: the registry stores cosign's legacy `.sig` tags
and serves the OCI 1.1 referrers API that cosign v3 uses for Sigstore bundles.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imagegate.testbed.registry import LocalRegistry
from support import cosign_env, cosign_key_pair, cosign_sign, push_random_image

pytestmark = [pytest.mark.registry, pytest.mark.cosign]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"


def _get(url: str, accept: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        body: bytes = reply.read()
        return body


def _get_json(url: str, accept: str | None = None) -> Any:
    return json.loads(_get(url, accept))


@pytest.fixture(scope="module")
def keypair(cosign: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cosign_key_pair(cosign, tmp_path_factory.mktemp("cosign-keys"), "test")


def _cosign(cosign: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **cosign_env(),
        # cosign must not reach for the public Sigstore services from a test.
        "TUF_ROOT": str(Path(os.environ.get("TMPDIR", "/tmp")) / "imagegate-no-tuf"),
    }
    completed = subprocess.run(
        [str(cosign), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, f"cosign {' '.join(args)} failed:\n{completed.stderr}"
    return completed


def _push_and_sign(
    registry: LocalRegistry,
    crane: Path,
    cosign: Path,
    keypair: Path,
    workdir: Path,
    repository: str,
    *,
    bundle: bool,
) -> tuple[str, str]:
    """Push a random image and sign it by key, offline; return its digest and reference."""
    digest = push_random_image(crane, registry.address, repository, "v1", workdir)
    reference = f"{registry.address}/{repository}@{digest}"
    cosign_sign(cosign, Path(f"{keypair}.key"), reference, bundle=bundle)
    return digest, reference


def _verify_ecdsa(public_key_path: Path, signature: bytes, payload: bytes) -> None:
    key = serialization.load_pem_public_key(public_key_path.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))  # raises InvalidSignature


def test_legacy_signature_is_stored_as_a_sig_tag(
    registry: LocalRegistry, crane: Path, cosign: Path, keypair: Path, tmp_path: Path
) -> None:
    digest, _reference = _push_and_sign(
        registry, crane, cosign, keypair, tmp_path, "team/legacy", bundle=False
    )

    tag = digest.replace(":", "-") + ".sig"
    manifest = _get_json(f"{registry.url}/v2/team/legacy/manifests/{tag}", OCI_MANIFEST)
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == SIMPLE_SIGNING
    payload = _get(f"{registry.url}/v2/team/legacy/blobs/{layer['digest']}")
    claims = json.loads(payload)
    assert claims["critical"]["image"]["docker-manifest-digest"] == digest
    assert claims["critical"]["type"] == "cosign container image signature"
    signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    _verify_ecdsa(Path(f"{keypair}.pub"), signature, payload)


def test_bundle_is_stored_as_an_oci_referrer(
    registry: LocalRegistry, crane: Path, cosign: Path, keypair: Path, tmp_path: Path
) -> None:
    digest, _reference = _push_and_sign(
        registry, crane, cosign, keypair, tmp_path, "team/bundled", bundle=True
    )

    index = _get_json(f"{registry.url}/v2/team/bundled/referrers/{digest}", OCI_INDEX)
    assert index["mediaType"] == OCI_INDEX
    bundles = [m for m in index["manifests"] if m.get("artifactType") == BUNDLE_V03]
    assert len(bundles) == 1, index
    manifest = _get_json(
        f"{registry.url}/v2/team/bundled/manifests/{bundles[0]['digest']}", OCI_MANIFEST
    )
    assert manifest["subject"]["digest"] == digest
    (layer,) = manifest["layers"]
    bundle = _get_json(f"{registry.url}/v2/team/bundled/blobs/{layer['digest']}")
    assert bundle["mediaType"] == BUNDLE_V03
    envelope: Mapping[str, Any] = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicateType"] == "https://sigstore.dev/cosign/sign/v1"
    assert [s["digest"]["sha256"] for s in statement["subject"]] == [digest.split(":", 1)[1]]

    # The registry filters referrers by artifactType when asked, and says so (OCI 1.1).
    query = f"{registry.url}/v2/team/bundled/referrers/{digest}?artifactType="
    with urllib.request.urlopen(query + "application/x-nothing", timeout=10) as reply:
        assert reply.headers["OCI-Filters-Applied"] == "artifactType"
        assert json.load(reply)["manifests"] == []
    assert len(_get_json(query + BUNDLE_V03.replace("+", "%2B"))["manifests"]) == 1


def test_cosign_verifies_its_own_signature_and_rejects_another_key(
    registry: LocalRegistry, crane: Path, cosign: Path, keypair: Path, tmp_path: Path
) -> None:
    _digest, reference = _push_and_sign(
        registry, crane, cosign, keypair, tmp_path, "team/verified", bundle=False
    )
    _cosign(
        cosign,
        "verify",
        "--key",
        f"{keypair}.pub",
        "--insecure-ignore-tlog=true",
        "--new-bundle-format=false",
        reference,
    )
    other = cosign_key_pair(cosign, tmp_path, "other")
    rejected = subprocess.run(
        [
            str(cosign),
            "verify",
            "--key",
            f"{other}.pub",
            "--insecure-ignore-tlog=true",
            "--new-bundle-format=false",
            reference,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rejected.returncode != 0
