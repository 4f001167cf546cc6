from __future__ import annotations

from typing import Any

from imagegate.core import reference
from imagegate.registry import client as registry
from imagegate.registry import pinning


class Client:
    def __init__(self) -> None:
        self.calls = 0
        self.digest = "sha256:" + "a" * 64

    async def resolve(self, image: reference.ImageReference, *, deadline: Any = None) -> Any:
        self.calls += 1
        return registry.Descriptor("application/vnd.oci.image.manifest.v1+json", self.digest, 1)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_tags_are_cached_for_the_ttl_then_resolved_again() -> None:
    client, clock = Client(), Clock()
    resolver = pinning.CachingResolver(client, ttl=30, clock=clock)  # type: ignore[arg-type]
    image = reference.parse("nginx:1.25")
    assert await resolver.resolve(image, 0) == client.digest
    await resolver.resolve(image, 0)
    assert client.calls == 1
    clock.now = 31
    client.digest = "sha256:" + "b" * 64  # the tag moved
    assert await resolver.resolve(image, 0) == client.digest
    assert client.calls == 2


async def test_digests_need_no_registry_and_the_cache_is_bounded() -> None:
    client = Client()
    resolver = pinning.CachingResolver(client, max_entries=2)  # type: ignore[arg-type]
    pinned = reference.parse("nginx@sha256:" + "d" * 64)
    assert await resolver.resolve(pinned, 0) == "sha256:" + "d" * 64
    assert client.calls == 0
    for tag in ("1", "2", "3"):
        await resolver.resolve(reference.parse(f"nginx:{tag}"), 0)
    await resolver.resolve(reference.parse("nginx:1"), 0)  # evicted: the oldest of three
    assert client.calls == 4
