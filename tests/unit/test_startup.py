"""Start-up work that must not wait in series (design.md §11, start-up), with fake API calls."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from imagegate.cluster import kube, policies
from imagegate.policy import model
from imagegate.signatures import apiserver

POLICIES = 3


class MeetingStatusWrites:
    """Each status write waits until POLICIES writes are under way at once (or times out)."""

    def __init__(self) -> None:
        self.together = threading.Barrier(POLICIES, timeout=10)
        self.written: list[str] = []

    def patch_status(self, namespace: str | None, name: str, patch: dict[str, Any]) -> None:
        self.together.wait()  # BrokenBarrierError if the writes come one at a time
        self.written.append(name)


def cluster_policy(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": name, "generation": 1},
        "spec": {"sources": [{"name": "cg", "images": ["cgr.dev/**"]}]},
    }


def test_loading_writes_the_policies_status_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first start: no policy has a status yet, so each is written while loading."""
    cluster_plural = policies.PLURALS[model.CLUSTER_KIND]

    def listed(self: Any, group: str, version: str, plural: str) -> dict[str, Any]:
        names = [f"p{n}" for n in range(POLICIES)] if plural == cluster_plural else []
        return {"items": [cluster_policy(name) for name in names]}

    monkeypatch.setattr(apiserver.ApiServer, "get", lambda self, path: {"items": []})
    monkeypatch.setattr(client.CustomObjectsApi, "list_cluster_custom_object", listed)
    writes = MeetingStatusWrites()
    watch = policies.PolicyWatch(client.ApiClient(), writes)  # type: ignore[arg-type]

    async def load_and_flush() -> None:
        await watch.load()
        await watch.flush_status()

    asyncio.run(load_and_flush())

    assert sorted(writes.written) == ["p0", "p1", "p2"]
    assert len(watch.cache.policies()) == POLICIES


class HeldStatusWrites:
    """Status writes that do not return until `release` is set (a slow API server)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.written: list[tuple[str, dict[str, Any]]] = []

        #: (name, generation) of writes that take a while longer once released.
        self.slow: set[tuple[str, int]] = set()

    def patch_status(self, namespace: str | None, name: str, patch: dict[str, Any]) -> None:
        if not self.release.wait(timeout=10):
            raise AssertionError("never released")
        if (name, patch["status"]["observedGeneration"]) in self.slow:
            time.sleep(0.3)
        self.written.append((name, patch))


def watch_listing(monkeypatch: pytest.MonkeyPatch, writes: object) -> policies.PolicyWatch:
    """A PolicyWatch whose API server lists POLICIES cluster policies with no status yet."""
    cluster_plural = policies.PLURALS[model.CLUSTER_KIND]

    def listed(self: Any, group: str, version: str, plural: str) -> dict[str, Any]:
        names = [f"p{n}" for n in range(POLICIES)] if plural == cluster_plural else []
        return {"items": [cluster_policy(name) for name in names]}

    monkeypatch.setattr(apiserver.ApiServer, "get", lambda self, path: {"items": []})
    monkeypatch.setattr(client.CustomObjectsApi, "list_cluster_custom_object", listed)
    return policies.PolicyWatch(client.ApiClient(), writes)  # type: ignore[arg-type]


def test_loading_does_not_wait_for_the_status_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policies are enforced (and the webhook may start) while their status is written."""
    writes = HeldStatusWrites()
    watch = watch_listing(monkeypatch, writes)

    async def load_then_release() -> list[str]:
        await asyncio.wait_for(watch.load(), timeout=5)  # TimeoutError: it waited for them
        enforced = sorted(policy.name for policy in watch.cache.policies())
        assert writes.written == []
        writes.release.set()
        await watch.flush_status()
        return enforced

    assert asyncio.run(load_then_release()) == ["p0", "p1", "p2"]
    assert sorted(name for name, _ in writes.written) == ["p0", "p1", "p2"]
    (condition,) = writes.written[0][1]["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("True", "Compiled")


def test_kopfs_list_during_a_pending_status_write_writes_nothing_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf lists the policies again right after loading, still without the status being
    written: the same status is not written twice, and a policy's changed status waits for the
    older write so it lands last."""
    writes = HeldStatusWrites()
    writes.slow.add(("p1", 1))
    watch = watch_listing(monkeypatch, writes)
    edited = {**cluster_policy("p1"), "metadata": {"name": "p1", "uid": "p1", "generation": 2}}
    edited["spec"] = {"sources": [{"name": "cg", "images": ["cgr.dev/chainguard/**"]}]}

    async def load_then_list_again() -> None:
        await asyncio.wait_for(watch.load(), timeout=5)
        listed_again = [
            watch.apply({"type": "ADDED", "object": {"kind": model.CLUSTER_KIND, **body}})
            for body in (cluster_policy("p0"), edited)
        ]
        gathered = asyncio.gather(*listed_again)
        await asyncio.sleep(0.2)  # both events handled as far as they go before the release
        writes.release.set()
        await gathered
        await watch.flush_status()

    asyncio.run(load_then_list_again())

    names = [name for name, _ in writes.written]
    assert sorted(names) == ["p0", "p1", "p1", "p2"]
    p1_generations = [
        patch["status"]["observedGeneration"] for name, patch in writes.written if name == "p1"
    ]
    assert p1_generations == [1, 2]


def test_loading_lists_namespaces_and_both_kinds_side_by_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three round trips on the start path, made at once (each waits for the other two)."""
    together = threading.Barrier(3, timeout=10)
    cluster_plural = policies.PLURALS[model.CLUSTER_KIND]

    def namespaces(self: Any, path: str) -> dict[str, Any]:
        together.wait()  # BrokenBarrierError if the lists come one at a time
        return {"items": [{"metadata": {"name": "shop", "labels": {"tier": "prod"}}}]}

    def listed(self: Any, group: str, version: str, plural: str) -> dict[str, Any]:
        together.wait()
        if plural == cluster_plural:
            return {"items": [cluster_policy("p0")]}
        policy = cluster_policy("p1")
        return {"items": [{**policy, "metadata": {**policy["metadata"], "namespace": "shop"}}]}

    monkeypatch.setattr(apiserver.ApiServer, "get", namespaces)
    monkeypatch.setattr(client.CustomObjectsApi, "list_cluster_custom_object", listed)
    writes = HeldStatusWrites()
    writes.release.set()
    watch = policies.PolicyWatch(client.ApiClient(), writes)  # type: ignore[arg-type]

    async def load_and_flush() -> None:
        await watch.load()
        await watch.flush_status()

    asyncio.run(load_and_flush())

    assert {key for key, _ in watch.cache.items()} == {(None, "p0"), ("shop", "p1")}
    assert watch.cache.namespaces() == {"shop": {"tier": "prod"}}


def kubeconfig_document(user: dict[str, Any], cluster_extra: dict[str, Any]) -> dict[str, Any]:
    ca = base64.standard_b64encode(b"-----BEGIN CERTIFICATE-----\nca\n").decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "admin@local",
        "contexts": [
            {"name": "other", "context": {"cluster": "nowhere", "user": "nobody"}},
            {"name": "admin@local", "context": {"cluster": "local", "user": "admin"}},
        ],
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": "https://127.0.0.1:6443/",
                    "certificate-authority-data": ca,
                    **cluster_extra,
                },
            }
        ],
        "users": [{"name": "admin", "user": user}],
    }


