"""What one TLS connection holds in the webhook server, over real HTTPS on loopback.

asyncio gives each TLS connection a 256 KiB read buffer, written through and so resident even
while the connection is idle; the server bounds it (`ConnectionBounds.tls_read_buffer`). Memory
itself is measured by bench/memory.py; this checks the buffer each connection is given, and
that a review far larger than the buffer still arrives whole.
"""

from __future__ import annotations

import asyncio
import io
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from imagegate.admission import builder, reviewers
from imagegate.admission.connections import ConnectionBounds
from imagegate.admission.server import TLSFiles, WebhookServer, build_app
from imagegate.cluster import tls


class NoPolicies:
    def policies(self) -> tuple[()]:
        return ()

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {}


def _server_buffers(server: WebhookServer) -> list[int]:
    """The read buffer of each TLS connection the server holds open."""
    sizes = []
    for handler in server._limit._open:
        transport: Any = handler.transport
        sizes.append(len(transport._ssl_protocol._ssl_buffer))
    return sizes


def test_each_tls_connection_reads_into_a_bounded_buffer_and_big_reviews_still_arrive(
    tmp_path: Path,
) -> None:
    ca = tls.CertificateAuthority.create("buffer-ca")
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    files = TLSFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    files.cert.write_bytes(pair.cert_pem)
    files.key.write_bytes(pair.key_pem)
    source = NoPolicies()
    app = build_app(validate=reviewers.Validator(source), mutate=reviewers.Mutator(source))
    bounds = ConnectionBounds()
    # 2 MiB of labels: far more than one read buffer, within the body bound.
    labels = {f"l{n}": "x" * 60 for n in range(30_000)}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "big", "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "cgr.dev/chainguard/x"}]},
    }
    body = json.dumps(builder.review_for(pod, namespace="ns", uid="u-big")).encode()

    async def scenario() -> tuple[list[int], dict[str, Any]]:
        server = WebhookServer(app, files, host="127.0.0.1", port=0, bounds=bounds)
        await server.start()
        context = ssl.create_default_context(cadata=ca.cert_pem.decode())
        try:
            async with aiohttp.ClientSession() as session:
                url = f"https://127.0.0.1:{server.port}/validate"
                headers = {"Content-Type": "application/json"}
                async with session.post(
                    url, data=io.BytesIO(body), ssl=context, headers=headers
                ) as reply:
                    answer: dict[str, Any] = await reply.json()
                await asyncio.sleep(0.05)  # the connection stays open (keep-alive)
                return _server_buffers(server), answer
        finally:
            await server.stop()

    buffers, answer = asyncio.run(scenario())
    assert buffers, "the keep-alive connection should still be open"
    # asyncio's own is 256 KiB; the bound is a few TLS records (16 KiB of plaintext each).
    assert all(size <= 64 * 1024 for size in buffers), buffers
    assert all(size <= bounds.tls_read_buffer for size in buffers), buffers
    assert answer["response"]["uid"] == "u-big"
    assert answer["response"]["allowed"] is True
