"""The HTTPS server the API server calls: `/validate`, `/mutate`, `/validate-policy` (imagegate's
own policy resources), and health endpoints.

This layer owns the guarantees that do not depend on policy: every request gets an answer before
the deadline, and every failure (a malformed body, a handler that raises, a handler that is too
slow) is a denial, never an admit. What to decide is the job of the `Reviewer` it is given.

Why not kopf's own admission server: it cannot set `auditAnnotations`, fixes the webhook timeout at
30 s and manages webhook configurations itself, which the chart must own (docs/design.md §5). The
server runs inside the kopf operator's event loop all the same (see operator.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from imagegate.admission import review as admission
from imagegate.core import workloads

logger = logging.getLogger(__name__)

#: Below the chart's default webhook timeout (10 s), leaving room for the network and TLS.
DEFAULT_DEADLINE = 8.0


class Reviewer(Protocol):
    """Decides one admission request. Raising, or overrunning the deadline, means denial."""

    async def __call__(
        self, review: admission.AdmissionReview, deadline: float
    ) -> admission.AdmissionResponse: ...


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context

    def signature(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when either file is rewritten (replaced files get a new inode)."""
        found = (self.cert.stat(), self.key.stat())
        return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in found)


#: Told of every answer the webhooks give: (webhook name, response). Must not block.
AnswerObserver = Callable[[str, admission.AdmissionResponse], None]


def outcome(response: admission.AdmissionResponse) -> str:
    """A low-cardinality label for a response (metrics)."""
    if response.allowed:
        return "patched" if response.patch else "allowed"
    return {400: "malformed", 500: "error", 504: "timeout"}.get(response.code, "denied")


#: The body bound: aiohttp's `client_max_size` on the app, and the declared length checked first.
MAX_BODY = admission.MAX_REVIEW_BYTES
TOO_LARGE = f"imagegate: the AdmissionReview is larger than {MAX_BODY} bytes"


#: The API server never compresses webhook requests; a compressed body would be inflated past
#: `MAX_BODY` before any bound applies (2 MB of gzip is 2 GiB), so only identity is accepted.
IDENTITY_ENCODINGS = frozenset({"", "identity"})


