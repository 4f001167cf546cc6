"""`/mutate` rewrites only to an admissible target, through the real API server and registry.

Every image lives in the local test registry: the originals under `<prefix>/upstream`, the
hardened targets under `<prefix>/hardened` (trusted only when signed by the test's key). A fresh
prefix per test keeps the operator's caches from answering for another test.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from imagegate.testbed.registry import LocalRegistry
from support import cosign_key_pair, push_key_signed_image, push_random_image

from .conftest import PolicyFactory
from .test_admission import pod_body

pytestmark = pytest.mark.controlplane


def policy_spec(prefix: str, public_key: str, *names: str) -> dict[str, Any]:
    """Upstream trusted as it is, hardened only when signed; each name rewritten to hardened."""
    return {
        "sources": [
            {"name": "upstream", "images": [f"{prefix}/upstream/**"]},
            {
                "name": "hardened",
                "images": [f"{prefix}/hardened/**"],
                "signatures": {
                    "keys": [{"publicKey": public_key}],
                    "requireTransparencyLog": False,
                },
            },
        ],
        "rewrites": [
            {"from": f"{prefix}/upstream/{name}", "to": f"{prefix}/hardened/{name}", "tag": "keep"}
            for name in names
        ],
    }


def create_pod(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> list[str]:
    """Create the Pod; the API server's warnings (what the webhooks said), unquoted."""
    response = client.CoreV1Api(api).create_namespaced_pod(namespace, body, _preload_content=False)
    headers = response.headers.getlist("Warning") if hasattr(response.headers, "getlist") else []
    # `299 - "text"`; a header may hold several, but each of ours is sent as its own.
    return [header.split(" ", 2)[2].strip('"') for header in headers]


def stored_images(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    pod = client.CoreV1Api(api).read_namespaced_pod(name, namespace)
    return [container.image for container in pod.spec.containers]


@pytest.fixture
def prefix(registry: LocalRegistry) -> str:
    return f"{registry.address}/rt-{uuid.uuid4().hex[:8]}"


def test_a_missing_target_leaves_the_image_as_written_with_a_warning(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    prefix: str,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    repository = prefix.split("/", 1)[1]
    digest = push_random_image(crane, registry.address, f"{repository}/upstream/app", "1", tmp_path)
    public_key = cosign_key_pair(cosign, tmp_path).with_suffix(".pub").read_text()
    image_policy(gated_namespace, "hardened", policy_spec(prefix, public_key, "app"))
    warnings = create_pod(api, gated_namespace, pod_body("p", f"{prefix}/upstream/app:1"))
    # Not rewritten to what the kubelet could not pull; validation admitted it, pinned.
    assert stored_images(api, gated_namespace, "p") == [f"{prefix}/upstream/app:1@{digest}"]
    assert warnings == [
        f"imagegate: not rewriting {prefix}/upstream/app:1 to {prefix}/hardened/app:1: not "
        "found in its registry; validation decides"
    ]


def test_an_unsigned_target_is_not_rewritten_under_a_signature_policy(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    prefix: str,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    repository = prefix.split("/", 1)[1]
    original = push_random_image(
        crane, registry.address, f"{repository}/upstream/app", "1", tmp_path
    )
    push_random_image(crane, registry.address, f"{repository}/hardened/app", "1", tmp_path)
    public_key = cosign_key_pair(cosign, tmp_path).with_suffix(".pub").read_text()
    image_policy(gated_namespace, "hardened", policy_spec(prefix, public_key, "app"))
    warnings = create_pod(api, gated_namespace, pod_body("p", f"{prefix}/upstream/app:1"))
    assert stored_images(api, gated_namespace, "p") == [f"{prefix}/upstream/app:1@{original}"]
    assert warnings == [
        f"imagegate: not rewriting {prefix}/upstream/app:1 to {prefix}/hardened/app:1: "
        f"signature not verified by policy {gated_namespace}/hardened, source hardened: "
        "keys[0]: no signature found; validation decides"
    ]


def test_a_signed_target_is_rewritten_and_pinned_beside_one_that_is_not(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    prefix: str,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    repository = prefix.split("/", 1)[1]
    _, signed = push_key_signed_image(
        crane, cosign, registry.address, f"{repository}/hardened/app", tmp_path
    )
    push_random_image(crane, registry.address, f"{repository}/upstream/app", "v1", tmp_path)
    side = push_random_image(crane, registry.address, f"{repository}/upstream/side", "v1", tmp_path)
    # The side container's target is missing: it alone stays as written.
    public_key = (tmp_path / "cosign.pub").read_text()
    image_policy(gated_namespace, "hardened", policy_spec(prefix, public_key, "app", "side"))
    body = pod_body("p", f"{prefix}/upstream/app:v1")
    body["spec"]["containers"].append({"name": "side", "image": f"{prefix}/upstream/side:v1"})
    warnings = create_pod(api, gated_namespace, body)
    assert stored_images(api, gated_namespace, "p") == [
        f"{prefix}/hardened/app:v1@{signed}",
        f"{prefix}/upstream/side:v1@{side}",
    ]
    (warning,) = warnings
    assert warning.startswith(
        f"imagegate: not rewriting {prefix}/upstream/side:v1 to {prefix}/hardened/side:v1: "
    )
