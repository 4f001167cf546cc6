"""`/mutate` rewrites only to an admissible target, through the real API server and registry.

Every image lives in the local test registry: the originals under `<prefix>/upstream`, the
hardened targets under `<prefix>/hardened` (trusted only when signed by the test's key). A fresh
prefix per test keeps the operator's caches from answering for another test.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Images:
    """A fresh prefix of the local registry for one test, and how to put images under it."""

    registry: LocalRegistry
    crane: Path
    cosign: Path
    workdir: Path
    #: `registry/rt-<random>`: the operator's caches never answer for another test.
    prefix: str

    def push(self, name: str, tag: str) -> str:
        """An unsigned image at `prefix/name:tag`; its digest."""
        repository = f"{self.prefix.split('/', 1)[1]}/{name}"
        return push_random_image(self.crane, self.registry.address, repository, tag, self.workdir)

    def push_signed(self, name: str) -> str:
        """`prefix/name:v1` signed with a new key (`public_key` reads it); its digest."""
        repository = f"{self.prefix.split('/', 1)[1]}/{name}"
        _, digest = push_key_signed_image(
            self.crane, self.cosign, self.registry.address, repository, self.workdir
        )
        return digest

    def public_key(self) -> str:
        if not (self.workdir / "cosign.pub").exists():
            cosign_key_pair(self.cosign, self.workdir)
        return (self.workdir / "cosign.pub").read_text()


@pytest.fixture
def images(registry: LocalRegistry, crane: Path, cosign: Path, tmp_path: Path) -> Images:
    return Images(
        registry, crane, cosign, tmp_path, f"{registry.address}/rt-{uuid.uuid4().hex[:8]}"
    )


def test_a_missing_target_leaves_the_image_as_written_with_a_warning(
    api: client.ApiClient, gated_namespace: str, image_policy: PolicyFactory, images: Images
) -> None:
    prefix = images.prefix
    digest = images.push("upstream/app", "1")
    image_policy(gated_namespace, "hardened", policy_spec(prefix, images.public_key(), "app"))
    warnings = create_pod(api, gated_namespace, pod_body("p", f"{prefix}/upstream/app:1"))
    # Not rewritten to what the kubelet could not pull; validation admitted it, pinned.
    assert stored_images(api, gated_namespace, "p") == [f"{prefix}/upstream/app:1@{digest}"]
    assert warnings == [
        f"imagegate: not rewriting {prefix}/upstream/app:1 to {prefix}/hardened/app:1: not "
        "found in its registry; validation decides"
    ]


def test_an_unsigned_target_is_not_rewritten_under_a_signature_policy(
    api: client.ApiClient, gated_namespace: str, image_policy: PolicyFactory, images: Images
) -> None:
    prefix = images.prefix
    original = images.push("upstream/app", "1")
    images.push("hardened/app", "1")
    image_policy(gated_namespace, "hardened", policy_spec(prefix, images.public_key(), "app"))
    warnings = create_pod(api, gated_namespace, pod_body("p", f"{prefix}/upstream/app:1"))
    assert stored_images(api, gated_namespace, "p") == [f"{prefix}/upstream/app:1@{original}"]
    assert warnings == [
        f"imagegate: not rewriting {prefix}/upstream/app:1 to {prefix}/hardened/app:1: "
        f"signature not verified by policy {gated_namespace}/hardened, source hardened: "
        "keys[0]: no signature found; validation decides"
    ]


def test_a_signed_target_is_rewritten_and_pinned_beside_one_that_is_not(
    api: client.ApiClient, gated_namespace: str, image_policy: PolicyFactory, images: Images
) -> None:
    prefix = images.prefix
    signed = images.push_signed("hardened/app")
    images.push("upstream/app", "v1")
    side = images.push("upstream/side", "v1")
    # The side container's target is missing: it alone stays as written.
    spec = policy_spec(prefix, images.public_key(), "app", "side")
    image_policy(gated_namespace, "hardened", spec)
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
