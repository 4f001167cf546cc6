"""Tag → digest, with a short-lived cache (tags move; digests do not) shared by both webhooks.

`/mutate` pins and `/validate` verifies the same tag: one resolver answers both, so what
`/mutate` resolved `/validate` reuses instead of asking the registry again. While the registry
is unreachable, the last digest verified for a tag is served for `stale_ttl` (staleness.py says
why, and which errors count); each such answer is reported, so the admission warns about it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from imagegate.core.reference import ImageReference
from imagegate.registry import client as registry
from imagegate.registry import staleness
from imagegate.registry.keychain import Keychain

#: Long enough to absorb a Deployment's burst of identical pods, short enough to follow a retag.
TAG_TTL = 30.0
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class _Entry:
    digest: str
    verified_at: float


class CachingResolver:
    """A `webhook.DigestResolver` over a registry client (LRU, TTL, stale-if-error, bounded)."""

    def __init__(
        self,
        client: registry.RegistryClient,
        *,
        ttl: float = TAG_TTL,
        stale_ttl: float = staleness.STALE_TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        on_stale: Callable[[str], None] | None = None,
    ) -> None:
        """`on_stale(registry)` is told of each digest served stale (metrics)."""
        self._client = client
        self._ttl = ttl
        self._stale_ttl = stale_ttl
        self._max = max_entries
        self._clock = clock
        self._on_stale = on_stale
        self._cache: OrderedDict[ImageReference, _Entry] = OrderedDict()

    async def resolve(
        self, image: ImageReference, deadline: float, keychain: Keychain | None = None
    ) -> str:
        """The digest `image` names now. Cached per image, not per credentials: a digest is a
        fact about the registry, and validation still reads the signatures with the caller's
        own credentials."""
        if image.digest is not None:
            return image.digest
        cached = self._cache.get(image)
        now = self._clock()
        if cached is not None and now - cached.verified_at < self._ttl:
            self._cache.move_to_end(image)
            return cached.digest
        client = self._client.using(keychain) if keychain is not None else self._client
        try:
            descriptor = await client.resolve(image, deadline=deadline or None)
        except staleness.UNREACHABLE:
            stale = self._stale(image, cached, now)
            if stale is None:
                raise
            return stale
        self._cache[image] = _Entry(descriptor.digest, now)
        self._cache.move_to_end(image)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return descriptor.digest

    def _stale(self, image: ImageReference, cached: _Entry | None, now: float) -> str | None:
        """The last verified digest while it is young enough (reported); None: too old."""
        if cached is None or now - cached.verified_at >= self._stale_ttl:
            return None
        age = now - cached.verified_at
        answer = staleness.StaleAnswer(image.registry, "digest", f"tag {image}", age)
        staleness.served(answer, self._on_stale)
        return cached.digest
