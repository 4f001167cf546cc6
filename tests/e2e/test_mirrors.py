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
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from imagegate.testbed import images, local, processes
from imagegate.testbed.registry import LocalRegistry
from netproxy import TcpProxy, ThreadedProxy
from support import Cluster

from .conftest import PolicyFactory, fresh_namespace

pytestmark = [pytest.mark.controlplane, pytest.mark.registry, pytest.mark.cosign]

#: Namespaces only this module's webhooks see (the session's own select imagegate.dev/e2e).
MIRRORS_LABEL = "imagegate.dev/e2e-mirrors"
#: Upstream names served by stand-ins in the local registry, under `mirror/<host>/...`.
STAND_INS = ["dhi.io/python:3.12", "cgr.dev/chainguard/python:latest"]


@pytest.fixture(scope="module")
def offline_upstream() -> Iterator[TcpProxy]:
    """A loopback port that refuses connections: `server` for dhi.io and cgr.dev."""
    threaded = ThreadedProxy("127.0.0.1", 9)
    with threaded as proxy:
        threaded.refuse()
        yield proxy


@pytest.fixture(scope="module")
def stand_ins(
    registry: LocalRegistry, crane: Path, cosign: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, str], str]:
    """Each name's stand-in pushed under the mirror prefix and signed for its upstream name
    (cosign's docker-reference is the upstream's); gives (name -> digest, the public key)."""
    workdir = tmp_path_factory.mktemp("stand-ins")
    pushed = images.push_stand_ins(crane, cosign, registry.address, workdir, signed=STAND_INS)
    return dict(pushed.digests), pushed.public_key


def hosts_directory(directory: Path, upstream: TcpProxy, registry: LocalRegistry | None) -> Path:
    """containerd's config_path: the mirror entry when `registry` is given, the server always."""
    for host in ("dhi.io", "cgr.dev"):
        server = f"http://{upstream.address}"
        text = (
            images.mirror_hosts_toml(registry.url, host, server)
            if registry is not None
            else f'server = "{server}"\n'
        )
        (directory / host).mkdir(parents=True)
        (directory / host / "hosts.toml").write_text(text)
    return directory


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
    with local.operator_process(
        cluster.kubeconfig,
        workdir,
        cluster.webhook_host,
        extra_args=["--log-format=json", f"--registry-mirrors={directory}"],
    ) as running:
        try:
            selector = {"matchLabels": {MIRRORS_LABEL: which}}
            name = f"imagegate-e2e-mirrors-{which}"
            with (
                local.registered_webhooks(api, running, name, selector, policies=False),
                fresh_namespace(api, "mirrors", {MIRRORS_LABEL: which}) as namespace,
            ):
                yield namespace, which
        finally:
            print(f"operator log:\n{processes.tail(running.process.log_path, 40)}")


def pod(name: str, image: str) -> dict[str, Any]:
    spec = {"containers": [{"name": "app", "image": image}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize("image", list(STAND_INS))
def test_a_real_name_is_verified_and_pinned_through_the_mirror_and_denied_without_it(
    api: client.ApiClient,
    mirrors_namespace: tuple[str, str],
    image_policy: PolicyFactory,
    stand_ins: tuple[dict[str, str], str],
    image: str,
) -> None:
    namespace, which = mirrors_namespace
    digests, public_key = stand_ins
    name = f"p{STAND_INS.index(image)}"
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
