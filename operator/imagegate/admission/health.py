"""`/healthz`, `/readyz` and `/metrics` on plain HTTP, on a thread of their own, so admission
load on the event loop never starves the kubelet's probes."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)


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
