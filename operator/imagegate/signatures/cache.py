"""Verdicts cached by (digest, requirement), with concurrent requests collapsed into one.

A Deployment scaling to 50 replicas asks 50 times about the same digest within a second; one
verification answers them all. Positive verdicts live longer than negative ones, so a signature
pushed a moment after a denial is found again soon. Bounded in entries, so memory stays flat.
The key includes the whole requirement (keys, identities, transparency rule): a verdict under
one policy never answers for another.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from imagegate.policy import engine

POSITIVE_TTL = 300.0
NEGATIVE_TTL = 10.0
MAX_ENTRIES = 10_000

Key = tuple[str, Hashable]


class VerdictCache:
    def __init__(
        self,
        *,
        positive_ttl: float = POSITIVE_TTL,
        negative_ttl: float = NEGATIVE_TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[Key, tuple[float, engine.SignatureVerdict]] = OrderedDict()
        self._inflight: dict[Key, asyncio.Future[engine.SignatureVerdict]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_verify(
        self, key: Key, verify: Callable[[], Awaitable[engine.SignatureVerdict]]
    ) -> engine.SignatureVerdict:
        cached = self._entries.get(key)
        if cached is not None and cached[0] > self._clock():
            self._entries.move_to_end(key)
            self.hits += 1
            return cached[1]
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
        self._entries[key] = (self._clock() + ttl, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
