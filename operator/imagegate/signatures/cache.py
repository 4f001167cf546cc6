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

Shared (`--workers`, design.md §13): `on_stored` is told of each verdict this cache stored from
its own verification, as a `SharedVerdict`; another process's cache takes it with `insert`,
under the same key and with the expiry it had here, and only what `_store` would have kept.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from imagegate.policy import engine
from imagegate.registry import staleness

POSITIVE_TTL = 300.0
NEGATIVE_TTL = 10.0
MAX_ENTRIES = 10_000

Key = tuple[str, Hashable]
#: What a verdict can have failed (engine.SignatureVerdict.failed).
FAILED_KINDS = frozenset({"signature", "attestation"})


class UnsharableVerdict(ValueError):
    """A shared verdict this cache would not have stored itself (it is refused)."""


@dataclass(frozen=True)
class SharedVerdict:
    """A verdict one cache verified, as another takes it (design.md §13): relative times, so
    the two need not share a clock."""

    key: Key
    verdict: engine.SignatureVerdict
    #: Seconds it has left to live, and since it was verified.
    expires_in: float
    age: float


def _storable(verdict: engine.SignatureVerdict) -> bool:
    # "No registry answer" is not a verdict on the image: do not remember it.
    return verdict.verified or not verdict.reason.startswith("registry error")


def _check_shared(shared: object, ttl: Callable[[engine.SignatureVerdict], float]) -> SharedVerdict:
    """`shared` if it is a verdict this cache could have stored itself; UnsharableVerdict if not."""
    if not isinstance(shared, SharedVerdict):
        raise UnsharableVerdict(f"not a shared verdict: {type(shared).__name__}")
    key, verdict = shared.key, shared.verdict
    if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)):
        raise UnsharableVerdict("the key is not (subject, requirement)")
    try:
        hash(key)
    except TypeError:
        raise UnsharableVerdict("the requirement cannot be a key") from None
    if not (
        isinstance(verdict, engine.SignatureVerdict)
        and isinstance(verdict.verified, bool)
        and isinstance(verdict.reason, str)
        and (verdict.digest is None or isinstance(verdict.digest, str))
        and verdict.failed in FAILED_KINDS
    ):
        raise UnsharableVerdict("the verdict is malformed")
    if not _storable(verdict):
        raise UnsharableVerdict("a registry error is not a verdict")
    # A verdict answers for the digest it names only (the subject is `name@digest`); every
    # verdict a verification stores names its digest.
    if verdict.digest is None or not key[0].endswith(f"@{verdict.digest}"):
        raise UnsharableVerdict("the verdict is not about its key's digest")
    for seconds in (shared.expires_in, shared.age):
        if not (isinstance(seconds, float | int) and math.isfinite(seconds) and seconds >= 0):
            raise UnsharableVerdict("its times are not seconds")
    if not 0 < shared.expires_in <= ttl(verdict):
        raise UnsharableVerdict("it would live longer than this cache keeps it")
    return shared


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
        #: Told of each verdict stored from this cache's own verification (not of inserts).
        self.on_stored: Callable[[SharedVerdict], None] | None = None

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
        if _storable(verdict):
            ttl, now = self._ttl(verdict), self._clock()
            self._store(key, _Entry(now + ttl, verdict, now))
            if self.on_stored is not None:
                self.on_stored(SharedVerdict(key, verdict, ttl, 0.0))
        return verdict

    def insert(self, shared: object) -> None:
        """Store a verdict another cache verified (`on_stored` there), with the time it had
        left; UnsharableVerdict if this cache would not have stored it itself. An entry here
        that lives longer is kept."""
        checked = _check_shared(shared, self._ttl)
        now = self._clock()
        expires = now + checked.expires_in
        current = self._entries.get(checked.key)
        if current is not None and current.expires >= expires:
            return
        self._store(checked.key, _Entry(expires, checked.verdict, now - checked.age))

    def _ttl(self, verdict: engine.SignatureVerdict) -> float:
        return self._positive_ttl if verdict.verified else self._negative_ttl

    def _store(self, key: Key, entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
