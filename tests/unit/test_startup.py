"""Start-up work that must not wait in series (design.md §11, start-up), with fake API calls."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from kubernetes import client

from imagegate.cluster import policies
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

    asyncio.run(watch.load())

    assert sorted(writes.written) == ["p0", "p1", "p2"]
    assert len(watch.cache.policies()) == POLICIES
