"""What one client connection may cost the webhook server: the bounds, and the aiohttp site and
protocol wrapper that enforce them (a connection limit with idle eviction, keep-alive by count
and age, first-request and handshake timeouts). Used by server.py's `WebhookServer`."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from asyncio import sslproto
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ConnectionBounds:
    """What one client connection may cost the webhook server (memory and time).

    An idle TLS connection holds ~280 KB; without bounds 2,000 of them took the pod from 62 to
    611 MiB. The defaults fit the chart's 512 MiB limit with room for bodies in flight.
    """

    #: Established TLS connections at once. Past it the oldest idle one is closed to make room
    #: (the API server's fresh request always gets in); when every one is busy, the new one is.
    max_connections: int = 256
    #: Idle time before a connection is closed. Above the API server's 90 s idle timeout, so it
    #: is the API server that closes first and never sends on a connection being closed here.
    keepalive_timeout: float = 100.0
    #: From the handshake to the start of the first request's handler (headers in): slowloris.
    first_request_timeout: float = 10.0
    #: A TLS handshake that has not finished by then is dropped (asyncio's default is 60 s).
    handshake_timeout: float = 10.0
    #: Request line and each header (aiohttp's parser; the API server sends a few hundred bytes).
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64
    backlog: int = 128
    #: Requests on one connection, and its age in seconds, past which the response that crosses
    #: the bound says `Connection: close`. The API server keeps its connections for ever and a
    #: Service balances connections, not requests: without this, one replica took all the load.
    max_requests_per_connection: int = 1000
    max_connection_age: float = 60.0
    #: Bytes each TLS connection reads into at once. asyncio gives every one a 256 KiB buffer,
    #: written through (so resident) even for an idle connection: 2,000 handshakes at once took
    #: 100 MiB that glibc never gave back. A TLS record holds at most 16 KiB of plaintext.
    tls_read_buffer: int = 32 * 1024

    def handler_args(self) -> dict[str, Any]:
        """aiohttp's `RequestHandler` settings (`AppRunner` hands its extra keywords to it)."""
        return {
            "keepalive_timeout": self.keepalive_timeout,
            "max_line_size": self.max_line_size,
            "max_field_size": self.max_field_size,
            "max_headers": self.max_headers,
            # Never inflate: compressed bodies are refused (415) before they are read.
            "auto_decompress": False,
        }


