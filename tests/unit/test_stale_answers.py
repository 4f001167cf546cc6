"""Stale-if-error in the tag cache and the verdict cache: which errors, how long, and said."""

from __future__ import annotations

from typing import Any

import pytest

from imagegate.core import reference
from imagegate.policy import engine
from imagegate.registry import client as registry
from imagegate.registry import pinning, staleness
from imagegate.signatures.cache import VerdictCache

DIGEST = "sha256:" + "a" * 64


class Client:
    """Answers DIGEST until told to raise `failure`."""

    def __init__(self) -> None:
        self.failure: Exception | None = None

    async def resolve(self, image: reference.ImageReference, *, deadline: Any = None) -> Any:
        if self.failure is not None:
            raise self.failure
        return registry.Descriptor("application/vnd.oci.image.manifest.v1+json", DIGEST, 1)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def resolver(client: Client, clock: Clock, stale: list[str]) -> pinning.CachingResolver:
    return pinning.CachingResolver(
        client,  # type: ignore[arg-type]
        ttl=30,
        stale_ttl=3600,
        clock=clock,
        on_stale=stale.append,
    )


@pytest.mark.parametrize(
    "failure",
    [registry.RegistryUnavailable("down"), registry.RateLimited("429")],
    ids=["unavailable", "rate-limited"],
)
async def test_an_unreachable_registry_gets_the_last_digest_reported(failure: Exception) -> None:
    client, clock, stale = Client(), Clock(), []
    tags = resolver(client, clock, stale)
    image = reference.parse("ghcr.io/o/app:v1")
    assert await tags.resolve(image, 0) == DIGEST
    client.failure, clock.now = failure, 90.0
    with staleness.collecting() as answers:
        assert await tags.resolve(image, 0) == DIGEST
    assert stale == ["ghcr.io"]
    assert staleness.warnings(answers) == [
        "imagegate: registry ghcr.io unreachable; used the digest verified 90s ago for tag "
        "ghcr.io/o/app:v1"
    ]


@pytest.mark.parametrize(
    "failure",
    [
        registry.Unauthorized("401"),
        registry.ManifestUnknown("404"),
        registry.DigestMismatch("mismatch"),
    ],
    ids=["401", "404", "digest-mismatch"],
)
async def test_an_answer_is_never_overruled_by_memory(failure: Exception) -> None:
    client, clock, stale = Client(), Clock(), []
    tags = resolver(client, clock, stale)
    image = reference.parse("ghcr.io/o/app:v1")
    await tags.resolve(image, 0)
    client.failure, clock.now = failure, 90.0
    with pytest.raises(type(failure)):
        await tags.resolve(image, 0)
    assert stale == []


async def test_a_digest_older_than_the_stale_bound_is_not_served() -> None:
    client, clock, stale = Client(), Clock(), []
    tags = resolver(client, clock, stale)
    image = reference.parse("ghcr.io/o/app:v1")
    await tags.resolve(image, 0)
    client.failure, clock.now = registry.RegistryUnavailable("down"), 3600.0
    with pytest.raises(registry.RegistryUnavailable):
        await tags.resolve(image, 0)


async def unreachable() -> engine.SignatureVerdict:
    raise registry.RegistryUnavailable("down")


async def test_an_expired_positive_verdict_answers_while_unreachable_a_negative_never() -> None:
    clock, stale = Clock(), []
    cache = VerdictCache(
        positive_ttl=300, negative_ttl=10, stale_ttl=3600, clock=clock, on_stale=stale.append
    )
    good, bad = ("ghcr.io/o/app@" + DIGEST, "r"), ("ghcr.io/o/bad@" + DIGEST, "r")

    async def yes() -> engine.SignatureVerdict:
        return engine.SignatureVerdict(True, digest=DIGEST)

    async def no() -> engine.SignatureVerdict:
        return engine.SignatureVerdict(False, "no signature found", digest=DIGEST)

    await cache.get_or_verify(good, yes)
    await cache.get_or_verify(bad, no)
    clock.now = 400.0
    with staleness.collecting() as answers:
        verdict = await cache.get_or_verify(good, unreachable, registry="ghcr.io")
    assert verdict.verified
    assert stale == ["ghcr.io"]
    assert [a.what for a in answers] == ["signature verdict"]
    with pytest.raises(registry.RegistryUnavailable):
        await cache.get_or_verify(bad, unreachable, registry="ghcr.io")
    clock.now = 3601.0
    with pytest.raises(registry.RegistryUnavailable):
        await cache.get_or_verify(good, unreachable, registry="ghcr.io")
