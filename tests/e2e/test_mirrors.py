"""Real upstream names through a mirror: `dhi.io/python:3.12` and `cgr.dev/chainguard/python:latest`
served by the local registry under a path prefix (containerd's `override_path`), as stand-ins
signed by the real cosign, to an operator started with `--registry-mirrors` (design.md §8).

Nothing leaves loopback: each host's hosts.toml names a `server` that refuses connections (the
upstream of an air-gapped cluster). Without the mirror entries the same names cannot be resolved
and are denied, so the admissions with them prove the mirror is what answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from imagegate.testbed.registry import LocalRegistry
from netproxy import TcpProxy
from support import Cluster

from .conftest import (
    MIRRORS_LABEL,
    STAND_INS,
    PolicyFactory,
    StandIns,
    fresh_namespace,
    hosts_directory,
    mirrors_operator,
)

pytestmark = [pytest.mark.controlplane, pytest.mark.registry, pytest.mark.cosign]


@pytest.fixture(scope="module", params=["mirrored", "upstream-only"])
def mirrors_namespace(
    request: pytest.FixtureRequest,
    api: client.ApiClient,
    cluster: Cluster,
    crds: None,
    registry: LocalRegistry,
    offline_upstream: TcpProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str]]:
    """An operator with (or without) the mirror entries, its webhooks, and a namespace they see;
    gives (namespace, which)."""
    which: str = request.param
    workdir = tmp_path_factory.mktemp(f"operator-{which}")
    directory = hosts_directory(
        workdir / "certs.d", offline_upstream, registry if which == "mirrored" else None
    )
    with (
        mirrors_operator(api, cluster, directory, workdir, which),
        fresh_namespace(api, "mirrors", {MIRRORS_LABEL: which}) as namespace,
    ):
        yield namespace, which


def pod(name: str, image: str) -> dict[str, Any]:
    spec = {"containers": [{"name": "app", "image": image}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize("image", list(STAND_INS))
def test_a_real_name_is_verified_and_pinned_through_the_mirror_and_denied_without_it(
    api: client.ApiClient,
    mirrors_namespace: tuple[str, str],
    image_policy: PolicyFactory,
    stand_ins: StandIns,
    image: str,
) -> None:
    namespace, which = mirrors_namespace
    digests, public_key = stand_ins.digests, stand_ins.public_key
    name = f"p{list(STAND_INS).index(image)}"
    image_policy(
        namespace,
        f"hardened-{name}",
        {
            "sources": [
                {
                    "name": "hardened",
                    "images": [image.rsplit(":", 1)[0]],
                    "signatures": {
                        "keys": [{"publicKey": public_key}],
                        "requireTransparencyLog": False,
                    },
                }
            ]
        },
    )
    core = client.CoreV1Api(api)
    if which == "mirrored":
        core.create_namespaced_pod(namespace, pod(name, image))
        stored = core.read_namespaced_pod(name, namespace).spec.containers[0].image
        assert stored == f"{image}@{digests[image]}"  # the upstream name, the stand-in's digest
        return
    with pytest.raises(ApiException) as denied:
        core.create_namespaced_pod(namespace, pod(name, image))
    message = json.loads(denied.value.body)["message"]
    host = image.split("/", 1)[0]
    assert f"image '{image}' denied" in message
    assert f"registry error: {host} did not answer (" in message, message