class ConnectionLimit:
    """Counts established connections and makes room by closing the oldest idle one.

    Busy means "inside a webhook handler" (`serve` marks it): a connection still
    sending its headers, or idle between requests, is fair game.
    """

    def __init__(self, bounds: ConnectionBounds) -> None:
        self._bounds = bounds
        #: Open connections, oldest first (dicts keep insertion order), with when they opened.
        self._open: dict[RequestHandler, float] = {}
        self._busy: set[RequestHandler] = set()
        self._served: set[RequestHandler] = set()
        #: Requests begun per open connection (for `max_requests_per_connection`).
        self._requests: dict[RequestHandler, int] = {}
        self._closed_at_limit = 0
        #: Connections opened so far (tests, metrics).
        self.accepted = 0
        #: Set on shutdown: every response closes its connection, so clients move elsewhere.
        self.draining = False

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, handler: RequestHandler) -> None:
        self._open[handler] = time.monotonic()
        self.accepted += 1
        loop = asyncio.get_running_loop()
        loop.call_later(self._bounds.first_request_timeout, self._unless_served, handler)
        if len(self._open) <= self._bounds.max_connections:
            return
        idle = next((h for h in self._open if h not in self._busy and h is not handler), None)
        victim = idle if idle is not None else handler
        self._closed_at_limit += 1
        if self._closed_at_limit % 100 == 1:  # under a flood, one line per hundred
            logger.warning(
                "more than %d connections: closed %s one (%d closed at the limit so far)",
                self._bounds.max_connections,
                "the oldest idle" if idle is not None else "the new",
                self._closed_at_limit,
            )
        self._forget(victim)
        victim.force_close()

    def closed(self, handler: RequestHandler) -> None:
        self._forget(handler)

    def _forget(self, handler: RequestHandler) -> None:
        self._open.pop(handler, None)
        self._requests.pop(handler, None)
        self._busy.discard(handler)
        self._served.discard(handler)

    def _past_bounds(self, handler: RequestHandler) -> bool:
        """Whether this connection's response should be its last (request count, age, drain)."""
        if self.draining:
            return True
        if self._requests.get(handler, 0) >= self._bounds.max_requests_per_connection:
            return True
        opened = self._open.get(handler)
        return opened is not None and time.monotonic() - opened >= self._bounds.max_connection_age

    def _unless_served(self, handler: RequestHandler) -> None:
        if handler in self._open and handler not in self._served:
            logger.warning(
                "closing a connection without a request after %.0fs",
                self._bounds.first_request_timeout,
            )
            self._forget(handler)
            handler.force_close()

    async def serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer `request` with `handler`, its connection marked busy meanwhile, and closed after
        the response that crosses a bound."""
        protocol = request.protocol
        self._served.add(protocol)
        self._busy.add(protocol)
        if protocol in self._open:
            self._requests[protocol] = self._requests.get(protocol, 0) + 1
        try:
            response = await handler(request)
        finally:
            self._busy.discard(protocol)
        if self._past_bounds(protocol):
            response.force_close()  # HTTP/1.1: `Connection: close`, then aiohttp closes it
        return response


#: Where the server serving an app puts its `ConnectionLimit` (tracked handlers look there).
CONNECTION_LIMIT = web.AppKey("imagegate.connection_limit", ConnectionLimit)


def tracked(app: web.Application, handler: Handler) -> Handler:
    """`handler`, counted by the `ConnectionLimit` of the server that serves `app` (none: as is).

    Not an aiohttp middleware: with any middleware aiohttp runs a chain of wrappers per request,
    which cost about a tenth of a warm admission (design.md §4.10).
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        limit = app.get(CONNECTION_LIMIT)
        if limit is None:
            return await handler(request)
        return await limit.serve(request, handler)

    return handle


class CountedProtocol(asyncio.Protocol):
    """aiohttp's per-connection protocol, told to `ConnectionLimit` when it opens and closes.

    Wrapped rather than subclassed: aiohttp makes its handlers itself (`web.Server.__call__`).
    Only established (handshaken) connections count; handshakes are bounded by time instead.
    """

    def __init__(self, inner: RequestHandler, limit: ConnectionLimit) -> None:
        self._inner = inner
        self._limit = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)
        self._limit.opened(self._inner)

    def connection_lost(self, exc: Exception | None) -> None:
        self._limit.closed(self._inner)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class BoundedSite(web.SockSite):
    """`SockSite` with a handshake timeout and connections counted by `ConnectionLimit`."""

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext,
        bounds: ConnectionBounds,
        limit: ConnectionLimit,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=bounds.backlog)
        self._bounds = bounds
        self._limit = limit

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner (not SockSite's)
        server = self._runner.server
        if server is None:  # BaseSite.start has set it up; say so if that ever changes
            raise RuntimeError("the app runner has no server: call setup() first")
        limit = self._limit
        bound_tls_read_buffer(self._bounds.tls_read_buffer)
        self._server = await asyncio.get_running_loop().create_server(
            lambda: CountedProtocol(server(), limit),
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._bounds.handshake_timeout,
        )


def bound_tls_read_buffer(size: int) -> None:
    """Make asyncio's TLS connections read into `size` bytes, not 256 KiB, from now on.

    A class attribute of the standard library's, so it holds for the process (the registry
    client's TLS too, where it only means more, smaller reads): there is no per-server knob.
    """
    sslproto.SSLProtocol.max_size = size
