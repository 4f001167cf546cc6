"""The scan's inventory (trail/inventory.py) against the real API server: one LIST, then a WATCH
per kind, through a proxy that splits every answer into small pieces and can cut the line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from imagegate.cluster import kube
from imagegate.testbed.controlplane import ControlPlane
from imagegate.trail import inventory, reports, scan
from netproxy import Shaping, TcpProxy
from support import Cluster

from .test_admission import pod_body

pytestmark = pytest.mark.controlplane


@contextlib.asynccontextmanager
async def proxied_api(cluster: Cluster, tmp_path: Path) -> AsyncIterator[tuple[Any, TcpProxy]]:
    """An ApiClient whose every answer arrives 1-40 bytes at a time, and the proxy (so a test
    can refuse connections: an outage)."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    address = urllib.parse.urlsplit(config["clusters"][0]["cluster"]["server"])
    assert address.hostname is not None
    assert address.port is not None
    async with TcpProxy(address.hostname, address.port, down=Shaping(chunk=(1, 40))) as proxy:
        config["clusters"][0]["cluster"]["server"] = f"https://{proxy.address}"
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        yield kube.api_client(path), proxy


@contextlib.asynccontextmanager
async def running(store: inventory.WorkloadInventory) -> AsyncIterator[None]:
    """`store.run()` for the length of the block, then cancelled as a scanner's end cancels it."""
    watching = asyncio.create_task(store.run())
    try:
        yield
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.1)


def kept_pods(store: inventory.WorkloadInventory, namespace: str) -> dict[str, dict[str, Any]]:
    return {
        obj["metadata"]["name"]: obj
        for obj in store.objects()
        if obj["kind"] == "Pod" and obj["metadata"].get("namespace") == namespace
    }


@pytest.fixture
def namespace_with_pods(api: client.ApiClient) -> Any:
    core = client.CoreV1Api(api)
    name = f"inv-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    for n in range(3):
        body = pod_body(f"app-{n}", "ghcr.io/acme/api:1")
        body["metadata"]["annotations"] = {"note": "x" * 1000}
        core.create_namespaced_pod(name, body)
    yield name
    core.delete_namespace(name)


async def test_the_watch_keeps_every_change_through_a_wire_that_splits_answers(
    api: client.ApiClient, cluster: Cluster, namespace_with_pods: str, tmp_path: Path
) -> None:
    """Listed once, then created, changed and deleted Pods follow through the watch, however
    the API server's stream is cut up; each object is kept trimmed to what a scan reads."""
    namespace, core = namespace_with_pods, client.CoreV1Api(api)
    async with proxied_api(cluster, tmp_path) as (proxied, proxy):
        store = inventory.WorkloadInventory(proxied)
        async with running(store):
            await store.wait_listed(30)
            assert store.not_current() == []
            assert sorted(kept_pods(store, namespace)) == ["app-0", "app-1", "app-2"]
            kept = kept_pods(store, namespace)["app-0"]
            assert kept["apiVersion"] == "v1"
            assert set(kept) == {"apiVersion", "kind", "metadata", "spec"}  # no status
            assert set(kept["metadata"]) <= set(inventory.KEPT_METADATA)
            assert kept["metadata"]["uid"]

            core.create_namespaced_pod(namespace, pod_body("app-new", "ghcr.io/acme/api:2"))
            await eventually(lambda: "app-new" in kept_pods(store, namespace), "a created Pod")
            core.patch_namespaced_pod(
                "app-1",
                namespace,
                {"spec": {"containers": [{"name": "app", "image": "ghcr.io/acme/api:3"}]}},
            )

            def changed() -> bool:
                spec = kept_pods(store, namespace)["app-1"]["spec"]
                return bool(spec["containers"][0]["image"] == "ghcr.io/acme/api:3")

            await eventually(changed, "a changed Pod's image")
            core.delete_namespaced_pod("app-2", namespace, grace_period_seconds=0)
            await eventually(lambda: "app-2" not in kept_pods(store, namespace), "a deleted Pod")
            assert proxy.writes > 1000  # the answers really came in pieces
            # Each change came through the watch: none was caught up by listing again.
            assert store.lists == len(reports.SCANNED)
        assert not store.running


async def test_a_lost_api_server_makes_scans_incomplete_and_the_watch_resumes_after(
    api: client.ApiClient,
    cluster: Cluster,
    namespace_with_pods: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outage: every kind stops being current (a scan over it deletes no report). A Pod
    deleted meanwhile is gone once the API server answers again: the watch resumes from where
    it was, or lists again."""
    monkeypatch.setattr(inventory, "RETRY_BACKOFF", (0.2,))
    namespace, core = namespace_with_pods, client.CoreV1Api(api)
    async with proxied_api(cluster, tmp_path) as (proxied, proxy):
        store = inventory.WorkloadInventory(proxied)
        async with running(store):
            await store.wait_listed(30)
            assert "app-0" in kept_pods(store, namespace)
            await proxy.refuse()
            await eventually(lambda: len(store.not_current()) == 8, "every kind not current")
            # Reports are written past the outage here: what is at stake is what the scan read.
            scanner = scan.PolicyReportScanner(api, _NoPolicies(), store=store)
            assert not (await scanner.scan_once()).complete

            core.delete_namespaced_pod("app-0", namespace, grace_period_seconds=0)
            await proxy.resume()
            await eventually(lambda: store.not_current() == [], "every kind current again")
            await eventually(lambda: "app-0" not in kept_pods(store, namespace), "the deletion")
            assert sorted(kept_pods(store, namespace)) == ["app-1", "app-2"]


async def test_an_expired_resource_version_lists_the_kind_again(
    own_control_plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """A store away while the API server restarted and etcd compacted its history watches from
    a resourceVersion nobody holds any more: 410 Gone. The kind is listed again, so what was
    deleted unseen is not kept for ever (a watch that resumed anyway would keep it)."""
    api = kube.api_client(own_control_plane.kubeconfig)
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="gone")))
    for name in ("app-0", "app-1"):
        core.create_namespaced_pod("gone", pod_body(name, "ghcr.io/acme/api:1"))
    store = inventory.WorkloadInventory(api)
    await store.refresh()
    assert sorted(kept_pods(store, "gone")) == ["app-0", "app-1"]
    core.delete_namespaced_pod("app-0", "gone", grace_period_seconds=0)
    own_control_plane.restart_apiserver()  # its watch cache holds nothing from before this
    own_control_plane.compact_etcd()  # and etcd nothing from before the deletion
    caplog.set_level(logging.INFO, logger=inventory.__name__)
    async with running(store):
        await eventually(lambda: "app-0" not in kept_pods(store, "gone"), "the deletion")
        await eventually(lambda: store.not_current() == [], "every kind current again")
    assert sorted(kept_pods(store, "gone")) == ["app-1"]
    # Seen by listing again, not by a watch that replayed the deletion.
    assert "watch of /api/v1/pods expired: listing it again" in caplog.text, caplog.text


class _NoPolicies:
    def policies(self) -> list[Any]:
        return []

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {}
