"""A registry outage, a slow registry and a rate-limiting one, behind both webhooks.

The webhooks are wired as `cluster/operator.py` wires them (one tag cache shared by /mutate and
/validate, a verdict cache, stale-if-error bounded by `stale_ttl`) and served by the real
handler (`server.build_app`), so a 504 from the deadline would show. Between the registry client
and the real local registry sits `netproxy.TcpProxy`: stopping it makes the registry refuse
connections, a first-byte delay makes it slow. The caches read a clock the test moves forward,
so "after the tag TTL (30 s) and the verdict TTL (300 s)" needs no waiting; the registry client
keeps the real clock, so its timeouts and deadlines are real.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from imagegate.admission import reviewers, server
from imagegate.policy import engine, model
from imagegate.policy.compile import compile_policy
from imagegate.registry import client as oci
from imagegate.registry import pinning
from imagegate.signatures.cache import VerdictCache
from imagegate.signatures.verifier import CosignVerifier
from imagegate.testbed.registry import LocalRegistry
from imagegate.trail import metrics
from netproxy import Shaping, TcpProxy
from support import cosign_key_pair, cosign_sign, pod_review, push_random_image

pytestmark = [pytest.mark.registry, pytest.mark.cosign]


class Clock:
    """time.monotonic, moved forward by the test."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


class Policies:
    def __init__(self, policy: engine.CompiledPolicy) -> None:
        self._policies = [policy]

    def policies(self) -> list[engine.CompiledPolicy]:
        return self._policies

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": namespace}


def signed_by(registry: str, public_key: str | None) -> engine.CompiledPolicy:
    source: dict[str, Any] = {"name": "ours", "images": [f"{registry}/**"]}
    if public_key is not None:
        source["signatures"] = {
            "keys": [{"publicKey": public_key}],
            "requireTransparencyLog": False,
        }
    return compile_policy(
        model.parse_policy_document(
            {
                "apiVersion": "imagegate.dev/v1alpha1",
                "kind": "ClusterImagePolicy",
                "metadata": {"name": "signed"},
                "spec": {"mode": "enforce", "pinDigests": True, "sources": [source]},
            }
        )
    )


@dataclass
class Gate:
    """Both webhooks over one registry address, with the operator's wiring."""

    http: TestClient[web.Request, web.Application]
    metrics: metrics.Metrics
    clock: Clock

    async def admit(self, webhook: str, image: str) -> dict[str, Any]:
        async with self.http.post(f"/{webhook}", json=pod_review("default", image)) as reply:
            assert reply.status == 200
            body: dict[str, Any] = await reply.json()
            response: dict[str, Any] = body["response"]
            return response

    def counted(self, name: str, registry: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"registry": registry})
        return value or 0.0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


Wire = Callable[..., Awaitable[Gate]]


@pytest.fixture
async def wire(session: aiohttp.ClientSession) -> AsyncIterator[Wire]:
    """Builds a `Gate` over a registry address; closes them all after the test."""
    opened: list[TestClient[web.Request, web.Application]] = []

    async def build(
        registry: str,
        public_key: str | None,
        *,
        deadline: float = server.DEFAULT_DEADLINE,
        stale_ttl: float = 3600.0,
    ) -> Gate:
        counters, clock = metrics.Metrics(), Clock()
        client = oci.RegistryClient(
            session, insecure=frozenset({registry}), on_error=counters.registry_error
        )
        # As cluster/operator.py wires them: one resolver for both webhooks.
        resolver = pinning.CachingResolver(
            client, stale_ttl=stale_ttl, clock=clock, on_stale=counters.stale_digest
        )
        verdicts = VerdictCache(stale_ttl=stale_ttl, clock=clock, on_stale=counters.stale_verdict)
        verifier = CosignVerifier(client, verdicts, resolver=resolver)
        policies = Policies(signed_by(registry, public_key))
        app = server.build_app(
            validate=reviewers.Validator(policies, verifier),
            mutate=reviewers.Mutator(policies, resolver),
            deadline=deadline,
        )
        http = TestClient(TestServer(app, host="127.0.0.1"))
        await http.start_server()
        opened.append(http)
        return Gate(http, counters, clock)

    yield build
    for http in opened:
        await http.close()


