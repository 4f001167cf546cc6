"""The webhook server speaks TLS 1.2 and 1.3 only (docs/design.md §5).

The refused client is made able to speak TLS 1.1 (security level 0), so the handshake fails
because the server refuses the version, not because the client could not offer it: against a
server that allowed TLS 1.1 the same client connects (checked when this test was written).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imagegate.admission.review import AdmissionResponse, AdmissionReview
from imagegate.admission.server import TLSFiles, WebhookServer, build_app
from imagegate.cluster import tls


async def allow(review: AdmissionReview, deadline: float) -> AdmissionResponse:
    return AdmissionResponse(uid=review.request.uid, allowed=True)


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    ca = tls.CertificateAuthority.create("tls-versions")
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    files = TLSFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    files.cert.write_bytes(pair.cert_pem)
    files.key.write_bytes(pair.key_pem)
    server = WebhookServer(build_app(validate=allow, mutate=allow), files, host="127.0.0.1", port=0)
    await server.start()
    try:
        yield server.port
    finally:
        await server.stop()


def _client(lowest: ssl.TLSVersion, highest: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only the version is under test
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = lowest
    context.maximum_version = highest
    return context


def _handshake(port: int, context: ssl.SSLContext) -> str:
    # Run in a thread (asyncio.to_thread): the server answers on this test's event loop.
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as wrapped,
    ):
        return str(wrapped.version())


@pytest.mark.parametrize(
    ("version", "name"), [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")]
)
async def test_tls_1_2_and_1_3_are_spoken(port: int, version: ssl.TLSVersion, name: str) -> None:
    assert await asyncio.to_thread(_handshake, port, _client(version, version)) == name


async def test_tls_1_1_and_older_are_refused(port: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # naming TLS 1.0/1.1 warns
        old = _client(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|protocol version|UNEXPECTED_EOF"):
        await asyncio.to_thread(_handshake, port, old)
