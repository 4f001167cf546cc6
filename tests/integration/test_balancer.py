"""The round-robin balancer bench/ha.py puts in front of two replicas (tests/netproxy.py): it must
spread connections, skip a backend that is not ready and pass over one that refuses, or the
failed admissions it measures would be the balancer's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from netproxy import Backend, RoundRobinBalancer


async def named_backend(name: str) -> asyncio.Server:
    """Answers each connection with its name, then closes it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name.encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def who_answers(balancer: RoundRobinBalancer) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port)
    try:
        return (await asyncio.wait_for(reader.read(), 5)).decode()
    finally:
        writer.close()


class Readiness:
    """A /readyz that answers 200 or 503 as `ready` says."""

    def __init__(self) -> None:
        self.ready = True
        self.address = ""

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503)


@pytest.fixture
async def readiness() -> AsyncIterator[Readiness]:
    probe = Readiness()
    app = web.Application()
    app.router.add_get("/readyz", probe.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    probe.address = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield probe
    finally:
        await runner.cleanup()


async def test_connections_take_turns_skip_the_unready_and_pass_over_the_refusing(
    readiness: Readiness,
) -> None:
    a, b = await named_backend("a"), await named_backend("b")
    backends = [
        Backend("127.0.0.1", port_of(a), f"{readiness.address}/readyz"),
        Backend("127.0.0.1", port_of(b)),
    ]
    balancer = RoundRobinBalancer(backends, check_interval=0.05)
    async with balancer:
        assert sorted([await who_answers(balancer) for _ in range(4)]) == ["a", "a", "b", "b"]

        readiness.ready = False  # a's Pod is terminating: no new connections for it
        await asyncio.sleep(0.3)
        assert {await who_answers(balancer) for _ in range(4)} == {"b"}

        readiness.ready = True
        await asyncio.sleep(0.3)
        b.close()  # b is killed: nothing listens on its port, its check has not noticed
        await b.wait_closed()
        assert {await who_answers(balancer) for _ in range(4)} == {"a"}
        assert balancer.redispatched >= 2
    a.close()
    assert backends[0].connections + backends[1].connections == 12
