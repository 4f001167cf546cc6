"""A TCP proxy on 127.0.0.1 that delivers bytes the way a real network does: in pieces.

Loopback hands a peer whole writes at once, so code that reads "what has arrived" passes there and
fails across a network. This proxy sits between a client and an upstream host:port and re-sends
each direction in small writes (`Shaping.chunk`), with pauses between them, a delay before the
first byte, a stall once some bytes have passed, or a reset (RST, SO_LINGER 0) after N bytes.
It is plain TCP, so it works for TLS as well: TLS records are split across segments too.

Use it as `async with TcpProxy(host, port, down=Shaping(chunk=7)) as proxy:` (asyncio tests), or
`with ThreadedProxy(...) as proxy:` (synchronous tests: it runs its own loop in a thread).
`stop()` aborts every connection it holds, so nothing outlives the test.

`RoundRobinBalancer` (`ThreadedBalancer` in a thread) is the same relay in front of several
backends, taken in turn per connection, as a Service balances connections (bench/ha.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

#: The most read from one side at a time before it is re-sent in chunks.
_READ = 64 * 1024


@dataclass
class Shaping:
    """How one direction of each connection is re-sent. Mutable: tests change it between requests.

    `chunk` is the size of each write, or a (low, high) range to draw from; `pause` the seconds
    between writes; `first_byte_delay` the seconds before a connection's first byte goes on;
    `stall_after`/`stall_for`: after that many bytes, forward nothing for that many seconds (once
    per connection); `reset_after`: after that many bytes, reset both sides of the connection.
    """

    chunk: int | tuple[int, int] = 1400
    pause: float = 0.0
    first_byte_delay: float = 0.0
    stall_after: int | None = None
    stall_for: float = 0.0
    reset_after: int | None = None

    def next_chunk(self, rng: random.Random) -> int:
        if isinstance(self.chunk, tuple):
            return rng.randint(*self.chunk)
        return self.chunk


def _linger_zero(writer: asyncio.StreamWriter) -> None:
    """Make close() send RST, as a peer that crashes or a middlebox that gives up does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing left to reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Reset(Exception):
    """A direction reached its `reset_after`."""


