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
from typing import Protocol

from kubernetes import client

from imagegate.errors import ImagegateError

TTL = 60.0


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
    def __init__(
        self, api: client.ApiClient, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._clock = clock
        self._cache: dict[tuple[str, str, str, str], tuple[float, bytes]] = {}

    async def read(self, namespace: str, name: str, key: str) -> bytes:
        encoded = await self._value("Secret", namespace, name, key)
        return base64.b64decode(encoded)

    async def read_config_map(self, namespace: str, name: str, key: str) -> str:
        return (await self._value("ConfigMap", namespace, name, key)).decode()

    async def _value(self, kind: str, namespace: str, name: str, key: str) -> bytes:
        """One data value of a Secret (still base64) or ConfigMap, cached for TTL seconds."""
        cache_key = (kind, namespace, name, key)
        cached = self._cache.get(cache_key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        read = (
            self._core.read_namespaced_secret
            if kind == "Secret"
            else self._core.read_namespaced_config_map
        )
        try:
            found: client.V1Secret | client.V1ConfigMap = await asyncio.to_thread(
                read, name, namespace
            )
        except client.ApiException as error:
            raise MaterialError(
                f"cannot read {kind} {namespace}/{name}: {error.reason} ({error.status})"
            ) from error
        value = (found.data or {}).get(key)
        if value is None:
            raise MaterialError(f"{kind} {namespace}/{name} has no key {key!r}")
        data = value.encode() if isinstance(value, str) else value
        self._cache[cache_key] = (self._clock() + TTL, data)
        return data
