"""The registry client against the real local registry, and against registries that misbehave.

The misbehaving ones are small aiohttp servers on loopback written here: real registries cannot
be made to lie, time out or rate-limit on demand, and Docker Hub's token service cannot be reached
from a test. Everything about a well-behaved registry is tested against the real one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from imagegate.core import reference
from imagegate.registry import client as oci
from imagegate.registry.keychain import Credentials
from imagegate.testbed import build
from imagegate.testbed.registry import LocalRegistry
from support import cosign_key_pair, cosign_sign, push_random_image

BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


def client_for(session: aiohttp.ClientSession, *hosts: str, **kwargs: object) -> oci.RegistryClient:
    return oci.RegistryClient(session, insecure=frozenset(hosts), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def signed_image(
    registry: LocalRegistry, crane: Path, cosign: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """(repository, digest) of an image with a cosign v3 bundle referrer."""
    workdir = tmp_path_factory.mktemp("signed")
    digest = push_random_image(crane, registry.address, "client/app", "v1", workdir)
    cosign_key_pair(cosign, workdir)
    cosign_sign(cosign, workdir / "cosign.key", f"{registry.address}/client/app@{digest}")
    return "client/app", digest


async def test_tag_resolves_to_the_digest_crane_pushed(
    session: aiohttp.ClientSession, registry: LocalRegistry, signed_image: tuple[str, str]
) -> None:
    repository, digest = signed_image
    client = client_for(session, registry.address)
    resolved = await client.resolve(reference.parse(f"{registry.address}/{repository}:v1"))
    assert resolved.digest == digest
    assert resolved.media_type in oci.MANIFEST_TYPES
    by_digest = await client.resolve(reference.parse(f"{registry.address}/{repository}@{digest}"))
    assert by_digest.digest == digest


async def test_manifest_and_blob_bytes_match_their_digests(
    session: aiohttp.ClientSession, registry: LocalRegistry, signed_image: tuple[str, str]
) -> None:
    import json

    repository, digest = signed_image
    client = client_for(session, registry.address)
    body, descriptor = await client.manifest(registry.address, repository, digest)
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest == descriptor.digest
    layer = json.loads(body)["layers"][0]["digest"]
    blob = await client.blob(registry.address, repository, layer)
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer


async def test_referrers_find_the_bundle_and_filter_by_artifact_type(
    session: aiohttp.ClientSession, registry: LocalRegistry, signed_image: tuple[str, str]
) -> None:
    repository, digest = signed_image
    client = client_for(session, registry.address)
    everything = await client.referrers(registry.address, repository, digest)
    bundles = await client.referrers(registry.address, repository, digest, artifact_type=BUNDLE)
    assert [d.artifact_type for d in bundles] == [BUNDLE]
    assert bundles[0] in everything
    assert (
        await client.referrers(
            registry.address, repository, digest, artifact_type="application/x-none"
        )
        == []
    )


@pytest.fixture(scope="module", params=["no-filter", "no-api"])
def odd_registry(
    request: pytest.FixtureRequest, builder: build.Builder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRegistry]:
    """Registries that ignore the artifactType filter, or lack the referrers API altogether."""
    flags = {"no-filter": ["-referrers-filter=false"], "no-api": ["-referrers=false"]}
    local = LocalRegistry(
        builder.ensure(build.REGISTRY),
        tmp_path_factory.mktemp("odd"),
        extra_args=flags[request.param],
    )
    local.start()
    yield local
    local.stop()


async def test_referrers_work_on_registries_without_filtering_or_without_the_api(
    session: aiohttp.ClientSession,
    odd_registry: LocalRegistry,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    digest = push_random_image(crane, odd_registry.address, "odd/app", "v1", tmp_path)
    cosign_key_pair(cosign, tmp_path)
    cosign_sign(cosign, tmp_path / "cosign.key", f"{odd_registry.address}/odd/app@{digest}")
    client = client_for(session, odd_registry.address)
    bundles = await client.referrers(odd_registry.address, "odd/app", digest, artifact_type=BUNDLE)
    assert len(bundles) == 1
    assert (
        await client.referrers(
            odd_registry.address, "odd/app", digest, artifact_type="application/x-none"
        )
        == []
    )


async def test_unknown_tags_are_manifest_unknown(
    session: aiohttp.ClientSession, registry: LocalRegistry
) -> None:
    client = client_for(session, registry.address)
    with pytest.raises(oci.ManifestUnknown):
        await client.resolve(reference.parse(f"{registry.address}/client/app:missing"))


# -- registries that misbehave (local fakes, see the module docstring) --------------------------


class Fake:
    """A scripted registry: `routes` maps a path to a list of (status, headers, body) answers."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
        self.seen: list[tuple[str, str | None]] = []
        self.token_requests = 0
        self.delay = 0.0
        #: When set, /v2/ requests without the token get a 401 with this challenge.
        self.bearer_challenge: str | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization")))
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.path == "/token":
            self.token_requests += 1
            if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"u:p").decode():
                return web.Response(status=401)
            return web.json_response({"token": "t0k3n", "expires_in": 300})
        if self.bearer_challenge and request.headers.get("Authorization") != "Bearer t0k3n":
            return web.Response(status=401, headers={"WWW-Authenticate": self.bearer_challenge})
        answers = self.routes.get(request.path)
        if not answers:
            return web.Response(status=404)
        status, headers, body = answers.pop(0) if len(answers) > 1 else answers[0]
        return web.Response(status=status, headers=headers, body=body)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Fake, str]]:
    state = Fake()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield state, f"127.0.0.1:{port}"
    await runner.cleanup()


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


MANIFEST = b'{"schemaVersion":2}'
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


