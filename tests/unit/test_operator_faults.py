"""The operator's pure parts of fault handling: supervised tasks, and compiling only on change."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from imagegate.admission import server
from imagegate.cluster import operator, policies
from imagegate.signatures import material


def test_a_failing_background_task_is_logged_by_name_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise ConnectionRefusedError("the API server is gone")

    caplog.set_level(logging.ERROR, logger=operator.__name__)
    asyncio.run(operator.supervised("certificate upkeep", flaky, backoffs=(0.0,)))
    assert len(runs) == 3
    failures = [r for r in caplog.records if "'certificate upkeep' failed" in r.message]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)  # with the traceback


def test_a_cancelled_background_task_stops() -> None:
    async def forever() -> None:
        await asyncio.sleep(3600)

    async def scenario() -> None:
        task = asyncio.create_task(operator.supervised("scan", forever))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_the_default_config_serves_cluster_material_through_a_minute_long_outage() -> None:
    config = operator.OperatorConfig(None, server.TLSFiles(Path("c"), Path("k")))
    assert config.material_stale_for == material.STALE_FOR >= 60.0
    assert config.material_ttl == material.TTL


class StatusWrites:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def patch_status(self, namespace: str | None, name: str, patch: dict[str, Any]) -> None:
        self.patches.append(patch)


POLICY: dict[str, Any] = {
    "kind": "ImagePolicy",
    "metadata": {"name": "team", "namespace": "team", "uid": "u1", "generation": 1},
    "spec": {"sources": [{"name": "cg", "images": ["cgr.dev/**"]}]},
}


def watch_counting_compilations() -> policies.PolicyWatch:
    writes: Any = StatusWrites()
    return policies.PolicyWatch(client.ApiClient(), writes)


def with_status(body: dict[str, Any]) -> dict[str, Any]:
    written = copy.deepcopy(body)
    written["status"] = {
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Compiled", "message": ""},
        ],
    }
    written["metadata"]["annotations"] = {"touched": "yes"}
    return written


def test_a_status_or_metadata_event_does_not_recompile_a_policy() -> None:
    watch = watch_counting_compilations()

    async def events() -> None:
        await watch.apply({"type": "ADDED", "object": POLICY})
        await watch.apply({"type": "MODIFIED", "object": with_status(POLICY)})

    asyncio.run(events())
    assert watch.compilations == 1
    assert len(watch.cache.policies()) == 1


def test_a_spec_edit_recompiles_and_a_delete_forgets() -> None:
    watch = watch_counting_compilations()
    edited = copy.deepcopy(POLICY)
    edited["spec"]["sources"][0]["images"] = ["ghcr.io/**"]
    edited["metadata"]["generation"] = 2

    async def events() -> None:
        await watch.apply({"type": "ADDED", "object": POLICY})
        await watch.apply({"type": "MODIFIED", "object": edited})
        await watch.apply({"type": "DELETED", "object": edited})
        await watch.apply({"type": "ADDED", "object": edited})

    asyncio.run(events())
    assert watch.compilations == 3


def test_an_older_compile_that_finishes_last_does_not_replace_a_newer_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watch = watch_counting_compilations()
    edited = copy.deepcopy(POLICY)
    edited["spec"]["sources"][0]["images"] = ["ghcr.io/**"]
    release = threading.Event()
    real = policies.compile_resource

    def slow_for_the_first(document: Any) -> Any:
        if document["spec"] == POLICY["spec"]:
            release.wait(timeout=10)
        return real(document)

    monkeypatch.setattr(policies, "compile_resource", slow_for_the_first)

    async def events() -> None:
        older = asyncio.create_task(watch.apply({"type": "ADDED", "object": POLICY}))
        await asyncio.sleep(0.05)  # the older compile is under way in its thread
        await watch.apply({"type": "MODIFIED", "object": edited})
        release.set()
        await older

    asyncio.run(events())
    (policy,) = watch.cache.policies()
    assert "ghcr.io" in repr(policy)


def test_kopf_reconnects_are_bounded_so_an_edit_arrives_soon_after_an_outage() -> None:
    """kopf's defaults back off to 8 s and more between attempts (a 13 s outage delayed an edit
    20 s); imagegate caps request retries at 2 s apart and re-lists watches after 1 s."""

    class Section:
        pass

    settings: Any = Section()
    settings.networking = Section()
    settings.watching = Section()
    operator._bound_reconnects(settings)
    assert max(settings.networking.error_backoffs) <= 2.0
    assert settings.watching.reconnect_backoff <= 1.0
    assert settings.networking.connect_timeout <= 5.0
    assert settings.watching.connect_timeout <= 5.0
