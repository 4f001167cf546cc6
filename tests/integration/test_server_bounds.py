"""The webhook server under hostile input, over real HTTPS on loopback: past every bound the
answer is an AdmissionReview denial naming it, or a 4xx; never a 5xx, a hang or an exception."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from imagegate.admission import builder, patches, reviewers
from imagegate.admission import review as admission
from imagegate.admission.connections import ConnectionBounds
from imagegate.admission.server import TLSFiles, WebhookServer, build_app
from imagegate.cluster import tls
from imagegate.core import workloads
from imagegate.policy import engine, model
from imagegate.policy.compile import compile_policy


class Policies:
    def __init__(self, *policies: engine.CompiledPolicy) -> None:
        self._policies = policies

    def policies(self) -> Sequence[engine.CompiledPolicy]:
        return self._policies

    async def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return {"kubernetes.io/metadata.name": namespace}


HARDENED = compile_policy(
    model.parse_policy_document(
        {
            "apiVersion": "imagegate.dev/v1alpha1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": "hardened"},
            "spec": {
                "sources": [{"name": "chainguard", "images": ["cgr.dev/chainguard/**"]}],
                "rewrites": [
                    {"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python"}
                ],
                # A Deployment's template is patched (the annotation tests below need it).
                "mutation": {"scope": "All"},
            },
        }
    )
)


def _review(obj: Any, kind: tuple[str, str] = ("", "Pod"), uid: str = "u-1") -> dict[str, Any]:
    return builder.review_for(obj, group_kind=kind, version="v1", namespace="ns", uid=uid)


def _pod(metadata: Any = None, containers: int = 1) -> dict[str, Any]:
    spec = {
        "containers": [
            {"name": f"c{i}", "image": "cgr.dev/chainguard/x"} for i in range(containers)
        ]
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata or {"name": "p"}, "spec": spec}


def _deployment(template_metadata: Any) -> dict[str, Any]:
    template = {
        "metadata": template_metadata,
        "spec": {"containers": [{"name": "a", "image": "python"}]},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": template},
    }


class Served:
    def __init__(self, server: WebhookServer, ca: tls.CertificateAuthority) -> None:
        self.server = server
        self.context = ssl.create_default_context(cadata=ca.cert_pem.decode())

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server.port}{path}"

    async def post(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[int, str, Any]:
        """(status, content type, parsed JSON body)."""
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.post(
                self.url(path),
                data=io.BytesIO(body),
                ssl=self.context,
                headers={"Content-Type": "application/json", **(headers or {})},
            ) as reply,
        ):
            return reply.status, reply.content_type, await reply.json(content_type=None)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw TLS connection, handshaken, that has sent nothing."""
        return await asyncio.open_connection("127.0.0.1", self.server.port, ssl=self.context)

    async def wait_for_connections(self, count: int) -> None:
        for _ in range(200):
            if self.server.connections == count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.server.connections} connections, expected {count}")


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closed the connection within `seconds` (everything sent is drained)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True
    return True


async def _serve(
    tmp_path: Path, bounds: ConnectionBounds | None = None
) -> tuple[WebhookServer, tls.CertificateAuthority]:
    ca = tls.CertificateAuthority.create("test-ca")
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    files = TLSFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    files.cert.write_bytes(pair.cert_pem)
    files.key.write_bytes(pair.key_pem)
    policies = Policies(HARDENED)
    app = build_app(
        validate=reviewers.Validator(policies), mutate=reviewers.Mutator(policies), deadline=5
    )
    kwargs: dict[str, Any] = {} if bounds is None else {"bounds": bounds}
    server = WebhookServer(app, files, host="127.0.0.1", port=0, **kwargs)
    await server.start()
    return server, ca


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    server, ca = await _serve(tmp_path)
    try:
        yield Served(server, ca)
    finally:
        await server.stop()


