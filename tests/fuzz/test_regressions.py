"""Bugs the fuzzer found, each pinned by the smallest example that showed it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fuzz import harness, strategies
from imagegate.policy import engine, model
from imagegate.registry import client as registry
from imagegate.signatures.verifier import CosignVerifier

KEYLESS = model.Signatures.model_validate(
    {
        "keyless": [
            {
                "issuer": "https://token.actions.githubusercontent.com",
                "subject": "https://github.com/kubewarden/kubewarden-controller/.github/workflows"
                "/release.yml@refs/tags/v1.34.0",
            }
        ]
    }
)
V03_DIGEST = "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172"
#: Past Python's recursion limit, far below any manifest or blob size bound.
NESTING_BOMB = b'{"mediaType":' + b"[" * 5000


@pytest.fixture
def valid_bundle() -> bytes:
    if not strategies.BUNDLE.is_file():
        pytest.skip(f"shared signature fixtures not found under {strategies.SIGNATURES}")
    return strategies.BUNDLE.read_bytes()


async def _verdict(registry: Any, digest: str) -> engine.SignatureVerdict:
    verifier = CosignVerifier(registry)
    image = f"{harness.HOST}/{harness.REPOSITORY}@{digest}"
    check = engine.SignatureCheck(image, "p", "s", KEYLESS)
    return (await verifier.verify([check], time.monotonic() + 30))[check]


@pytest.mark.parametrize("bomb_first", [True, False], ids=["before", "after"])
async def test_a_nesting_bomb_bundle_does_not_hide_a_valid_one(
    valid_bundle: bytes, bomb_first: bool
) -> None:
    """Found by test_broken_v03_bundles_never_raise_and_never_verify: a referrer blob nested
    past the recursion limit made `cosign._json` raise RecursionError out of the verifier (a 500
    for every Pod of a signed image, from anyone who can push a referrer)."""
    bundles = [NESTING_BOMB, valid_bundle] if bomb_first else [valid_bundle, NESTING_BOMB]
    verdict = await _verdict(harness.Registry([], bundles), V03_DIGEST)
    assert verdict == engine.SignatureVerdict(True, digest=V03_DIGEST)


async def test_a_nesting_bomb_sig_manifest_is_a_denial_not_an_exception() -> None:
    registry = harness.Registry([], [])
    registry.sig_manifest = NESTING_BOMB
    verdict = await _verdict(registry, V03_DIGEST)
    assert not verdict.verified
    assert "no signature found" in verdict.reason


# --- a hostile registry: the same class of bug one layer down ---------------------------------
# Found reading the code after the bug above, not by the fuzzer (its registry is in memory):
# what a registry or its token service sends is parsed with `json.loads` too.


class HostileRegistry:
    """A registry on 127.0.0.1 whose referrers index and token service send `body`."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.app = web.Application()
        self.app.router.add_get("/v2/team/app/referrers/{digest}", self.referrers)
        self.app.router.add_get("/v2/team/app/manifests/{reference}", self.manifest)
        self.app.router.add_get("/token", self.token)
        self.server = TestServer(self.app, host="127.0.0.1")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def referrers(self, _: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type="application/vnd.oci.image.index.v1+json")

    async def manifest(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") == "Bearer t":
            manifest_type = "application/vnd.oci.image.manifest.v1+json"
            return web.Response(body=b"{}", content_type=manifest_type)
        realm = f"http://{self.host}/token"
        challenge = f'Bearer realm="{realm}",service="hostile"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    async def token(self, _: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type="application/json")


@pytest.fixture
async def hostile() -> AsyncIterator[HostileRegistry]:
    registry_server = HostileRegistry(b"")
    await registry_server.server.start_server()
    try:
        yield registry_server
    finally:
        await registry_server.server.close()


def _client(session: aiohttp.ClientSession, hostile: HostileRegistry) -> registry.RegistryClient:
    return registry.RegistryClient(session, insecure=frozenset({hostile.host}), retries=0)


async def test_a_nesting_bomb_referrers_index_is_a_registry_error(
    hostile: HostileRegistry,
) -> None:
    hostile.body = NESTING_BOMB
    async with aiohttp.ClientSession() as session:
        with pytest.raises(registry.RegistryError, match="not an OCI index"):
            await _client(session, hostile).referrers(hostile.host, "team/app", V03_DIGEST)


async def test_a_nesting_bomb_token_answer_is_a_registry_error(hostile: HostileRegistry) -> None:
    hostile.body = NESTING_BOMB
    async with aiohttp.ClientSession() as session:
        with pytest.raises(registry.RegistryError, match="token service failed"):
            await _client(session, hostile).manifest(hostile.host, "team/app", "v1")


async def test_a_token_lifetime_past_any_float_is_kept_for_a_bounded_time(
    hostile: HostileRegistry,
) -> None:
    """`expires_in` of 400 digits made `float()` raise OverflowError out of the client."""
    hostile.body = b'{"token": "t", "expires_in": 1' + b"0" * 400 + b"}"
    async with aiohttp.ClientSession() as session:
        body, _ = await _client(session, hostile).manifest(hostile.host, "team/app", "v1")
    assert body == b"{}"
