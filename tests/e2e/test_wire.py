"""The real API server and the operator process over a network that delivers in pieces.

Two paths leave loopback's "every write arrives whole" in a real cluster, and each goes through
`netproxy` here: the API server → webhook (HTTPS; TLS records split across TCP segments) and the
operator → registry (manifests and signatures read in pieces). Both failed on the code that
took `StreamReader.read(n)` for the whole body (a denied Pod; a signature "not found").

What else loopback hides (see tests/integration/test_wire.py for what is checked there): slow
first bytes and stalls, resets mid-body, keep-alive connections the server closed while idle
(the API server's Go client and aiohttp's both retry a request once on a reused dead
connection), none of which a straight loopback connection ever shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from imagegate.testbed import local
from imagegate.testbed.registry import LocalRegistry
from netproxy import Shaping, TcpProxy, ThreadedProxy
from support import (
    Cluster,
    cosign_key_pair,
    cosign_sign,
    pad_signature_manifest,
    push_random_image,
)

from .conftest import PolicyFactory, fresh_namespace

pytestmark = pytest.mark.controlplane

#: Namespaces only the proxied webhooks see (the session's own webhooks select E2E_LABEL).
WIRE_LABEL = "imagegate.dev/e2e-wire"


@pytest.fixture
def proxied_webhooks(
    api: client.ApiClient, cluster: Cluster, operator: local.LocalOperator
) -> Iterator[TcpProxy]:
    """imagegate's webhooks registered at a proxy in front of the operator, not at it."""
    if cluster.webhook_host != "127.0.0.1":
        pytest.skip("the proxy listens on 127.0.0.1; the API server must reach it there")
    port = int(operator.url.rsplit(":", 1)[1])
    with ThreadedProxy(
        "127.0.0.1", port, up=Shaping(chunk=(1, 1400), pause=0.0005, first_byte_delay=0.05)
    ) as proxy:
        proxied = dataclasses.replace(operator, url=f"https://127.0.0.1:{proxy.port}")
        selector = {"matchLabels": {WIRE_LABEL: "on"}}
        with local.registered_webhooks(api, proxied, "imagegate-e2e-wire", selector):
            yield proxy


@pytest.fixture
def wire_namespace(api: client.ApiClient, proxied_webhooks: TcpProxy) -> Iterator[str]:
    with fresh_namespace(api, "wire", {WIRE_LABEL: "on"}) as name:
        yield name


def big_pod(name: str, image: str, annotation_bytes: int) -> dict[str, Any]:
    annotations = {f"pad.example/{n}": "a" * 1000 for n in range(annotation_bytes // 1000)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def test_the_api_server_sends_a_large_pod_through_the_proxy_and_it_is_admitted(
    api: client.ApiClient,
    wire_namespace: str,
    proxied_webhooks: TcpProxy,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    crane: Path,
    tmp_path: Path,
) -> None:
    digest = push_random_image(crane, registry.address, "wire/app", "v1", tmp_path)
    image_policy(
        wire_namespace,
        "local",
        {"sources": [{"name": "local", "images": [f"{registry.address}/**"]}]},
    )
    core = client.CoreV1Api(api)
    writes_before = proxied_webhooks.writes
    core.create_namespaced_pod(
        wire_namespace, big_pod("big", f"{registry.address}/wire/app:v1", 150_000)
    )
    stored = core.read_namespaced_pod("big", wire_namespace)
    assert stored.spec.containers[0].image == f"{registry.address}/wire/app:v1@{digest}"
    assert len(stored.metadata.annotations) >= 150
    # Both webhooks were called through the proxy (on a new connection or one the API server
    # kept alive from an earlier test), each review of 150 KB in 1,400-byte writes.
    assert proxied_webhooks.writes - writes_before > 2 * 150_000 // 1400


def test_the_operator_reads_a_20kb_signature_from_the_registry_through_the_proxy(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    registry_proxy: TcpProxy,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    digest = push_random_image(crane, registry.address, "wire/signed", "v1", tmp_path)
    key = cosign_key_pair(cosign, tmp_path)
    cosign_sign(
        cosign, Path(f"{key}.key"), f"{registry.address}/wire/signed@{digest}", bundle=False
    )
    assert pad_signature_manifest(registry.url, "wire/signed", digest) > 20 * 1024
    proxied = f"{registry_proxy.address}/wire/signed"
    image_policy(
        gated_namespace,
        "signed-via-proxy",
        {
            "sources": [
                {
                    "name": "proxied",
                    "images": [f"{registry_proxy.address}/**"],
                    "signatures": {
                        "keys": [{"publicKey": Path(f"{key}.pub").read_text()}],
                        "requireTransparencyLog": False,
                    },
                }
            ]
        },
    )
    core = client.CoreV1Api(api)
    before = registry_proxy.writes
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "signed"},
        "spec": {"containers": [{"name": "app", "image": f"{proxied}:v1"}]},
    }
    core.create_namespaced_pod(gated_namespace, body)
    stored = core.read_namespaced_pod("signed", gated_namespace).spec.containers[0].image
    assert stored == f"{proxied}:v1@{digest}"
    assert registry_proxy.writes - before > 20 * 1024 // 1400  # the signature came in pieces