def read_files(configuration: client.Configuration) -> dict[str, Any]:
    """The settings the client uses, with the files it reads replaced by their content."""

    def content(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return {
        "host": configuration.host,
        "verify_ssl": configuration.verify_ssl,
        "ca": content(configuration.ssl_ca_cert),
        "cert": content(configuration.cert_file),
        "key": content(configuration.key_file),
        "api_key": dict(configuration.api_key),
    }


@pytest.mark.parametrize(
    ("user", "cluster_extra"),
    [
        (
            {
                "client-certificate-data": base64.standard_b64encode(b"cert").decode(),
                "client-key-data": base64.standard_b64encode(b"key").decode(),
            },
            {},
        ),
        ({"client-certificate": "admin.crt", "client-key": "admin.key"}, {}),
        ({"token": "a-token"}, {"insecure-skip-tls-verify": True}),
    ],
    ids=["certificate data", "certificate files", "token"],
)
def test_a_simple_kubeconfig_is_read_as_the_client_librarys_loader_reads_it(
    tmp_path: Path, user: dict[str, Any], cluster_extra: dict[str, Any]
) -> None:
    """kube.py reads it itself (without the loader's imports): the same client settings."""
    from kubernetes.config import kube_config

    (tmp_path / "admin.crt").write_bytes(b"cert from a file")
    (tmp_path / "admin.key").write_bytes(b"key from a file")
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig_document(user, cluster_extra)))
    expected = client.Configuration()
    kube_config.load_kube_config(str(path), client_configuration=expected)

    assert read_files(kube.api_client(path).configuration) == read_files(expected)


def test_any_other_kubeconfig_is_left_to_the_client_librarys_loader(tmp_path: Path) -> None:
    exec_plugin = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "login"}}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig_document(exec_plugin, {})))
    assert kube._simple_kubeconfig(path) is None
    path.write_text(yaml.safe_dump(kubeconfig_document({"token": "t"}, {"proxy-url": "http://p"})))
    assert kube._simple_kubeconfig(path) is None


def test_the_image_ships_its_modules_compiled() -> None:
    """A guard, not a fix: without bytecode in the image (its root filesystem is read-only, so
    none is written at run time) each start compiles every module, 1.2 s of CPU on the bench's
    machine (`bench/startup.py --bytecode as-is`; design.md §11)."""
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    build_stage = dockerfile.split("\nFROM ")[1]
    settings = [
        word
        for line in build_stage.splitlines()
        if line.startswith("ENV ")
        for word in line.split()
    ]
    assert "UV_COMPILE_BYTECODE=1" in settings


def test_a_status_write_left_running_that_fails_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No one awaits it, so its failure is a warning (as an API error's is), not lost."""

    class Unreachable:
        def patch_status(self, namespace: str | None, name: str, patch: dict[str, Any]) -> None:
            raise OSError("connection refused")

    watch = watch_listing(monkeypatch, Unreachable())

    async def load_and_flush() -> None:
        await watch.load()
        await watch.flush_status()

    asyncio.run(load_and_flush())

    assert len(watch.cache.policies()) == POLICIES
    assert "cannot update the status of p0: connection refused" in caplog.text
