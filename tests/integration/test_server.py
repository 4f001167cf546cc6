"""The webhook server over real HTTPS on loopback: answers, denials, deadline, cert reload."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imagegate.admission import builder
from imagegate.admission import review as admission
from imagegate.admission.server import TLSFiles, WebhookServer, build_app
from imagegate.cluster import tls


def _review(uid: str = "u-1", api_version: str = "admission.k8s.io/v1") -> dict[str, Any]:
    return builder.review_for(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}},
        uid=uid,
        api_version=api_version,
    )


async def allow(review: admission.AdmissionReview, deadline: float) -> admission.AdmissionResponse:
    return admission.AdmissionResponse(uid=review.request.uid, allowed=True)


async def explode(
    review: admission.AdmissionReview, deadline: float
) -> admission.AdmissionResponse:
    raise RuntimeError("registry said something unexpected")


async def dawdle(review: admission.AdmissionReview, deadline: float) -> admission.AdmissionResponse:
    await asyncio.sleep(30)
    return admission.AdmissionResponse(uid=review.request.uid, allowed=True)


async def wrong_uid(
    review: admission.AdmissionReview, deadline: float
) -> admission.AdmissionResponse:
    return admission.AdmissionResponse(uid="someone-else", allowed=True)


class Served:
    def __init__(self, server: WebhookServer, ca: tls.CertificateAuthority, files: TLSFiles):
        self.server, self.ca, self.files = server, ca, files
        self.context = ssl.create_default_context(cadata=ca.cert_pem.decode())

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server.port}{path}"

    async def post(self, path: str, body: bytes) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.url(path),
                data=body,
                ssl=self.context,
                headers={"Content-Type": "application/json"},
            ) as reply,
        ):
            return reply.status, await reply.json()


def _write_pair(ca: tls.CertificateAuthority, directory: Path) -> TLSFiles:
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    files = TLSFiles(directory / "tls.crt", directory / "tls.key")
    files.cert.write_bytes(pair.cert_pem)
    files.key.write_bytes(pair.key_pem)
    return files


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    validate = getattr(request, "param", allow)
    ca = tls.CertificateAuthority.create("test-ca")
    files = _write_pair(ca, tmp_path)
    server = WebhookServer(
        build_app(validate=validate, mutate=allow, deadline=0.5),
        files,
        host="127.0.0.1",
        port=0,
        reload_interval=0.05,
    )
    await server.start()
    try:
        yield Served(server, ca, files)
    finally:
        await server.stop()


async def test_an_allowed_request_is_answered_with_its_uid(served: Served) -> None:
    status, body = await served.post("/validate", json.dumps(_review()).encode())
    assert status == 200
    assert body == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "u-1", "allowed": True},
    }


async def test_the_review_api_version_is_echoed(served: Served) -> None:
    _, body = await served.post(
        "/mutate", json.dumps(_review(api_version="admission.k8s.io/v1beta1")).encode()
    )
    assert body["apiVersion"] == "admission.k8s.io/v1beta1"


async def test_garbage_without_a_uid_is_a_400_with_the_reason(served: Served) -> None:
    status, body = await served.post("/validate", b"{not json")
    assert status == 400
    assert body["error"].startswith("body is not JSON")


async def test_a_broken_review_with_a_uid_is_denied_not_admitted(served: Served) -> None:
    broken = _review()
    broken["request"]["operation"] = "PATCH"
    status, body = await served.post("/validate", json.dumps(broken).encode())
    assert status == 200
    assert body["response"]["allowed"] is False
    assert body["response"]["uid"] == "u-1"
    assert "request.operation" in body["response"]["status"]["message"]


@pytest.mark.parametrize("served", [explode], indirect=True)
async def test_a_reviewer_that_raises_means_denial(served: Served) -> None:
    _, body = await served.post("/validate", json.dumps(_review()).encode())
    assert body["response"]["allowed"] is False
    assert body["response"]["status"]["code"] == 500
    # The log gets the details; the API response does not leak them.
    assert "registry said" not in body["response"]["status"]["message"]


@pytest.mark.parametrize("served", [dawdle], indirect=True)
async def test_a_slow_reviewer_is_cut_off_at_the_deadline_and_denied(served: Served) -> None:
    _, body = await served.post("/validate", json.dumps(_review()).encode())
    assert body["response"]["allowed"] is False
    assert body["response"]["status"]["message"].startswith("imagegate: verification timed out")


@pytest.mark.parametrize("served", [wrong_uid], indirect=True)
async def test_an_answer_for_another_uid_is_replaced_by_a_denial(served: Served) -> None:
    _, body = await served.post("/validate", json.dumps(_review()).encode())
    assert body["response"] == {
        "uid": "u-1",
        "allowed": False,
        "status": {"code": 500, "message": "imagegate: internal error; see the operator log"},
    }


async def test_health_endpoints(served: Served) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz"):
            async with session.get(served.url(path), ssl=served.context) as reply:
                assert reply.status == 200


async def test_a_renewed_certificate_is_served_without_a_restart(served: Served) -> None:
    def serial() -> int:
        der = ssl.get_server_certificate(("127.0.0.1", served.server.port))
        from cryptography import x509

        return x509.load_pem_x509_certificate(der.encode()).serial_number

    before = await asyncio.to_thread(serial)
    renewed = served.ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    served.files.key.write_bytes(renewed.key_pem)
    served.files.cert.write_bytes(renewed.cert_pem)
    for _ in range(100):
        await asyncio.sleep(0.05)
        if await asyncio.to_thread(serial) != before:
            break
    assert await asyncio.to_thread(serial) == renewed.certificate.serial_number
