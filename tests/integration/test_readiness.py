"""`/readyz` turns 200 only once kopf's watches run (design.md "Memory and start-up"), against
the real API server.

The operator runs in this process (kopf, health server, webhook server), with kopf's initial
listing slowed by a second, so the window between "start-up handler done" and "every watched
resource listed" is wide enough to see: readiness must not open inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import fetching

from imagegate.admission import server
from imagegate.cluster import kube, operator, tls
from imagegate.testbed import local, processes
from support import Cluster

LISTING_DELAY = 1.0
WATCHED = {"namespaces", "clusterimagepolicies", "imagepolicies"}


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0  # not listening yet


def certificate_files(directory: Path) -> server.TLSFiles:
    pair = tls.CertificateAuthority.create("readiness-ca").issue(
        "imagegate", ip_addresses=["127.0.0.1"]
    )
    files = server.TLSFiles(directory / "tls.crt", directory / "tls.key")
    files.cert.write_bytes(pair.cert_pem)
    files.key.write_bytes(pair.key_pem)
    return files


def test_readyz_waits_until_every_watched_resource_is_listed(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.install_crds(kube.api_client(cluster.kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))  # kopf's kubeconfig login
    listed: set[str] = set()
    original = fetching.fetch_objs

    async def slow_listing(*, resource: Any, **kwargs: Any) -> AsyncIterator[Any]:
        await asyncio.sleep(LISTING_DELAY)
        async for chunk in original(resource=resource, **kwargs):
            yield chunk
        listed.add(resource.plural)

    monkeypatch.setattr(fetching, "fetch_objs", slow_listing)
    health_port = processes.free_port()
    config = operator.OperatorConfig(
        kubeconfig=cluster.kubeconfig,
        tls=certificate_files(tmp_path),
        host="127.0.0.1",
        port=0,
        health_port=health_port,
        events=False,
        drain_delay=0.0,
    )

    async def scenario() -> set[str]:
        stop = asyncio.Event()
        running = asyncio.create_task(
            kopf.operator(
                registry=operator.build_registry(config),
                standalone=True,
                clusterwide=True,
                stop_flag=stop,
            )
        )
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while await asyncio.to_thread(readyz, health_port) != 200:
                assert not running.done(), "the operator stopped before it was ready"
                assert asyncio.get_running_loop().time() < deadline, "never ready"
                await asyncio.sleep(0.02)
            return set(listed)  # what had been listed when /readyz first said 200
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(running, 30)

    listed_when_ready = asyncio.run(scenario())
    assert listed_when_ready >= WATCHED
