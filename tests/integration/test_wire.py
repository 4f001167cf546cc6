"""Bodies that arrive in pieces: the webhook server and the registry client behind `netproxy`.

On loopback a peer's write usually arrives whole, so code that takes "what has arrived so far" as
the body (aiohttp's `StreamReader.read(n)`) passes there and cuts bodies short across a network.
Every test here goes through `netproxy.TcpProxy`, which re-sends each direction in small writes.

What else loopback hides, and what is checked here:
- TLS records split across segments: the webhook tests are HTTPS through the (TCP) proxy, so
  every 16 KB TLS record arrives in 1-7 or 1-1400 byte pieces.
- Slow first bytes and stalls: a first-byte delay and a mid-body stall still give whole bodies.
- A connection reset mid-body (RST): the server survives and answers the next request; the
  registry client retries (a truncated body is a `ClientPayloadError`, never a short body).
- Closed keep-alive connections: a registry or middlebox that closes a pooled connection the
  client then reuses. `doom_open_connections()` resets such a connection on its next request;
  aiohttp's client retries an idempotent request (GET, HEAD: all the registry client sends) once
  on a new connection, so even with `retries=0` that costs no failure (checked below). The
  20-fetch tests reuse one session's pooled connections through the proxy throughout.
  Not checked here: the API server reusing a webhook connection aiohttp's server closed after its
  75 s keep-alive timeout (Go's transport retries requests it had not written yet); the e2e test
  only shows large reviews arriving in pieces from the real API server.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from imagegate.admission import review as admission
from imagegate.admission import reviewers as webhook
from imagegate.admission.server import TLSFiles, WebhookServer, build_app
from imagegate.cluster import tls
from imagegate.core import reference
from imagegate.policy import engine, model
from imagegate.policy.compile import compile_policy
from imagegate.registry import client as oci
from imagegate.signatures.verifier import CosignVerifier
from imagegate.testbed.registry import LocalRegistry
from netproxy import Shaping, TcpProxy
from support import (
    cosign_key_pair,
    cosign_sign,
    pad_signature_manifest,
    pod_review,
    push_random_image,
)

TRUSTED = "registry.example/trusted"
KB, MB = 1024, 1024 * 1024
#: The webhook's deadline in these tests (it bounds the body read as well).
DEADLINE = 3.0


class _Policies:
    """One policy trusting `registry.example/trusted/**`, as the operator's cache would give."""

    def __init__(self) -> None:
        document = {
            "apiVersion": "imagegate.dev/v1alpha1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": "trusted"},
            "spec": {"sources": [{"name": "trusted", "images": [f"{TRUSTED}/**"]}]},
        }
        self._policies = (compile_policy(model.parse_policy_document(document)),)

    def policies(self) -> Sequence[engine.CompiledPolicy]:
        return self._policies

    async def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return {"kubernetes.io/metadata.name": namespace}


class Webhook:
    """The real server with the real Validator, over TLS, behind a proxy."""

    def __init__(self, proxy: TcpProxy, ca: tls.CertificateAuthority) -> None:
        self.proxy = proxy
        self.context = ssl.create_default_context(cadata=ca.cert_pem.decode())

    async def post(self, body: bytes, *, chunked: bool = False) -> tuple[int, Any]:
        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 64 * KB):
                yield body[start : start + 64 * KB]

        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"https://127.0.0.1:{self.proxy.port}/validate",
                data=pieces() if chunked else io.BytesIO(body),
                ssl=self.context,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as reply,
        ):
            return reply.status, await reply.json(content_type=None)


async def _dawdle(
    review: admission.AdmissionReview, deadline: float
) -> admission.AdmissionResponse:
    await asyncio.sleep(60)
    raise AssertionError("the deadline should have ended this")


@pytest.fixture
async def hook(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Webhook]:
    """The real Validator, or (indirect parameter "dawdle") a reviewer that never answers."""
    ca = tls.CertificateAuthority.create("test-ca")
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    files = TLSFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    files.cert.write_bytes(pair.cert_pem)
    files.key.write_bytes(pair.key_pem)
    validator = webhook.Validator(_Policies())
    validate = _dawdle if getattr(request, "param", None) == "dawdle" else validator
    server = WebhookServer(
        build_app(validate=validate, mutate=validator, deadline=DEADLINE),
        files,
        host="127.0.0.1",
        port=0,
    )
    await server.start()
    try:
        async with TcpProxy("127.0.0.1", server.port) as proxy:
            yield Webhook(proxy, ca)
    finally:
        await server.stop()


