"""Verification material kept in the cluster: keys in Secrets, trust roots in ConfigMaps.

Namespaces follow one rule: an ImagePolicy may only read objects in its own namespace (whatever
its reference says), a ClusterImagePolicy reads the namespace its reference names, or
imagegate's own namespace. Values are cached briefly, so a rotation is picked up within a minute.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any, Protocol

from kubernetes import client

from imagegate.errors import ImagegateError

TTL = 60.0
NEGATIVE_TTL = 10.0
MAX_ENTRIES = 10_000


class MaterialError(ImagegateError):
    """A Secret or key that the policy names cannot be read."""


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
    not turn every admission into an extra API call.
    """

    def __init__(
        self, api: client.ApiClient, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._clock = clock
        self._cache: dict[tuple[str, str, str], tuple[float, dict[str, str] | MaterialError]] = {}

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
        except client.ApiException as error:
            failure = MaterialError(
                f"cannot read {kind} {namespace}/{name}: {error.reason} ({error.status})"
            )
            self._remember(cache_key, (self._clock() + NEGATIVE_TTL, failure))
            raise failure from error
        self._remember(cache_key, (self._clock() + TTL, data))
        return data

    def _remember(
        self, key: tuple[str, str, str], value: tuple[float, dict[str, str] | MaterialError]
    ) -> None:
        # Bounded: Pods name pull secrets, and whoever writes a Pod can name a million.
        self._cache.pop(key, None)
        self._cache[key] = value
        while len(self._cache) > MAX_ENTRIES:
            del self._cache[next(iter(self._cache))]

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        found: Any  # V1Secret.data is typed loosely by the client
        if kind == "Secret":
            found = self._core.read_namespaced_secret(name, namespace).data
            return dict(found or {})
        if kind == "ConfigMap":
            found = self._core.read_namespaced_config_map(name, namespace).data
            return dict(found or {})
        account = self._core.read_namespaced_service_account(name, namespace)
        # Kept as data entries so that one cache serves all three kinds.
        return {
            f"pull/{index:04d}": ref.name
            for index, ref in enumerate(account.image_pull_secrets or [])
            if ref.name
        }


def _pick(data: dict[str, str], key: str, what: str) -> str:
    value = data.get(key)
    if value is None:
        raise MaterialError(f"{what} has no key {key!r}")
    return value
