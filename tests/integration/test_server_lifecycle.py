"""The webhook server's connections over their life, and probes that do not share its event loop
(imagegate issue #11, items 7 and 8): real HTTPS and HTTP on loopback, no cluster."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imagegate.admission import builder
from imagegate.admission import review as admission
from imagegate.admission.connections import ConnectionBounds
from imagegate.admission.health import HealthServer
from imagegate.admission.server import TLSFiles, WebhookServer, build_app
from imagegate.cluster import tls
from netproxy import TcpProxy


def _review(uid: str) -> dict[str, Any]:
    return builder.review_for(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, uid=uid
    )


async def allow(review: admission.AdmissionReview, deadline: float) -> admission.AdmissionResponse:
    return admission.AdmissionResponse(uid=review.request.uid, allowed=True)


class Bounded:
    """A webhook server with the given bounds, reached through a counting TCP proxy."""

    def __init__(self, server: WebhookServer, proxy: TcpProxy, context: ssl.SSLContext) -> None:
        self.server, self.proxy, self.context = server, proxy, context

    async def post_many(self, count: int, pause: float = 0.0) -> list[tuple[int, str]]:
        """`count` reviews over one client session that keeps one connection alive at most."""
        answers: list[tuple[int, str]] = []
        connector = aiohttp.TCPConnector(limit=1, ssl=self.context)
        async with aiohttp.ClientSession(connector=connector) as session:
            for number in range(count):
                async with session.post(
                    f"https://{self.proxy.address}/validate",
                    data=json.dumps(_review(f"u-{number}")).encode(),
                    headers={"Content-Type": "application/json"},
                ) as reply:
                    body = await reply.json()
                    answers.append((reply.status, body["response"]["uid"]))
                if pause:
                    await asyncio.sleep(pause)
        return answers


async def _bounded(tmp_path: Path, bounds: ConnectionBounds) -> AsyncIterator[Bounded]:
    ca = tls.CertificateAuthority.create("lifecycle-ca")
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    files = TLSFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    files.cert.write_bytes(pair.cert_pem)
    files.key.write_bytes(pair.key_pem)
    server = WebhookServer(
        build_app(validate=allow, mutate=allow), files, host="127.0.0.1", port=0, bounds=bounds
    )
    await server.start()
    try:
        async with TcpProxy("127.0.0.1", server.port) as proxy:
            yield Bounded(server, proxy, ssl.create_default_context(cadata=ca.cert_pem.decode()))
    finally:
        await server.stop()


@pytest.fixture
async def ten_per_connection(tmp_path: Path) -> AsyncIterator[Bounded]:
    async for bounded in _bounded(tmp_path, ConnectionBounds(max_requests_per_connection=10)):
        yield bounded


@pytest.fixture
async def young_connections(tmp_path: Path) -> AsyncIterator[Bounded]:
    async for bounded in _bounded(tmp_path, ConnectionBounds(max_connection_age=0.5)):
        yield bounded


# -- 7: keep-alive connections are bounded, so load spreads over replicas --------------------------


async def test_a_keep_alive_connection_is_closed_after_the_request_bound(
    ten_per_connection: Bounded,
) -> None:
    answers = await ten_per_connection.post_many(35)
    assert answers == [(200, f"u-{number}") for number in range(35)]
    # 10 + 10 + 10 + 5: the 10th response on each connection said `Connection: close`.
    assert ten_per_connection.proxy.connections == 4
    assert ten_per_connection.server.accepted == 4


async def test_a_keep_alive_connection_is_closed_once_past_its_age(
    young_connections: Bounded,
) -> None:
    # Each pause outlasts the 0.5 s age: every connection carries two requests at most.
    answers = await young_connections.post_many(4, pause=0.6)
    assert answers == [(200, f"u-{number}") for number in range(4)]
    assert young_connections.proxy.connections >= 2


# -- 8: probes answer while the event loop is blocked ----------------------------------------------


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


def _in_thread(work: Callable[[], list[int]]) -> tuple[threading.Thread, list[list[int]]]:
    found: list[list[int]] = []
    thread = threading.Thread(target=lambda: found.append(work()), daemon=True)
    thread.start()
    return thread, found


async def test_probes_answer_while_the_event_loop_is_blocked() -> None:
    ready = threading.Event()
    ready.set()
    health = HealthServer(
        ready=ready.is_set,
        metrics=lambda: b"imagegate_up 1\n",
        metrics_type="text/plain",
        host="127.0.0.1",
        port=0,
    )
    await health.start()
    base = f"http://127.0.0.1:{health.port}"
    try:

        def probe() -> list[int]:
            time.sleep(0.3)  # the loop is blocked by then
            return [_status(base + "/healthz"), _status(base + "/readyz")]

        thread, found = _in_thread(probe)
        time.sleep(4)  # a reviewer that blocks the loop (on purpose: the fault under test)
        thread.join(timeout=10)
        assert found == [[200, 200]]

        ready.clear()  # draining, or not started yet: ready turns false from any thread
        health.unhealthy = "start-up failed 12 times in a row"
        thread, found = _in_thread(probe)
        time.sleep(4)
        thread.join(timeout=10)
        assert found == [[503, 503]]
    finally:
        await health.stop()


# -- 3: a rewritten certificate is served at once, and a half-written pair never -----------------


def _served_certificate(port: int, ca_pem: bytes) -> bytes | None:
    """The DER certificate a handshake trusting only `ca_pem` got, or None when it failed."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket,
        ):
            return tls_socket.getpeercert(binary_form=True)
    except ssl.SSLError:
        return None


async def test_reload_serves_a_rewritten_pair_and_never_a_half_written_one(
    tmp_path: Path,
) -> None:
    old_ca, new_ca = (tls.CertificateAuthority.create(name) for name in ("old-ca", "new-ca"))
    files = TLSFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    old = old_ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    files.cert.write_bytes(old.cert_pem)
    files.key.write_bytes(old.key_pem)
    # A reload interval far beyond the test: only `reload_certificates()` can change anything.
    server = WebhookServer(
        build_app(validate=allow, mutate=allow),
        files,
        host="127.0.0.1",
        port=0,
        reload_interval=3600,
    )
    await server.start()
    try:
        new = new_ca.issue("imagegate", ip_addresses=["127.0.0.1"])
        files.key.write_bytes(new.key_pem)  # the key is written first: the pair does not match
        assert server.reload_certificates() is False
        served = await asyncio.to_thread(_served_certificate, server.port, old_ca.cert_pem)
        assert served is not None  # still the old chain, whole
        files.cert.write_bytes(new.cert_pem)
        assert server.reload_certificates() is True
        served = await asyncio.to_thread(_served_certificate, server.port, new_ca.cert_pem)
        assert served is not None
        assert server.reload_certificates() is False  # nothing changed since
    finally:
        await server.stop()
