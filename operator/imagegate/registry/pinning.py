"""Tag → digest for pinning, with a short-lived cache (tags move; digests do not)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from imagegate.core.reference import ImageReference
from imagegate.registry import client as registry
from imagegate.registry.keychain import Keychain

#: Long enough to absorb a Deployment's burst of identical pods, short enough to follow a retag.
TAG_TTL = 30.0
MAX_ENTRIES = 10_000


class CachingResolver:
    """A `webhook.DigestResolver` over a registry client (LRU, TTL, bounded)."""

    def __init__(
        self,
        client: registry.RegistryClient,
        *,
        ttl: float = TAG_TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._cache: OrderedDict[ImageReference, tuple[float, str]] = OrderedDict()

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
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(image)
            return cached[1]
        client = self._client.using(keychain) if keychain is not None else self._client
        descriptor = await client.resolve(image, deadline=deadline or None)
        self._cache[image] = (now + self._ttl, descriptor.digest)
        self._cache.move_to_end(image)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return descriptor.digest