async def test_a_registry_that_sends_other_bytes_is_caught(
    session: aiohttp.ClientSession, fake: tuple[Fake, str]
) -> None:
    state, host = fake
    state.routes[f"/v2/a/manifests/{MANIFEST_DIGEST}"] = [(200, {}, b'{"schemaVersion":3}')]
    with pytest.raises(oci.DigestMismatch, match="sent content with digest"):
        await client_for(session, host).manifest(host, "a", MANIFEST_DIGEST)


async def test_a_registry_that_claims_another_digest_is_caught(
    session: aiohttp.ClientSession, fake: tuple[Fake, str]
) -> None:
    state, host = fake
    state.routes["/v2/a/manifests/v1"] = [
        (200, {"Docker-Content-Digest": "sha256:" + "0" * 64}, MANIFEST)
    ]
    with pytest.raises(oci.DigestMismatch, match="claimed"):
        await client_for(session, host).manifest(host, "a", "v1")


async def test_5xx_is_retried_with_backoff_then_given_up(
    session: aiohttp.ClientSession, fake: tuple[Fake, str]
) -> None:
    state, host = fake
    state.routes["/v2/a/manifests/v1"] = [(503, {}, b""), (200, {}, MANIFEST)]
    sleeps = Sleeps()
    client = client_for(session, host, sleep=sleeps, jitter=lambda: 0.5)
    _, descriptor = await client.manifest(host, "a", "v1")
    assert descriptor.digest == MANIFEST_DIGEST
    assert sleeps.delays == [0.1]
    state.routes["/v2/a/manifests/v1"] = [(500, {}, b"")]
    with pytest.raises(oci.RegistryUnavailable, match="answered 500; gave up after 3 attempts"):
        await client.manifest(host, "a", "v1")


async def test_429_honours_retry_after(
    session: aiohttp.ClientSession, fake: tuple[Fake, str]
) -> None:
    state, host = fake
    state.routes["/v2/a/manifests/v1"] = [(429, {"Retry-After": "2"}, b""), (200, {}, MANIFEST)]
    sleeps = Sleeps()
    await client_for(session, host, sleep=sleeps).manifest(host, "a", "v1")
    assert sleeps.delays == [2.0]


async def test_no_retry_past_the_deadline(
    session: aiohttp.ClientSession, fake: tuple[Fake, str]
) -> None:
    import time

    state, host = fake
    state.routes["/v2/a/manifests/v1"] = [(429, {"Retry-After": "30"}, b""), (200, {}, MANIFEST)]
    with pytest.raises(oci.RateLimited, match="no time left"):
        await client_for(session, host).manifest(host, "a", "v1", deadline=time.monotonic() + 1)


async def test_a_registry_that_hangs_is_cut_off_at_the_deadline(
    session: aiohttp.ClientSession, fake: tuple[Fake, str]
) -> None:
    import time

    state, host = fake
    state.delay = 5
    state.routes["/v2/a/manifests/v1"] = [(200, {}, MANIFEST)]
    started = time.monotonic()
    with pytest.raises(oci.RegistryUnavailable, match="did not answer"):
        await client_for(session, host).manifest(host, "a", "v1", deadline=started + 0.3)
    # No timed assertion: the point is that it raised instead of waiting for the answer.


async def test_bearer_token_is_fetched_with_credentials_and_cached(
    session: aiohttp.ClientSession, fake: tuple[Fake, str]
) -> None:
    state, host = fake
    challenge = f'Bearer realm="http://{host}/token",service="fake",scope="repository:a:pull"'

    state.bearer_challenge = challenge
    state.routes["/v2/a/manifests/v1"] = [(200, {}, MANIFEST)]

    class Keys:
        def credentials(self, registry_host: str, repository: str) -> Credentials | None:
            return Credentials("u", "p") if registry_host == host else None

    client = oci.RegistryClient(session, keychain=Keys(), insecure=frozenset({host}))
    for _ in range(2):
        await client.manifest(host, "a", "v1")
    assert state.token_requests == 1
    assert state.seen[-1] == ("/v2/a/manifests/v1", "Bearer t0k3n")


async def test_tokens_are_never_shared_between_credentials(
    session: aiohttp.ClientSession, fake: tuple[Fake, str]
) -> None:
    """One namespace's pull secret must not open the registry for another's admission."""
    state, host = fake
    state.bearer_challenge = f'Bearer realm="http://{host}/token",service="fake"'
    state.routes["/v2/a/manifests/v1"] = [(200, {}, MANIFEST)]

    class Fixed:
        def __init__(self, credentials: Credentials | None) -> None:
            self.fixed = credentials

        def credentials(self, registry_host: str, repository: str) -> Credentials | None:
            return self.fixed

    client = oci.RegistryClient(session, insecure=frozenset({host}))
    await client.using(Fixed(Credentials("u", "p"))).manifest(host, "a", "v1")
    with pytest.raises(oci.Unauthorized, match="refused the credentials"):
        await client.using(Fixed(Credentials("u", "wrong"))).manifest(host, "a", "v1")
    with pytest.raises(oci.Unauthorized):
        await client.manifest(host, "a", "v1")  # no credentials at all
    assert state.token_requests == 3


async def test_basic_challenge_without_credentials_is_unauthorized(
    session: aiohttp.ClientSession, fake: tuple[Fake, str]
) -> None:
    state, host = fake
    state.routes["/v2/a/manifests/v1"] = [(401, {"WWW-Authenticate": 'Basic realm="x"'}, b"")]
    with pytest.raises(oci.Unauthorized, match="has none"):
        await client_for(session, host).manifest(host, "a", "v1")


def test_docker_hub_is_reached_at_its_api_host() -> None:
    assert oci.api_host("docker.io") == "registry-1.docker.io"
    assert oci.api_host("cgr.dev") == "cgr.dev"