def padded_review(size: int, image: str = f"{TRUSTED}/app:v1") -> bytes:
    """A Pod CREATE review of about `size` bytes (the padding is in annotations)."""
    review = pod_review("default", image)
    bare = len(json.dumps(review).encode())
    annotations = {f"pad.example/{n}": "x" * 1000 for n in range(max(0, size - bare) // 1030)}
    review["request"]["object"]["metadata"]["annotations"] = annotations
    rest = size - len(json.dumps(review).encode()) - 30
    annotations["pad.example/rest"] = "x" * max(0, rest)
    return json.dumps(review).encode()


#: size → how the proxy re-sends it: tiny writes for small bodies, MTU-sized for large ones.
#: 1 KB and 20 KB are controls: they passed on the unfixed server too (1 KB shares one TLS record
#: with the headers, decrypted whole or not at all; for 20 KB, aiohttp had the whole body buffered
#: before the handler ran in every run). From 200 KB on, the unfixed server cut bodies short.
SIZES = {
    "1KB": (1 * KB, Shaping(chunk=(1, 7))),
    "20KB": (
        20 * KB,
        Shaping(chunk=(1, 7), first_byte_delay=0.05, stall_after=8 * KB, stall_for=0.2),
    ),
    "200KB": (200 * KB, Shaping(chunk=(1, 1400), pause=0.001)),
    "1MB": (1 * MB, Shaping(chunk=1400, stall_after=300 * KB, stall_for=0.3)),
    "3MB": (admission.MAX_REVIEW_BYTES - 4 * KB, Shaping(chunk=1400)),
}


@pytest.mark.parametrize("size", SIZES)
async def test_reviews_arriving_in_small_writes_are_read_whole_and_answered(
    hook: Webhook, size: str
) -> None:
    length, shaping = SIZES[size]
    hook.proxy.up = shaping
    body = padded_review(length)
    assert length - 2 * KB < len(body) <= admission.MAX_REVIEW_BYTES
    status, answer = await hook.post(body)
    assert hook.proxy.writes > len(body) // 1400  # it did arrive in pieces
    assert status == 200, answer
    assert answer["response"]["uid"] == json.loads(body)["request"]["uid"]
    assert answer["response"]["allowed"] is True, answer
    # The same path denies what it does not trust: the review was really judged.
    status, answer = await hook.post(padded_review(length, "elsewhere.example/app:v1"))
    assert (status, answer["response"]["allowed"]) == (200, False)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_review_past_the_bound_is_a_prompt_413_naming_it(
    hook: Webhook, chunked: bool
) -> None:
    hook.proxy.up = Shaping(chunk=1400)
    started = time.monotonic()
    status, answer = await hook.post(
        padded_review(admission.MAX_REVIEW_BYTES + 64 * KB), chunked=chunked
    )
    assert status == 413
    assert str(admission.MAX_REVIEW_BYTES) in answer["error"]
    assert time.monotonic() - started < 20


async def test_a_body_that_stops_coming_is_a_408_within_the_deadline(hook: Webhook) -> None:
    hook.proxy.up = Shaping(chunk=1400, stall_after=100 * KB, stall_for=DEADLINE + 2)
    started = time.monotonic()
    status, answer = await hook.post(padded_review(200 * KB))
    assert status == 408
    assert "did not arrive within 3s" in answer["error"]
    assert time.monotonic() - started < DEADLINE + 1.5


@pytest.mark.parametrize("hook", ["dawdle"], indirect=True)
async def test_time_spent_reading_the_body_counts_against_the_deadline(hook: Webhook) -> None:
    hook.proxy.up = Shaping(chunk=1400, stall_after=100 * KB, stall_for=DEADLINE - 1)
    started = time.monotonic()
    status, answer = await hook.post(padded_review(200 * KB))
    assert (status, answer["response"]["status"]["code"]) == (200, 504)
    assert time.monotonic() - started < DEADLINE + 1  # not the stall (2 s) plus a whole deadline


async def test_a_reset_mid_body_leaves_the_server_answering(hook: Webhook) -> None:
    body = padded_review(200 * KB)
    hook.proxy.up = Shaping(chunk=1400, reset_after=100 * KB)
    with pytest.raises(aiohttp.ClientError):
        await hook.post(body)
    assert hook.proxy.resets == 1
    hook.proxy.up = Shaping(chunk=(1, 1400))
    status, answer = await hook.post(body)
    assert (status, answer["response"]["allowed"]) == (200, True)


# -- the registry client ------------------------------------------------------------------------


async def _push_blob(
    session: aiohttp.ClientSession, base: str, repository: str, data: bytes
) -> str:
    digest = oci.sha256_digest(data)
    async with session.post(f"{base}/v2/{repository}/blobs/uploads/") as started:
        assert started.status == 202, await started.text()
        location = started.headers["Location"]
    if location.startswith("/"):
        location = base + location
    separator = "&" if "?" in location else "?"
    async with session.put(f"{location}{separator}digest={digest}", data=io.BytesIO(data)) as done:
        assert done.status == 201, await done.text()
    return digest


async def _push_manifest(
    session: aiohttp.ClientSession, base: str, repository: str, tag: str, size: int
) -> str:
    """An OCI manifest of about `size` bytes (padded with annotations) over a real config blob."""
    config = b"{}"
    config_digest = await _push_blob(session, base, repository, config)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [],
        "annotations": {},
    }
    bare = len(json.dumps(manifest))
    manifest["annotations"] = {"pad.example/x": "x" * max(0, size - bare - 20)}
    body = json.dumps(manifest).encode()
    async with session.put(
        f"{base}/v2/{repository}/manifests/{tag}",
        data=io.BytesIO(body),
        headers={"Content-Type": oci.OCI_MANIFEST},
    ) as reply:
        assert reply.status == 201, await reply.text()
    return oci.sha256_digest(body)


def proxy_to(address: str, down: Shaping) -> TcpProxy:
    """A proxy in front of `host:port` that re-sends the answers as `down` says."""
    host, port = address.rsplit(":", 1)
    return TcpProxy(host, int(port), down=down)


#: Manifests stop just under the client's manifest bound.
BODY_SIZES = {"1KB": KB, "20KB": 20 * KB, "200KB": 200 * KB, "1MB": MB, "4MB": 4 * MB - 4 * KB}


def _shaping_for(size: int) -> Shaping:
    return Shaping(chunk=(1, 7)) if size <= 20 * KB else Shaping(chunk=(1, 1400))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.mark.parametrize("size", BODY_SIZES)
async def test_manifests_and_blobs_in_tiny_pieces_verify_every_time(
    session: aiohttp.ClientSession, registry: LocalRegistry, size: str
) -> None:
    length = BODY_SIZES[size]
    repository = f"wire/body-{size.lower()}"
    digest = await _push_manifest(session, registry.url, repository, "v1", length)
    data = hashlib.sha256(size.encode()).digest() * (length // 32)
    blob_digest = await _push_blob(session, registry.url, repository, data)
    async with proxy_to(registry.address, _shaping_for(length)) as proxy:
        client = oci.RegistryClient(session, insecure=frozenset({proxy.address}), retries=0)
        for _ in range(20):
            body, descriptor = await client.manifest(proxy.address, repository, "v1")
            assert (descriptor.digest, oci.sha256_digest(body)) == (digest, digest)
            assert len(body) > length - 2 * KB
            blob = await client.blob(proxy.address, repository, blob_digest)
            assert blob == data
            resolved = await client.resolve(reference.parse(f"{proxy.address}/{repository}:v1"))
            assert resolved.digest == digest
        assert proxy.writes > 20 * 2 * length // 1400  # the bodies did come in pieces


async def test_a_reset_mid_blob_is_retried_never_a_short_body(
    session: aiohttp.ClientSession, registry: LocalRegistry
) -> None:
    data = b"r" * MB
    digest = await _push_blob(session, registry.url, "wire/reset", data)
    async with proxy_to(registry.address, Shaping(chunk=1400, reset_after=300 * KB)) as proxy:
        client = oci.RegistryClient(session, insecure=frozenset({proxy.address}), retries=0)
        with pytest.raises(oci.RegistryUnavailable):
            await client.blob(proxy.address, "wire/reset", digest)
        proxy.down = Shaping(chunk=1400)
        assert await client.blob(proxy.address, "wire/reset", digest) == data


async def test_a_pooled_connection_that_died_while_idle_costs_no_failure(
    session: aiohttp.ClientSession, registry: LocalRegistry
) -> None:
    """The registry (or a middlebox) closed a keep-alive connection the client still pools."""
    digest = await _push_manifest(session, registry.url, "wire/pooled", "v1", 20 * KB)
    async with proxy_to(registry.address, Shaping(chunk=(1, 1400))) as proxy:
        client = oci.RegistryClient(session, insecure=frozenset({proxy.address}), retries=0)
        await client.manifest(proxy.address, "wire/pooled", "v1")
        proxy.doom_open_connections()
        _, descriptor = await client.manifest(proxy.address, "wire/pooled", "v1")
        assert descriptor.digest == digest
        assert (proxy.resets, proxy.connections) == (1, 2)  # reset on reuse, then a new one


@pytest.fixture
async def headless_registry() -> AsyncIterator[tuple[str, bytes]]:
    """A stub registry that omits Docker-Content-Digest, on HEAD and GET.

    The real local registry always sends the header, and the proxy is TCP (it cannot strip a
    header), so this small aiohttp server plays the registries that leave it out; `resolve()`
    must then GET the manifest and hash all of it.
    """
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "annotations": {"pad": "y" * 300_000}}
    ).encode()

    async def answer(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": oci.OCI_MANIFEST}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(manifest))})
        return web.Response(body=manifest, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/v2/{repository:.+}/manifests/{reference}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}", manifest
    finally:
        await runner.cleanup()


async def test_resolve_without_the_digest_header_hashes_the_whole_manifest(
    session: aiohttp.ClientSession, headless_registry: tuple[str, bytes]
) -> None:
    address, manifest = headless_registry
    async with proxy_to(address, Shaping(chunk=(1, 1400))) as proxy:
        client = oci.RegistryClient(session, insecure=frozenset({proxy.address}), retries=0)
        for _ in range(5):
            resolved = await client.resolve(reference.parse(f"{proxy.address}/stub/app:v1"))
            assert resolved.digest == oci.sha256_digest(manifest)
            assert resolved.size == len(manifest)


# -- signatures -----------------------------------------------------------------------------------


async def test_a_signature_with_a_20kb_manifest_verifies_100_times_in_100(
    session: aiohttp.ClientSession,
    registry: LocalRegistry,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    repository = "wire/signed"
    digest = push_random_image(crane, registry.address, repository, "v1", tmp_path)
    key = cosign_key_pair(cosign, tmp_path)
    # Many annotations make the signed payload blob large as well (~20 KB).
    notes = tuple(f"--annotations=note{n}={'n' * 1000}" for n in range(20))
    try:
        cosign_sign(
            cosign,
            Path(f"{key}.key"),
            f"{registry.address}/{repository}@{digest}",
            bundle=False,
            extra=notes,
        )
    except subprocess.CalledProcessError as error:
        pytest.fail(f"cosign sign failed: {error.stderr[-2000:]!r}")
    assert pad_signature_manifest(registry.url, repository, digest) > 20 * KB
    needs = model.Signatures.model_validate(
        {"keys": [{"publicKey": Path(f"{key}.pub").read_text()}], "requireTransparencyLog": False}
    )
    async with proxy_to(registry.address, Shaping(chunk=(1, 1400))) as proxy:
        client = oci.RegistryClient(session, insecure=frozenset({proxy.address}), retries=0)
        image = f"{proxy.address}/{repository}:v1"
        verified = 0
        for _ in range(100):
            check = engine.SignatureCheck(image, "p", "s", needs)
            verifier = CosignVerifier(client)  # fresh: no verdict cache between runs
            result = (await verifier.verify([check], deadline=time.monotonic() + 30))[check]
            verified += result == engine.SignatureVerdict(True, digest=digest)
        assert verified == 100


async def test_a_body_declared_past_the_cap_is_refused_not_read(
    session: aiohttp.ClientSession, registry: LocalRegistry
) -> None:
    data = b"c" * MB
    digest = await _push_blob(session, registry.url, "wire/cap", data)
    async with proxy_to(registry.address, Shaping(chunk=1400)) as proxy:
        client = oci.RegistryClient(session, insecure=frozenset({proxy.address}), retries=0)
        with pytest.raises(oci.RegistryError, match="answer larger than 102400 bytes") as caught:
            await client.blob(proxy.address, "wire/cap", digest, max_size=100 * KB)
        assert not isinstance(caught.value, oci.DigestMismatch)


async def test_a_chunked_body_past_the_cap_is_refused_once_it_passes(
    session: aiohttp.ClientSession,
) -> None:
    """No Content-Length to refuse up front: the client must count as it reads."""

    async def endless(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse()
        reply.enable_chunked_encoding()
        await reply.prepare(request)
        for _ in range(64):  # 4 MB at most, far past the cap
            await reply.write(b"e" * 64 * KB)
        return reply

    app = web.Application()
    app.router.add_get("/v2/{repository:.+}/blobs/{digest}", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with proxy_to(f"127.0.0.1:{runner.addresses[0][1]}", Shaping(chunk=1400)) as proxy:
            client = oci.RegistryClient(session, insecure=frozenset({proxy.address}), retries=0)
            with pytest.raises(oci.RegistryError, match="answer larger than 102400 bytes"):
                await client.blob(
                    proxy.address, "stub/app", "sha256:" + "0" * 64, max_size=100 * KB
                )
    finally:
        await runner.cleanup()