#: Each bound alone tight (the others long), so a test sees the one it is about at work.
LIMIT = ConnectionBounds(max_connections=3, keepalive_timeout=60, first_request_timeout=60)
KEEPALIVE = ConnectionBounds(keepalive_timeout=0.5, first_request_timeout=60)
FIRST_REQUEST = ConnectionBounds(keepalive_timeout=60, first_request_timeout=0.5)
HANDSHAKE = ConnectionBounds(keepalive_timeout=60, first_request_timeout=60, handshake_timeout=0.5)


@pytest.fixture
async def tight(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    server, ca = await _serve(tmp_path, request.param)
    try:
        yield Served(server, ca)
    finally:
        await server.stop()


def _denial(body: Any) -> tuple[bool, int, str]:
    response = body["response"]
    return response["allowed"], response["status"]["code"], response["status"]["message"]


# 1. Nesting and numbers


@pytest.mark.parametrize("levels", [150, 950, 50_000], ids=lambda n: f"{n}-deep")
async def test_deep_nesting_in_the_object_is_a_400_denial_not_a_500(
    served: Served, levels: int
) -> None:
    text = json.dumps(_review({"kind": "Pod", "deep": "DEEP"}))
    body = text.replace('"DEEP"', "[" * levels + "]" * levels).encode()
    status, content_type, answer = await served.post("/validate", body)
    assert (status, content_type) == (200, "application/json")
    allowed, code, message = _denial(answer)
    assert (allowed, code) == (False, 400)
    assert "nested deeper than 100 levels" in message
    assert answer["response"]["uid"] == "u-1"


async def test_deep_nesting_without_a_uid_is_a_400_json(served: Served) -> None:
    status, content_type, answer = await served.post("/mutate", b"[" * 5000 + b"]" * 5000)
    assert (status, content_type) == (400, "application/json")
    assert "nested deeper than 100 levels" in answer["error"]


async def test_an_integer_of_5000_digits_is_a_400_denial_not_a_500(served: Served) -> None:
    text = json.dumps(_review({"kind": "Pod", "n": "NUMBER"}))
    status, _, answer = await served.post(
        "/validate", text.replace('"NUMBER"', "7" * 5000).encode()
    )
    assert status == 200
    assert _denial(answer)[:2] == (False, 400)
    assert "longer than 4300 digits" in _denial(answer)[2]


# 2. Compressed bodies


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-unknown"])
async def test_a_compressed_review_is_refused_with_415_and_never_inflated(
    served: Served, encoding: str
) -> None:
    plain = json.dumps(_review(_pod())).encode()
    body = {"gzip": gzip.compress, "deflate": zlib.compress}.get(encoding, lambda b: b)(plain)
    status, _, answer = await served.post("/validate", body, {"Content-Encoding": encoding})
    assert status == 415
    assert f"Content-Encoding {encoding!r} is not accepted" in answer["error"]


async def test_identity_encoding_is_accepted(served: Served) -> None:
    body = json.dumps(_review(_pod())).encode()
    status, _, answer = await served.post("/validate", body, {"Content-Encoding": "identity"})
    assert status == 200
    assert answer["response"]["allowed"] is True


# 3. Connections


@pytest.mark.parametrize("tight", [LIMIT], indirect=True)
async def test_past_the_connection_limit_the_oldest_idle_is_closed_and_fresh_requests_served(
    tight: Served,
) -> None:
    idle = []
    for count in range(1, LIMIT.max_connections + 1):
        idle.append(await tight.connect())
        await tight.wait_for_connections(count)
    excess = await tight.connect()  # one more than the limit
    assert await _closed_within(idle[0][0], 1)
    assert not await _closed_within(idle[1][0], 0.2)  # only the oldest made room
    await tight.wait_for_connections(LIMIT.max_connections)
    status, _, answer = await tight.post("/validate", json.dumps(_review(_pod())).encode())
    assert status == 200
    assert answer["response"]["allowed"] is True
    assert tight.server.connections <= LIMIT.max_connections
    for _, writer in [*idle, excess]:
        writer.close()


@pytest.mark.parametrize("tight", [FIRST_REQUEST], indirect=True)
async def test_a_connection_that_sends_no_request_is_closed(tight: Served) -> None:
    reader, writer = await tight.connect()
    assert await _closed_within(reader, 3)
    writer.close()


@pytest.mark.parametrize("tight", [HANDSHAKE], indirect=True)
@pytest.mark.parametrize("hello", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["silent", "half-hello"])
async def test_a_tls_handshake_that_never_finishes_is_dropped(tight: Served, hello: bytes) -> None:
    """A plain TCP connection that sends nothing, or the first bytes of a ClientHello, ties up
    a socket until the handshake timeout (asyncio's own default is 60 s), and is never counted
    against the connection limit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.server.port)
    writer.write(hello)
    await writer.drain()
    assert tight.server.connections == 0
    assert await _closed_within(reader, 5)
    writer.close()


@pytest.mark.parametrize("tight", [FIRST_REQUEST], indirect=True)
async def test_a_slowloris_sending_headers_byte_by_byte_is_closed(tight: Served) -> None:
    reader, writer = await tight.connect()
    closed = False
    for byte in b"POST /validate HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
        if writer.is_closing() or reader.at_eof():
            closed = True
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            closed = True
            break
        await asyncio.sleep(0.05)
    assert closed or await _closed_within(reader, 1)
    writer.close()


@pytest.mark.parametrize("tight", [KEEPALIVE], indirect=True)
async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(tight: Served) -> None:
    reader, writer = await tight.connect()
    body = json.dumps(_review(_pod())).encode()
    writer.write(
        b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    assert await _closed_within(reader, 3)
    writer.close()


async def test_a_header_past_the_field_bound_is_a_400(served: Served) -> None:
    body = json.dumps(_review(_pod())).encode()
    reader, writer = await served.connect()
    writer.write(
        b"POST /validate HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * (ConnectionBounds().max_field_size + 10)
        + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    assert (await reader.readline()).split()[1] == b"400"
    writer.close()


# 4. Huge objects


async def test_70k_containers_are_a_small_denial_naming_the_bound(served: Served) -> None:
    pod = _pod()
    pod["spec"]["containers"] = [{"name": f"c{i}", "image": "x"} for i in range(70_000)]
    body = json.dumps(_review(pod), separators=(",", ":")).encode()
    assert len(body) < admission.MAX_REVIEW_BYTES
    status, _, answer = await served.post("/validate", body)
    assert status == 200
    allowed, code, message = _denial(answer)
    assert (allowed, code) == (False, 400)
    assert f"imagegate judges at most {workloads.MAX_IMAGES}" in message
    assert len(json.dumps(answer)) < 4096


# 5. Malformed metadata


@pytest.mark.parametrize(
    ("metadata", "field"),
    [(["p"], "/metadata is not an object"), ({"generateName": 5}, "/metadata/generateName")],
)
async def test_metadata_that_is_not_an_object_is_denied_naming_it(
    served: Served, metadata: Any, field: str
) -> None:
    status, _, answer = await served.post("/validate", json.dumps(_review(_pod(metadata))).encode())
    assert status == 200
    allowed, code, message = _denial(answer)
    assert (allowed, code) == (False, 400)
    assert field in message


@pytest.mark.parametrize(
    ("template_metadata", "field"),
    [
        ("not metadata", "/spec/template/metadata is not an object"),
        ({"annotations": ["a"]}, "/spec/template/metadata/annotations is not an object"),
        (
            {"annotations": {patches.ORIGINAL_IMAGES_ANNOTATION: 5}},
            "original-images is not a string",
        ),
    ],
)
async def test_annotations_that_are_not_an_object_are_denied_naming_them(
    served: Served, template_metadata: Any, field: str
) -> None:
    review = _review(_deployment(template_metadata), kind=("apps", "Deployment"))
    status, _, answer = await served.post("/mutate", json.dumps(review).encode())
    assert status == 200
    allowed, code, message = _denial(answer)
    assert (allowed, code) == (False, 400)
    assert field in message