@pytest.fixture(scope="module")
def signer(cosign: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cosign_key_pair(cosign, tmp_path_factory.mktemp("outage-keys"), "signer")


def proxy_to(registry: LocalRegistry, down: Shaping | None = None) -> TcpProxy:
    host, port = registry.address.rsplit(":", 1)
    return TcpProxy(host, int(port), down=down)


def push_signed(
    registry: LocalRegistry, crane: Path, cosign: Path, signer: Path, repository: str, tmp: Path
) -> str:
    digest = push_random_image(crane, registry.address, repository, "v1", tmp)
    cosign_sign(cosign, Path(f"{signer}.key"), f"{registry.address}/{repository}@{digest}")
    return digest


def pinned_to(response: dict[str, Any]) -> list[str]:
    """The images a /mutate response's patch sets."""
    if "patch" not in response:
        return []
    return [op["value"] for op in json.loads(base64.b64decode(response["patch"]))]


# -- 4: an outage ---------------------------------------------------------------------------------


async def test_an_outage_admits_a_verified_tag_with_its_last_digest_and_says_so(
    wire: Wire, registry: LocalRegistry, crane: Path, cosign: Path, signer: Path, tmp_path: Path
) -> None:
    """/mutate resolves the tag; /validate sees only the pinned digest. Then the registry goes
    away, both caches expire, and a Pod naming the tag comes: /validate, which never resolved
    the tag itself, uses the digest /mutate verified (one cache), and the verdict it had."""
    digest = push_signed(registry, crane, cosign, signer, "outage/app", tmp_path)
    async with proxy_to(registry) as proxy:
        gate = await wire(proxy.address, Path(f"{signer}.pub").read_text())
        tagged = f"{proxy.address}/outage/app:v1"
        mutated = await gate.admit("mutate", tagged)
        assert pinned_to(mutated) == [f"{tagged}@{digest}"]
        validated = await gate.admit("validate", f"{tagged}@{digest}")
        assert validated["allowed"], validated
        await proxy.stop()  # the registry now refuses every connection
        gate.clock.skew = 400.0  # past the tag TTL (30 s) and the verdict TTL (300 s)

        mutated = await gate.admit("mutate", tagged)
        validated = await gate.admit("validate", tagged)

    assert mutated["allowed"]
    assert pinned_to(mutated) == [f"{tagged}@{digest}"]
    assert validated["allowed"], validated.get("status")
    tag_warning = (
        f"imagegate: registry {proxy.address} unreachable; used the digest verified "
        f"{{}}s ago for tag {tagged}"
    )
    assert any(_matches(w, tag_warning) for w in mutated["warnings"]), mutated["warnings"]
    assert any(_matches(w, tag_warning) for w in validated["warnings"]), validated["warnings"]
    verdict_warning = (
        f"imagegate: registry {proxy.address} unreachable; used the signature verdict verified "
        f"{{}}s ago for digest {proxy.address}/outage/app@{digest}"
    )
    assert any(_matches(w, verdict_warning) for w in validated["warnings"])
    assert gate.counted("imagegate_stale_digests_total", proxy.address) == 2  # mutate, validate
    assert gate.counted("imagegate_stale_verdicts_total", proxy.address) == 1


async def test_past_the_stale_bound_an_outage_denies_again(
    wire: Wire, registry: LocalRegistry, crane: Path, cosign: Path, signer: Path, tmp_path: Path
) -> None:
    digest = push_signed(registry, crane, cosign, signer, "outage/old", tmp_path)
    async with proxy_to(registry) as proxy:
        gate = await wire(proxy.address, Path(f"{signer}.pub").read_text(), stale_ttl=600)
        tagged = f"{proxy.address}/outage/old:v1"
        assert (await gate.admit("validate", tagged))["allowed"]
        await proxy.stop()
        gate.clock.skew = 601.0
        validated = await gate.admit("validate", tagged)
        pinned = await gate.admit("validate", f"{tagged}@{digest}")
    assert not validated["allowed"]
    assert "registry error" in validated["status"]["message"]
    assert not pinned["allowed"]  # the verdict is as old as the digest: past the bound too
    assert gate.counted("imagegate_stale_digests_total", proxy.address) == 0


async def test_a_denial_is_never_served_stale(
    wire: Wire, registry: LocalRegistry, crane: Path, signer: Path, tmp_path: Path
) -> None:
    """Unsigned: denied while the registry answers; during the outage still denied, and for
    the outage (the registry error), not from a remembered verdict."""
    digest = push_random_image(crane, registry.address, "outage/unsigned", "v1", tmp_path)
    async with proxy_to(registry) as proxy:
        gate = await wire(proxy.address, Path(f"{signer}.pub").read_text())
        image = f"{proxy.address}/outage/unsigned@{digest}"
        before = await gate.admit("validate", image)
        await proxy.stop()
        gate.clock.skew = 400.0
        during = await gate.admit("validate", image)
    assert "no signature found" in before["status"]["message"]
    assert not during["allowed"]
    assert "registry error" in during["status"]["message"]
    assert gate.counted("imagegate_stale_verdicts_total", proxy.address) == 0


# -- 5: a slow registry, a rate-limiting one ------------------------------------------------------


async def test_a_slow_registry_never_makes_mutate_deny_and_it_answers_within_its_budget(
    wire: Wire, registry: LocalRegistry, crane: Path, tmp_path: Path
) -> None:
    """20 concurrent /mutate calls while the registry takes longer than the whole deadline."""
    push_random_image(crane, registry.address, "slow/app", "v1", tmp_path)
    deadline = 3.0
    async with proxy_to(registry, Shaping(first_byte_delay=30)) as proxy:
        gate = await wire(proxy.address, None, deadline=deadline)
        image = f"{proxy.address}/slow/app:v1"
        started = time.monotonic()
        answers = await asyncio.gather(*(gate.admit("mutate", image) for _ in range(20)))
        elapsed = time.monotonic() - started
    budget = deadline * reviewers.MUTATE_BUDGET_SHARE
    for answer in answers:
        assert answer["allowed"]
        assert "status" not in answer
        assert pinned_to(answer) == []
        assert answer["warnings"] == [
            f"imagegate: could not pin within {budget:.1f}s; validation decides"
        ]
    # Generous: the point is that /mutate left /validate its deadline, not how fast it was.
    assert elapsed < deadline


async def test_a_retry_after_past_the_mutate_budget_fails_at_once() -> None:
    """The real registry never answers 429, so a stub does: HEAD on a manifest → 429,
    Retry-After 5 s (past /mutate's 3.2 s budget of an 8 s deadline, within the deadline)."""
    asked = 0

    async def limited(request: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        return web.Response(status=429, headers={"Retry-After": "5"})

    app = web.Application()
    app.router.add_route("*", "/v2/{repository:.+}/manifests/{reference}", limited)
    stub = TestServer(app, host="127.0.0.1")
    await stub.start_server()
    address = f"127.0.0.1:{stub.port}"
    try:
        async with aiohttp.ClientSession() as session:
            resolver = pinning.CachingResolver(
                oci.RegistryClient(session, insecure=frozenset({address}))
            )
            mutate = reviewers.Mutator(Policies(signed_by(address, None)), resolver)
            http = TestClient(TestServer(server.build_app(validate=mutate, mutate=mutate)))
            await http.start_server()
            try:
                started = time.monotonic()
                async with http.post(
                    "/mutate", json=pod_review("default", f"{address}/app:v1")
                ) as reply:
                    answer = (await reply.json())["response"]
                elapsed = time.monotonic() - started
            finally:
                await http.close()
    finally:
        await stub.close()
    assert answer["allowed"]
    assert answer["warnings"] == [
        f"imagegate: could not pin {address}/app:v1: {address} is rate limiting requests (429); "
        "no time left to retry before the deadline"
    ]
    assert asked == 1
    assert elapsed < 5.0  # did not sleep the Retry-After


def _matches(text: str, template: str) -> bool:
    """`template` with one `{}` standing for a number of seconds."""
    before, after = template.split("{}")
    middle = text[len(before) : len(text) - len(after)]
    return text.startswith(before) and text.endswith(after) and middle.isdigit()