def _compressed(request: web.Request) -> str | None:
    """The request's Content-Encoding when it is not identity, else None."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    return None if encoding in IDENTITY_ENCODINGS else encoding


async def _read_body(request: web.Request) -> bytes:
    """The whole body, or `HTTPRequestEntityTooLarge` past `MAX_BODY`.

    Not `request.content.read(n)`: that returns what has arrived so far (one TCP segment, one
    TLS record), not n bytes, so a body that arrives in pieces would be cut short.
    `request.read()` reads to the end and stops once past the app's `client_max_size`.
    """
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)  # answer at once
    return await request.read()


def _handler(
    name: str, reviewer: Reviewer, deadline: float, observe: AnswerObserver | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        started = time.monotonic()
        encoding = _compressed(request)
        if encoding is not None:
            logger.warning("/%s: refused a body with Content-Encoding %r", name, encoding)
            refused = f"imagegate: Content-Encoding {encoding!r} is not accepted (identity only)"
            # Closing the connection: reading the rest, even to discard it, would inflate it.
            unsupported = web.json_response({"error": refused}, status=415)
            unsupported.force_close()
            return unsupported
        try:
            # Reading to the end now waits for the end: a body that stops coming must not hold
            # the handler for ever.
            async with asyncio.timeout(deadline):
                body = await _read_body(request)
        except web.HTTPRequestEntityTooLarge:
            logger.warning("AdmissionReview on /%s larger than %d bytes", name, MAX_BODY)
            return web.json_response({"error": TOO_LARGE}, status=413)
        except TimeoutError:
            logger.warning("/%s: the AdmissionReview did not arrive within %.1fs", name, deadline)
            late = f"imagegate: the AdmissionReview did not arrive within {deadline:.0f}s"
            return web.json_response({"error": late}, status=408)
        try:
            review = admission.parse_review(body)
        except admission.MalformedReviewError as error:
            uid = admission.review_uid(body)
            logger.warning("malformed AdmissionReview on /%s: %s", name, error.user_message)
            if uid is None:
                return web.json_response({"error": error.user_message}, status=400)
            denial = admission.deny(uid, f"imagegate: {error.user_message}", code=400)
            return web.json_response(denial.to_review())
        uid = review.request.uid
        try:
            # What reading the body left of the deadline: the answer still comes within it.
            async with asyncio.timeout(started + deadline - time.monotonic()):
                response = await reviewer(review, started + deadline)
        except TimeoutError:
            logger.error("/%s %s: no decision within %.1fs", name, uid, deadline)
            response = admission.deny(
                uid, f"imagegate: verification timed out after {deadline:.0f}s", code=504
            )
        except workloads.MalformedWorkloadError as error:
            # Reviewers deny what they cannot read; one that reads further (metadata for the
            # log, annotations for the patch) may find it there: still a denial naming it.
            logger.warning("/%s %s: malformed object: %s", name, uid, error.user_message)
            response = admission.deny(uid, f"imagegate: {error.user_message}", code=400)
        except Exception:
            logger.exception("/%s %s: reviewer failed", name, uid)
            response = admission.deny(
                uid, "imagegate: internal error; see the operator log", code=500
            )
        if response.uid != uid:  # a reviewer bug must never answer for another request
            logger.error("/%s: reviewer answered uid %s for %s", name, response.uid, uid)
            response = admission.deny(
                uid, "imagegate: internal error; see the operator log", code=500
            )
        if observe is not None:
            try:
                observe(name, response)
            except Exception:
                logger.exception("answer observer failed")
        return web.json_response(response.to_review(review.api_version))

    return handle


async def _healthy(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(
    *,
    validate: Reviewer,
    mutate: Reviewer,
    validate_policy: Reviewer | None = None,
    deadline: float = DEFAULT_DEADLINE,
    observe: AnswerObserver | None = None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/validate", _handler("validate", validate, deadline, observe))
    app.router.add_post("/mutate", _handler("mutate", mutate, deadline, observe))
    if validate_policy is not None:
        app.router.add_post(
            "/validate-policy", _handler("validate-policy", validate_policy, deadline, observe)
        )
    app.router.add_get("/healthz", _healthy)
    app.router.add_get("/readyz", _healthy)
    return app


class HealthServer:
    """Plain HTTP for the kubelet's probes and Prometheus, on its own thread.

    Not on the event loop: under 500 admission connections a probe there waited 0.46 s (p50) and
    1 in 21 passed the kubelet's 1 s timeout. Here it reads only thread-safe state: `ready()` (a
    flag read), `unhealthy` (a reason, set by start-up: `/healthz` fails, so the kubelet restarts
    a process that cannot get going) and `metrics()` (prometheus_client locks its own values).
    """

    def __init__(
        self,
        *,
        ready: Callable[[], bool],
        metrics: Callable[[], bytes],
        metrics_type: str,
        host: str,
        port: int,
    ) -> None:
        self.unhealthy: str | None = None
        self.host = host
        self.port = port
        self._ready = ready
        self._metrics = metrics
        self._metrics_type = metrics_type
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of `path` (no admission data here)."""
        if path == "/healthz":
            if self.unhealthy is not None:
                return 503, "text/plain", self.unhealthy.encode()
            return 200, "text/plain", b"ok"
        if path == "/readyz":
            if self._ready():
                return 200, "text/plain", b"ok"
            return 503, "text/plain", b"policies not loaded, webhook not serving, or draining"
        if path == "/metrics":
            return 200, self._metrics_type, self._metrics()
        return 404, "text/plain", b"not found"

    async def start(self) -> None:
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    status, kind, body = health.answer(self.path.split("?", 1)[0])
                except Exception:
                    logger.exception("health endpoint %s failed", self.path)
                    status, kind, body = 500, "text/plain", b"internal error"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # probes every few seconds: no access log

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._httpd = Server((self.host, self.port), Handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="imagegate health", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        if self._httpd is None:
            return
        httpd, self._httpd = self._httpd, None
        await asyncio.to_thread(httpd.shutdown)
        httpd.server_close()


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


class _ConnectionLimit:
    """Counts established connections and makes room by closing the oldest idle one.

    Busy means "inside a webhook handler" (the `middleware` marks it): a connection still
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

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
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


class _CountedProtocol(asyncio.Protocol):
    """aiohttp's per-connection protocol, told to `_ConnectionLimit` when it opens and closes.

    Wrapped rather than subclassed: aiohttp makes its handlers itself (`web.Server.__call__`).
    Only established (handshaken) connections count; handshakes are bounded by time instead.
    """

    def __init__(self, inner: RequestHandler, limit: _ConnectionLimit) -> None:
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


class _BoundedSite(web.SockSite):
    """`SockSite` with a handshake timeout and connections counted by `_ConnectionLimit`."""

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext,
        bounds: ConnectionBounds,
        limit: _ConnectionLimit,
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
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _CountedProtocol(server(), limit),
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._bounds.handshake_timeout,
        )


class WebhookServer:
    """Serves an app over TLS within `ConnectionBounds`, picks up renewed certificates without a
    restart, and drains on shutdown."""

    def __init__(
        self,
        app: web.Application,
        tls_files: TLSFiles,
        *,
        host: str = "0.0.0.0",  # nosec B104
        port: int = 8443,
        reload_interval: float = 1.0,
        bounds: ConnectionBounds | None = None,
        shutdown_timeout: float = DEFAULT_DEADLINE + 1.0,
    ) -> None:
        self.app = app
        self.tls_files = tls_files
        self.host = host
        self.port = port
        #: Seconds between looks at the files: a rotated certificate is served within about this.
        self.reload_interval = reload_interval
        self.bounds = bounds or ConnectionBounds()
        self._limit = _ConnectionLimit(self.bounds)
        app.middlewares.append(self._limit.middleware)
        # On stop, requests in flight get this long to finish (then they are cancelled).
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=shutdown_timeout, **self.bounds.handler_args()
        )
        self._site: web.SockSite | None = None
        self._context: ssl.SSLContext | None = None
        self._loaded: tuple[tuple[int, int, int], ...] | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def connections(self) -> int:
        """Established connections now (metrics, tests)."""
        return len(self._limit)

    @property
    def accepted(self) -> int:
        """Connections established since start (tests)."""
        return self._limit.accepted

    async def start(self) -> None:
        await self._runner.setup()
        self._loaded = self.tls_files.signature()
        self._context = self.tls_files.context()
        # Bind the socket ourselves, so that port 0 (tests) tells us which port it got.
        listener = socket.create_server((self.host, self.port), reuse_port=False)
        self.port = int(listener.getsockname()[1])
        self._site = _BoundedSite(
            self._runner, listener, ssl_context=self._context, bounds=self.bounds, limit=self._limit
        )
        await self._site.start()
        self._watcher = asyncio.create_task(self._watch_certificates())

    def drain(self) -> None:
        """From now on every response closes its connection (clients reconnect elsewhere)."""
        self._limit.draining = True

    async def stop(self) -> None:
        """Stop accepting, close idle connections, let requests in flight finish, then close."""
        self.drain()
        if self._watcher is not None:
            self._watcher.cancel()
        await self._runner.cleanup()

    def reload_certificates(self) -> bool:
        """Load the files again if they changed since last loaded; whether the chain changed.

        New handshakes use the new chain; open connections keep theirs.
        """
        if self._context is None:
            return False
        try:
            now = self.tls_files.signature()
            if now == self._loaded:
                return False
            # A key that does not match its certificate (read between the two writes) fails here
            # and leaves the live chain as it was (tested): the next look loads the whole pair.
            self._context.load_cert_chain(self.tls_files.cert, self.tls_files.key)
        except (OSError, ssl.SSLError) as error:
            logger.warning(
                "cannot reload the serving certificate yet (keeping the old one): %s", error
            )
            return False
        self._loaded = now
        logger.info("reloaded the serving certificate from %s", self.tls_files.cert)
        return True

    async def _watch_certificates(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            self.reload_certificates()
