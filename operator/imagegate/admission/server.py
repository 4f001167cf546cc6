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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from imagegate.admission import connections
from imagegate.admission import review as admission
from imagegate.admission.deadlines import Deadlines
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


JSON = "application/json"

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


#: A body this large (or of no declared length) is a large review: its bytes, the JSON it
#: parses into (several times its size) and the review are held together.
LARGE_BODY = 256 * 1024
#: Large reviews handled at once per server; the rest wait, within their deadline. With the
#: connection limit this bounds what bodies in flight hold: 256 small ones under 256 KiB, plus
#: 4 of up to 3 MiB and their parsed JSON, well inside the chart's 512 Mi limit.
MAX_LARGE_IN_FLIGHT = 4


class LargeReviews:
    """The slots large reviews take (made on first use, on the serving event loop)."""

    def __init__(self, slots: int = MAX_LARGE_IN_FLIGHT) -> None:
        self.slots = slots
        self._semaphore: asyncio.Semaphore | None = None

    def semaphore(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        return self._semaphore


def _is_large(request: web.Request) -> bool:
    return request.content_length is None or request.content_length > LARGE_BODY


def _handler(
    name: str,
    reviewer: Reviewer,
    deadline: float,
    observe: AnswerObserver | None = None,
    large: LargeReviews | None = None,
    deadlines: Deadlines | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    large = large or LargeReviews()
    if deadlines is None:  # not `or`: Deadlines has a length, and an unused one is falsy
        deadlines = Deadlines()

    async def handle(request: web.Request) -> web.Response:
        if not _is_large(request):
            return await answer(request, time.monotonic())
        started = time.monotonic()
        try:
            # Waiting for a slot counts against the deadline, like reading the body does.
            async with asyncio.timeout(deadline):
                await large.semaphore().acquire()
        except TimeoutError:
            logger.warning("/%s: no room for a large AdmissionReview within %.1fs", name, deadline)
            busy = f"imagegate: {large.slots} large AdmissionReviews are already being handled"
            return web.json_response({"error": busy}, status=503)
        try:
            return await answer(request, started)
        finally:
            large.semaphore().release()

    async def answer(request: web.Request, started: float) -> web.Response:
        encoding = _compressed(request)
        if encoding is not None:
            logger.warning("/%s: refused a body with Content-Encoding %r", name, encoding)
            refused = f"imagegate: Content-Encoding {encoding!r} is not accepted (identity only)"
            # Closing the connection: reading the rest, even to discard it, would inflate it.
            unsupported = web.json_response({"error": refused}, status=415)
            unsupported.force_close()
            return unsupported
        # One deadline for reading, parsing and deciding: they share it (design.md §4.10).
        phase = "reading"
        try:
            with deadlines.within(started + deadline - time.monotonic(), request.task):
                # Reading to the end waits for the end: a body that stops coming must not hold
                # the handler for ever.
                body = await _read_body(request)
                phase = "parsing"
                try:
                    review = admission.parse_review(body)
                except admission.MalformedReviewError as error:
                    return _malformed(name, body, error)
                uid = review.request.uid
                phase = "deciding"
                response = await reviewer(review, started + deadline)
        except web.HTTPRequestEntityTooLarge:
            logger.warning("AdmissionReview on /%s larger than %d bytes", name, MAX_BODY)
            return web.json_response({"error": TOO_LARGE}, status=413)
        except TimeoutError:
            if phase != "deciding":  # parsing has no await: only the read can be cut off
                logger.warning(
                    "/%s: the AdmissionReview did not arrive within %.1fs", name, deadline
                )
                late = f"imagegate: the AdmissionReview did not arrive within {deadline:.0f}s"
                return web.json_response({"error": late}, status=408)
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
            if phase != "deciding":  # a connection lost while reading is aiohttp's to handle
                raise
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
        return web.Response(body=response.encode(review.api_version), content_type=JSON)

    return handle


def _malformed(name: str, body: bytes, error: admission.MalformedReviewError) -> web.Response:
    """A body that is not an AdmissionReview: a 400 denial addressed to its uid if it has one,
    else a plain 400 (the API server fails the request either way, never admits)."""
    uid = admission.review_uid(body)
    logger.warning("malformed AdmissionReview on /%s: %s", name, error.user_message)
    if uid is None:
        return web.json_response({"error": error.user_message}, status=400)
    denial = admission.deny(uid, f"imagegate: {error.user_message}", code=400)
    return web.json_response(denial.to_review())


async def _healthy(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(
    *,
    validate: Reviewer,
    mutate: Reviewer,
    validate_policy: Reviewer | None = None,
    deadline: float = DEFAULT_DEADLINE,
    observe: AnswerObserver | None = None,
    max_large_in_flight: int = MAX_LARGE_IN_FLIGHT,
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    large = LargeReviews(max_large_in_flight)
    deadlines = Deadlines()

    def add_post(path: str, name: str, reviewer: Reviewer) -> None:
        answer = _handler(name, reviewer, deadline, observe, large, deadlines)
        app.router.add_post(path, connections.tracked(app, answer))

    add_post("/validate", "validate", validate)
    add_post("/mutate", "mutate", mutate)
    if validate_policy is not None:
        add_post("/validate-policy", "validate-policy", validate_policy)
    app.router.add_get("/healthz", connections.tracked(app, _healthy))
    app.router.add_get("/readyz", connections.tracked(app, _healthy))
    return app


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
        bounds: connections.ConnectionBounds | None = None,
        shutdown_timeout: float = DEFAULT_DEADLINE + 1.0,
        reuse_port: bool = False,
    ) -> None:
        self.app = app
        #: `SO_REUSEPORT`: several worker processes serve one port (cluster/workers.py).
        self.reuse_port = reuse_port
        self.tls_files = tls_files
        self.host = host
        self.port = port
        #: Seconds between looks at the files: a rotated certificate is served within about this.
        self.reload_interval = reload_interval
        self.bounds = bounds or connections.ConnectionBounds()
        self._limit = connections.ConnectionLimit(self.bounds)
        app[connections.CONNECTION_LIMIT] = self._limit  # what build_app's handlers count with
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
        listener = socket.create_server((self.host, self.port), reuse_port=self.reuse_port)
        self.port = int(listener.getsockname()[1])
        self._site = connections.BoundedSite(
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
