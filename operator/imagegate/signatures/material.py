"""Verification material kept in the cluster: keys in Secrets, trust roots in ConfigMaps.

Namespaces follow one rule: an ImagePolicy may only read objects in its own namespace (whatever
its reference says), a ClusterImagePolicy reads the namespace its reference names, or
imagegate's own namespace. Values are cached briefly, so a rotation is picked up within a minute.

When the API server cannot be reached (a transport error, or a 5xx/429 answer), the last value
read is served for up to `STALE_FOR` seconds past its freshness, so an API server outage or
restart does not turn every signature-checked admission into a denial. A definite answer (404,
403) is never papered over.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import urllib3
from kubernetes import client

from imagegate.errors import ImagegateError
from imagegate.signatures import apiserver

logger = logging.getLogger(__name__)

TTL = 60.0
NEGATIVE_TTL = 10.0
#: How long past its TTL a value is still served while the API server is unreachable.
STALE_FOR = 300.0
#: (connect, read) seconds per API call: a stalled API server must not eat the admission deadline.
REQUEST_TIMEOUT = (2.0, 3.0)
MAX_ENTRIES = 10_000
#: What the client raises when it got no answer at all (refused, reset, timed out, TLS).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError)


CacheKey = tuple[str, str, str]  # (kind, namespace, name)
Entry = TypeVar("Entry")


class MaterialError(ImagegateError):
    """A Secret or key that the policy names cannot be read."""


def unreachable(error: BaseException) -> bool:
    """Whether a failed API call says nothing about the object (no answer, or a server error)."""
    if isinstance(error, client.ApiException):
        return error.status is None or error.status == 429 or int(error.status) >= 500
    return isinstance(error, TRANSPORT_ERRORS)


class SecretReader(Protocol):
    async def read(self, namespace: str, name: str, key: str) -> bytes: ...


class ClusterMaterial(SecretReader, Protocol):
    async def read_config_map(self, namespace: str, name: str, key: str) -> str: ...


def secret_namespace(
    policy_namespace: str | None, requested: str | None, own_namespace: str
) -> str:
    """Where a secretRef may be read from (see the module docstring)."""
    if policy_namespace is not None:
        return policy_namespace
    return requested or own_namespace


class KubernetesMaterial:
    """Secrets, ConfigMaps and ServiceAccounts read through the API server, cached briefly.

    A failed read is cached too, for a shorter time, so a Pod naming a missing pull secret does
    not turn every admission into an extra API call. While the API server is unreachable, the
    last good value is served for `stale_for` seconds past its `ttl` (stale-if-error).
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        ttl: float = TTL,
        stale_for: float = STALE_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._server = apiserver.ApiServer(api, timeout=REQUEST_TIMEOUT)
        self._ttl = ttl
        self._stale_for = stale_for
        self._clock = clock
        self._cache: dict[CacheKey, tuple[float, dict[str, str] | MaterialError]] = {}
        #: The last good read of each object and when it was made: what an outage is served.
        self._good: dict[CacheKey, tuple[float, dict[str, str]]] = {}
        self._serving_stale = False

    async def read(self, namespace: str, name: str, key: str) -> bytes:
        data = await self._data("Secret", namespace, name)
        return base64.b64decode(_pick(data, key, f"Secret {namespace}/{name}"))

    async def read_config_map(self, namespace: str, name: str, key: str) -> str:
        return _pick(
            await self._data("ConfigMap", namespace, name), key, f"ConfigMap {namespace}/{name}"
        )

    async def secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        data = await self._data("Secret", namespace, name)
        return {key: base64.b64decode(value) for key, value in data.items()}

    async def service_account_pull_secrets(self, namespace: str, name: str) -> tuple[str, ...]:
        data = await self._data("ServiceAccount", namespace, name)
        return tuple(value for key, value in sorted(data.items()) if key.startswith("pull/"))

    async def _data(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        cache_key = (kind, namespace, name)
        cached = self._cache.get(cache_key)
        if cached is not None and cached[0] > self._clock():
            if isinstance(cached[1], MaterialError):
                raise cached[1]
            return cached[1]
        try:
            data = await asyncio.to_thread(self._read, kind, namespace, name)
        except (client.ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            if unreachable(error):
                stale = self._stale(cache_key)
                if stale is not None:
                    return stale
            failure = MaterialError(f"cannot read {kind} {namespace}/{name}: {_describe(error)}")
            _remember(self._cache, cache_key, (self._clock() + NEGATIVE_TTL, failure))
            raise failure from error
        if self._serving_stale:
            self._serving_stale = False
            logger.info("the API server answers again: Secrets and ConfigMaps are read afresh")
        now = self._clock()
        _remember(self._cache, cache_key, (now + self._ttl, data))
        _remember(self._good, cache_key, (now, data))
        return data

    def _stale(self, key: CacheKey) -> dict[str, str] | None:
        """The last good value, while it is within `stale_for` past its TTL; logged once."""
        good = self._good.get(key)
        now = self._clock()
        if good is None or good[0] + self._ttl + self._stale_for <= now:
            return None
        until = good[0] + self._ttl + self._stale_for
        if not self._serving_stale:
            self._serving_stale = True
            logger.warning(
                "the API server is unreachable: serving Secrets, ConfigMaps and ServiceAccounts "
                "as last read, for up to %.0fs past their %.0fs freshness",
                self._stale_for,
                self._ttl,
            )
        # Retry the API server after a short while, not on every admission.
        _remember(self._cache, key, (min(now + NEGATIVE_TTL, until), good[1]))
        return good[1]

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        plural = kind.lower() + "s"  # secrets, configmaps, serviceaccounts: regular plurals
        found = self._server.get(apiserver.core_path(namespace, plural, name))
        if kind != "ServiceAccount":
            return {str(key): str(value) for key, value in (found.get("data") or {}).items()}
        # Kept as data entries so that one cache serves all three kinds.
        refs = found.get("imagePullSecrets") or []
        names = [ref.get("name") for ref in refs if isinstance(ref, dict)]
        return {f"pull/{index:04d}": str(name) for index, name in enumerate(names) if name}


def _remember(cache: dict[CacheKey, Entry], key: CacheKey, value: Entry) -> None:
    # Bounded: Pods name pull secrets, and whoever writes a Pod can name a million.
    cache.pop(key, None)
    cache[key] = value
    while len(cache) > MAX_ENTRIES:
        del cache[next(iter(cache))]


def _describe(error: BaseException) -> str:
    if isinstance(error, client.ApiException):
        return f"{error.reason} ({error.status})"
    return f"the API server is unreachable ({type(error).__name__})"


def _pick(data: dict[str, str], key: str, what: str) -> str:
    value = data.get(key)
    if value is None:
        raise MaterialError(f"{what} has no key {key!r}")
    return value