class TcpProxy:
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        up: Shaping | None = None,
        down: Shaping | None = None,
        seed: int = 0,
    ) -> None:
        """`up` shapes client → upstream bytes, `down` upstream → client bytes."""
        self.upstream = (upstream_host, upstream_port)
        self.up = up or Shaping()
        self.down = down or Shaping()
        self.port = 0
        self.connections = 0
        self.resets = 0
        #: Writes made so far (both directions): proof that bodies really went in pieces.
        self.writes = 0
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._open: set[int] = set()
        self._doomed: set[int] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def doom_open_connections(self) -> None:
        """Reset each open connection the next time its client sends on it.

        What a client sees when it reuses a keep-alive connection the server (or a middlebox)
        closed while it sat idle in the pool: the request goes out, and a reset comes back.
        Connections opened afterwards are not touched.
        """
        self._doomed |= self._open

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def refuse(self) -> None:
        """An outage: close the listening socket (connections are refused) and abort open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            _linger_zero(writer)
            writer.transport.abort()

    async def resume(self) -> None:
        """The end of an outage: listen again, on the same port."""
        if self._server is None:
            await self.start()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        number = self.connections
        self._open.add(number)
        self._writers.add(client_w)
        try:
            try:
                upstream_r, upstream_w = await self._connect_upstream()
            except OSError:
                client_w.transport.abort()
                return
            if self._server is None:
                # Accepted just before refuse() and not yet among the writers it aborted: an
                # outage lets nothing through, however the accept and the refusal interleave.
                _linger_zero(client_w)
                upstream_w.transport.abort()
                return
            self._writers.add(upstream_w)
            for writer in (client_w, upstream_w):
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one write, one segment
            await self._relay(number, client_r, client_w, upstream_r, upstream_w)
        except (OSError, asyncio.CancelledError):
            pass  # a peer went away, or stop(): the connection is over either way
        finally:
            self._open.discard(number)
            self._tasks.discard(task)
            self._writers.discard(client_w)
            client_w.transport.abort()

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.upstream)

    async def _relay(
        self,
        number: int,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> None:
        pumps = [
            asyncio.create_task(self._pump(client_r, upstream_w, lambda: self.up, number)),
            asyncio.create_task(self._pump(upstream_r, client_w, lambda: self.down)),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            if any(task.exception() is not None for task in done):
                self.resets += any(isinstance(task.exception(), _Reset) for task in done)
                for writer in (client_w, upstream_w):
                    _linger_zero(writer)
                    writer.transport.abort()
            else:
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._writers.discard(upstream_w)
            upstream_w.transport.abort()

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        shaping: Callable[[], Shaping],
        doomed_as: int | None = None,
    ) -> None:
        """`doomed_as`: the connection number, where it may be doomed (client → upstream)."""
        sent, first, stalled = 0, True, False
        while True:
            data = await source.read(_READ)
            if not data:
                if sink.can_write_eof():
                    sink.write_eof()  # a half-close goes on as a half-close
                return
            if doomed_as in self._doomed:
                raise _Reset()
            shape = shaping()
            if first and shape.first_byte_delay:
                await asyncio.sleep(shape.first_byte_delay)
            first = False
            while data:
                size = shape.next_chunk(self._rng)
                if shape.reset_after is not None:
                    size = min(size, shape.reset_after - sent)
                    if size <= 0:
                        raise _Reset()
                if shape.stall_after is not None and not stalled and sent >= shape.stall_after:
                    stalled = True
                    await asyncio.sleep(shape.stall_for)
                piece, data = data[:size], data[size:]
                sink.write(piece)
                await sink.drain()
                sent += len(piece)
                self.writes += 1
                if shape.pause and data:
                    await asyncio.sleep(shape.pause)


@dataclass
class Backend:
    """One address behind a `RoundRobinBalancer`, and what the balancer saw of it."""

    host: str
    port: int
    #: Plain-HTTP URL path host:port/path whose 200 means "send me connections" (a readiness
    #: probe, e.g. "127.0.0.1:8081/readyz"); None: always ready.
    readiness: str | None = None
    ready: bool = True
    connections: int = 0


class RoundRobinBalancer(TcpProxy):
    """Each new connection goes to the next ready backend, in turn, as a Service does (it balances
    connections, not requests). A backend leaves the rotation when its readiness check fails
    (every `check_interval` seconds, one failure is enough: as endpoints drop a terminating Pod)
    and comes back when it passes; a refused connect goes on to the next backend (haproxy's
    `option redispatch`), counted in `redispatched`."""

    def __init__(self, backends: Sequence[Backend], *, check_interval: float = 0.5) -> None:
        super().__init__(backends[0].host, backends[0].port)
        self.backends = list(backends)
        self.check_interval = check_interval
        self.redispatched = 0
        self._turn = 0
        self._checker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        if self._checker is None:
            self._checker = asyncio.create_task(self._check_forever())

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            await asyncio.gather(self._checker, return_exceptions=True)
        await super().stop()

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ready = [backend for backend in self.backends if backend.ready] or self.backends
        self._turn += 1
        for attempt in range(len(ready)):
            backend = ready[(self._turn + attempt) % len(ready)]
            try:
                connected = await asyncio.open_connection(backend.host, backend.port)
            except OSError:
                self.redispatched += 1
                continue
            backend.connections += 1
            return connected
        raise ConnectionRefusedError("no backend accepted the connection")

    async def _check_forever(self) -> None:
        while True:
            for backend in self.backends:
                if backend.readiness is not None:
                    backend.ready = await _answers_200(backend.readiness)
            await asyncio.sleep(self.check_interval)


async def _answers_200(url: str, timeout: float = 1.0) -> bool:
    """Whether GET http://`url` ("host:port/path") answers 200 within `timeout` seconds."""
    address, _, path = url.partition("/")
    host, port = address.rsplit(":", 1)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(
            f"GET /{path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode()
        )
        status = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.transport.abort()
    return status.split(b" ")[1:2] == [b"200"]


class ThreadedProxy:
    """A `TcpProxy` on its own event loop in a thread, for synchronous tests (e2e)."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        up: Shaping | None = None,
        down: Shaping | None = None,
    ) -> None:
        self._run(TcpProxy(upstream_host, upstream_port, up=up, down=down))

    def _run(self, proxy: TcpProxy) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.proxy = proxy

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def address(self) -> str:
        return self.proxy.address

    def refuse(self) -> None:
        """See `TcpProxy.refuse`."""
        asyncio.run_coroutine_threadsafe(self.proxy.refuse(), self._loop).result(timeout=10)

    def resume(self) -> None:
        """See `TcpProxy.resume`."""
        asyncio.run_coroutine_threadsafe(self.proxy.resume(), self._loop).result(timeout=10)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(timeout=10)
        return self.proxy

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


class ThreadedBalancer(ThreadedProxy):
    """A `RoundRobinBalancer` on its own event loop in a thread."""

    def __init__(self, backends: Sequence[Backend], *, check_interval: float = 0.5) -> None:
        self.balancer = RoundRobinBalancer(backends, check_interval=check_interval)
        self._run(self.balancer)

    def __enter__(self) -> RoundRobinBalancer:
        super().__enter__()
        return self.balancer
