from __future__ import annotations

import asyncio

import pytest

from imagegate.policy.engine import SignatureVerdict
from imagegate.signatures.cache import VerdictCache


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class Verify:
    def __init__(self, verdict: SignatureVerdict, gate: asyncio.Event | None = None) -> None:
        self.calls = 0
        self.verdict = verdict
        self.gate = gate

    async def __call__(self) -> SignatureVerdict:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.verdict


OK = SignatureVerdict(True, digest="sha256:" + "a" * 64)
NO = SignatureVerdict(False, "no signature found")


async def test_positive_verdicts_live_longer_than_negative_ones() -> None:
    clock = Clock()
    cache = VerdictCache(positive_ttl=300, negative_ttl=10, clock=clock)
    good, bad = Verify(OK), Verify(NO)
    for _ in range(3):
        assert await cache.get_or_verify(("a@d", "req"), good) == OK
        assert await cache.get_or_verify(("b@d", "req"), bad) == NO
    assert (good.calls, bad.calls) == (1, 1)
    clock.now = 11
    await cache.get_or_verify(("a@d", "req"), good)
    await cache.get_or_verify(("b@d", "req"), bad)
    assert (good.calls, bad.calls) == (1, 2)
    assert (cache.hits, cache.misses) == (5, 3)


async def test_the_requirement_is_part_of_the_key() -> None:
    cache = VerdictCache()
    verify = Verify(OK)
    await cache.get_or_verify(("a@d", "policy-1"), verify)
    await cache.get_or_verify(("a@d", "policy-2"), verify)
    assert verify.calls == 2


async def test_concurrent_requests_for_one_digest_are_collapsed() -> None:
    cache = VerdictCache()
    gate = asyncio.Event()
    verify = Verify(OK, gate)
    waiting = [asyncio.create_task(cache.get_or_verify(("a@d", "r"), verify)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == [OK] * 20
    assert verify.calls == 1


async def test_a_failure_reaches_every_waiter_and_is_not_cached() -> None:
    cache = VerdictCache()
    gate = asyncio.Event()

    async def explode() -> SignatureVerdict:
        await gate.wait()
        raise RuntimeError("boom")

    waiting = [asyncio.create_task(cache.get_or_verify(("a@d", "r"), explode)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(cache) == 0


async def test_registry_trouble_is_not_remembered_as_a_verdict() -> None:
    cache = VerdictCache()
    verify = Verify(SignatureVerdict(False, "registry error: r did not answer"))
    await cache.get_or_verify(("a@d", "r"), verify)
    await cache.get_or_verify(("a@d", "r"), verify)
    assert verify.calls == 2


@pytest.mark.parametrize("size", [1, 3])
async def test_the_cache_is_bounded(size: int) -> None:
    cache = VerdictCache(max_entries=size)
    for n in range(10):
        await cache.get_or_verify((f"{n}@d", "r"), Verify(OK))
    assert len(cache) == size
