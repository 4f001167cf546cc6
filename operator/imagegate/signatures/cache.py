"""Verdicts cached by (digest, requirement), with concurrent requests collapsed into one.

A Deployment scaling to 50 replicas asks 50 times about the same digest within a second; one
verification answers them all. Positive verdicts live longer than negative ones, so a signature
pushed a moment after a denial is found again soon. Bounded in entries, so memory stays flat.
The key includes the whole requirement (keys, identities, transparency rule): a verdict under
one policy never answers for another.

Stale-if-error: when a verification fails because the registry is unreachable (it raises one
of `staleness.UNREACHABLE` instead of returning a verdict), an expired positive verdict no
older than `stale_ttl` answers instead, and is reported. Negative verdicts are never served
stale: a denial must not outlive the reason it was given.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from imagegate.policy import engine
from imagegate.registry import staleness

POSITIVE_TTL = 300.0
NEGATIVE_TTL = 10.0
MAX_ENTRIES = 10_000

Key = tuple[str, Hashable]


class _Entry:
    __slots__ = ("expires", "verdict", "verified_at")

    def __init__(self, expires: float, verdict: engine.SignatureVerdict, verified_at: float):
        self.expires = expires
        self.verdict = verdict
        self.verified_at = verified_at


class VerdictCache:
    def __init__(
        self,
        *,
        positive_ttl: float = POSITIVE_TTL,
        negative_ttl: float = NEGATIVE_TTL,
        stale_ttl: float = staleness.STALE_TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        on_stale: Callable[[str], None] | None = None,
    ) -> None:
        """`on_stale(registry)` is told of each verdict served stale (metrics)."""
        self._positive_ttl = positive_ttl
        self._stale_ttl = stale_ttl
        self._on_stale = on_stale
        self._negative_ttl = negative_ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._inflight: dict[Key, asyncio.Future[engine.SignatureVerdict]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_verify(
        self,
        key: Key,
        verify: Callable[[], Awaitable[engine.SignatureVerdict]],
        *,
        registry: str = "",
    ) -> engine.SignatureVerdict:
        """`registry`: where the digest lives, named in a stale answer's warning and metric."""
        cached = self._entries.get(key)
        if cached is not None and cached.expires > self._clock():
            self._entries.move_to_end(key)
            self.hits += 1
            return cached.verdict
        try:
            return await self._verify_once(key, verify)
        except staleness.UNREACHABLE:
            stale = self._stale(cached, registry, key[0])
            if stale is None:
                raise
            return stale

    def _stale(
        self, cached: _Entry | None, registry: str, subject: str
    ) -> engine.SignatureVerdict | None:
        """An expired positive verdict young enough to serve (reported); None otherwise."""
        if cached is None or not cached.verdict.verified:
            return None
        age = self._clock() - cached.verified_at
        if age >= self._stale_ttl:
            return None
        answer = staleness.StaleAnswer(registry, "signature verdict", f"digest {subject}", age)
        staleness.served(answer, self._on_stale)
        return cached.verdict

    async def _verify_once(
        self, key: Key, verify: Callable[[], Awaitable[engine.SignatureVerdict]]
    ) -> engine.SignatureVerdict:
        """One verification per key at a time; concurrent askers join the one in flight."""
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[engine.SignatureVerdict] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            verdict = await verify()
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved here, so an unawaited failure is not logged twice
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(verdict)
        self._store(key, verdict)
        return verdict

    def _store(self, key: Key, verdict: engine.SignatureVerdict) -> None:
        # "No registry answer" is not a verdict on the image: do not remember it.
        if not verdict.verified and verdict.reason.startswith("registry error"):
            return
        ttl = self._positive_ttl if verdict.verified else self._negative_ttl
        now = self._clock()
        self._entries[key] = _Entry(now + ttl, verdict, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
