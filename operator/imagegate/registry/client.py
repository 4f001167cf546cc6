"""An async OCI distribution client: just what admission needs, and suspicious of every answer.

- tag → digest with HEAD (Docker Hub does not count HEADs against pull limits), every manifest
  media type accepted;
- manifests and blobs by digest, each body hashed and compared with the digest asked for (a
  registry that answers with other bytes is a `DigestMismatch`, never trusted);
- OCI 1.1 referrers, filtered client-side when the registry did not apply `artifactType`, with
  the `sha256-<hex>` tag fallback for registries without the API;
- bearer tokens from the `WWW-Authenticate` challenge, cached per (registry, scope) until they
  expire; Basic auth; credentials from a `Keychain` the caller provides (registry/auth.py);
- bounded retries with jittered backoff on 429/5xx and network errors, `Retry-After` honoured,
  and never a sleep or a request past the caller's deadline;
- plain HTTP only for registries the admin marks insecure;
- mirrors (containerd's hosts.toml, registry/mirrors.py): each request goes to the host's
  endpoints in order and falls through on any failed answer, as containerd does (design.md §8).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from imagegate.core.reference import DOCKER_HUB, ImageReference
from imagegate.registry import auth, mirrors
from imagegate.registry.errors import (
    DigestMismatch,
    ManifestUnknown,
    RateLimited,
    RegistryError,
    RegistryUnavailable,
    Unauthorized,
)
from imagegate.registry.keychain import Keychain, NoCredentials

#: What the client raises is part of its interface (callers catch `client.RegistryError`), so
#: the errors are exported from here too; errors.py holds them so that auth.py can raise them.
__all__ = [
    "DOCKER_HUB_API",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "MANIFEST_TYPES",
    "MAX_BLOB_BYTES",
    "MAX_MANIFEST_BYTES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "DigestMismatch",
    "ManifestUnknown",
    "RateLimited",
    "RegistryClient",
    "RegistryError",
    "RegistryUnavailable",
    "Unauthorized",
    "api_host",
    "sha256_digest",
]

logger = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
#: Manifests are small; a larger answer is a misbehaving registry.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_BLOB_BYTES = 16 * 1024 * 1024
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Descriptor:
        try:
            return cls(
                str(data["mediaType"]),
                str(data["digest"]),
                int(data["size"]),
                data.get("artifactType"),
                dict(data.get("annotations") or {}),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise RegistryError(f"malformed descriptor from the registry: {error}") from error


def api_host(registry: str) -> str:
    """Docker Hub's API lives on another host than its name."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def sha256_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _check_body(body: bytes, expected: str, claimed: str | None, what: str) -> None:
    algorithm = expected.split(":", 1)[0]
    if algorithm != "sha256":
        raise DigestMismatch(f"cannot check {what}: unsupported digest algorithm {algorithm}")
    actual = sha256_digest(body)
    if actual != expected:
        raise DigestMismatch(
            f"{what}: the registry sent content with digest {actual}, not {expected}"
        )
    if claimed and claimed != expected:
        raise DigestMismatch(f"{what}: the registry claimed digest {claimed} for {expected}")


class RegistryClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        keychain: Keychain | None = None,
        insecure: frozenset[str] = frozenset(),
        request_timeout: float = 5.0,
        retries: int = 2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        on_error: Callable[[str, str], None] | None = None,
        mirrors: mirrors.Mirrors = mirrors.NO_MIRRORS,
    ) -> None:
        """`on_error(registry, error class name)` is told of each failed request (metrics);
        `ManifestUnknown` is not a failure (a missing `.sig` tag is how "unsigned" looks).

        `mirrors`: where each registry's content is read from (raises `MirrorConfigError` now,
        not at the first admission, when a `ca` file cannot be read)."""
        self._mirrors = mirrors
        self._tls = _tls_contexts(mirrors)
        self._session = session
        self._on_error = on_error
        self._keychain = keychain or NoCredentials()
        self._insecure = insecure
        self._request_timeout = request_timeout
        self._retries = retries
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._tokens = auth.Tokens(clock)

    def using(self, keychain: Keychain) -> RegistryClient:
        """This client with other credentials (one admission's pull secrets).

        The view shares the session, the settings and the token cache; tokens are cached per
        credentials, so one namespace's token is never sent on behalf of another.
        """
        view = copy.copy(self)
        view._keychain = keychain
        return view

    # -- public ---------------------------------------------------------------------------------

    async def resolve(self, image: ImageReference, *, deadline: float | None = None) -> Descriptor:
        """The manifest descriptor a tag (or digest) names, from a HEAD request."""
        reference = image.digest or image.tag or "latest"
        response = await self._request(
            "HEAD",
            image.registry,
            image.repository,
            f"manifests/{reference}",
            accept=MANIFEST_TYPES,
            deadline=deadline,
        )
        digest = response.headers.get("Docker-Content-Digest")
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        size = int(response.headers.get("Content-Length") or 0)
        if not digest:
            # Some registries omit the header on HEAD: fetch the body and hash it ourselves.
            _, descriptor = await self.manifest(
                image.registry, image.repository, reference, deadline=deadline
            )
            return descriptor
        if image.digest and digest != image.digest:
            raise DigestMismatch(f"{image}: the registry answered for {digest}")
        return Descriptor(media_type, digest, size)

    async def manifest(
        self,
        registry: str,
        repository: str,
        reference: str,
        *,
        accept: tuple[str, ...] = MANIFEST_TYPES,
        deadline: float | None = None,
    ) -> tuple[bytes, Descriptor]:
        """A manifest's bytes, checked against its digest (the one asked for, or claimed)."""
        response = await self._request(
            "GET", registry, repository, f"manifests/{reference}", accept=accept, deadline=deadline
        )
        body = response.body
        if len(body) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"manifest {repository}@{reference} is larger than allowed")
        claimed = response.headers.get("Docker-Content-Digest")
        if reference.startswith("sha256:"):
            _check_body(body, reference, claimed, f"manifest {repository}@{reference}")
            digest = reference
        else:
            digest = sha256_digest(body)
            if claimed and claimed != digest:
                raise DigestMismatch(
                    f"manifest {repository}:{reference}: claimed {claimed}, content is {digest}"
                )
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        return body, Descriptor(media_type, digest, len(body))

    async def blob(
        self,
        registry: str,
        repository: str,
        digest: str,
        *,
        max_size: int = MAX_BLOB_BYTES,
        deadline: float | None = None,
    ) -> bytes:
        response = await self._request(
            "GET", registry, repository, f"blobs/{digest}", deadline=deadline, max_size=max_size
        )
        _check_body(
            response.body,
            digest,
            response.headers.get("Docker-Content-Digest"),
            f"blob {repository}@{digest}",
        )
        return response.body

    async def referrers(
        self,
        registry: str,
        repository: str,
        digest: str,
        *,
        artifact_type: str | None = None,
        deadline: float | None = None,
    ) -> list[Descriptor]:
        """Artifacts whose subject is `digest` (signatures, attestations), OCI 1.1."""
        path = f"referrers/{digest}"
        try:
            response = await self._request(
                "GET",
                registry,
                repository,
                path,
                accept=(OCI_INDEX,),
                deadline=deadline,
                params={"artifactType": artifact_type} if artifact_type else None,
            )
            body, filtered = (
                response.body,
                ("artifactType" in response.headers.get("OCI-Filters-Applied", "")),
            )
        except ManifestUnknown:
            # No referrers API: the OCI 1.1 fallback is an index under the tag sha256-<hex>.
            try:
                body, _ = await self.manifest(
                    registry,
                    repository,
                    digest.replace(":", "-"),
                    accept=(OCI_INDEX,),
                    deadline=deadline,
                )
            except ManifestUnknown:
                return []
            filtered = False
        try:
            index = json.loads(body)
            manifests = index.get("manifests") or []
        except (ValueError, AttributeError, RecursionError) as error:  # RecursionError: nesting
            raise RegistryError(f"referrers of {repository}@{digest}: not an OCI index") from error
        found = [Descriptor.from_json(entry) for entry in manifests]
        if artifact_type and not filtered:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found

    # -- transport ------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        registry: str,
        repository: str,
        path: str,
        *,
        accept: tuple[str, ...] = (),
        deadline: float | None = None,
        params: Mapping[str, str] | None = None,
        max_size: int = MAX_MANIFEST_BYTES,
    ) -> _Response:
        try:
            return await self._attempt(
                method, registry, repository, path, accept, deadline, params, max_size
            )
        except ManifestUnknown:
            raise
        except RegistryError as error:
            if self._on_error is not None:
                self._on_error(registry, type(error).__name__)
            raise

    async def _attempt(
        self,
        method: str,
        registry: str,
        repository: str,
        path: str,
        accept: tuple[str, ...],
        deadline: float | None,
        params: Mapping[str, str] | None,
        max_size: int,
    ) -> _Response:
        """Ask each endpoint in order (mirrors, then the upstream) until one answers.

        Any failed answer falls through, as in containerd: network errors, 5xx and 429, 404, and
        401/403 too (a mirror that refuses imagegate is no answer; the nodes would go on). Only
        the last endpoint retries: for the others the next endpoint is the retry.
        """
        capability: mirrors.Capability = "resolve" if _names_a_tag(path) else "pull"
        endpoints = [
            endpoint
            for endpoint in self._mirrors.endpoints_for(
                registry, insecure=registry in self._insecure
            )
            if endpoint.can(capability)
        ]
        if not endpoints:
            raise RegistryError(f"{registry}: no endpoint in its hosts.toml may {capability}")
        failures: list[tuple[mirrors.Endpoint, RegistryError]] = []
        for endpoint in endpoints:
            last = endpoint is endpoints[-1]
            try:
                return await self._ask(
                    endpoint,
                    method,
                    registry,
                    repository,
                    path,
                    accept,
                    deadline,
                    params,
                    max_size,
                    retries=self._retries if last else 0,
                )
            except RegistryError as error:
                if len(endpoints) == 1:
                    raise
                logger.debug("%s: %s failed, %s", registry, endpoint.api_root, error)
                failures.append((endpoint, error))
                if not last and self._on_error is not None and type(error) is not ManifestUnknown:
                    # A mirror that is down shows in the metrics even when the next one answers.
                    self._on_error(endpoint.host, type(error).__name__)
        raise _all_failed(registry, failures)

    async def _ask(
        self,
        endpoint: mirrors.Endpoint,
        method: str,
        registry: str,
        repository: str,
        path: str,
        accept: tuple[str, ...],
        deadline: float | None,
        params: Mapping[str, str] | None,
        max_size: int,
        *,
        retries: int,
    ) -> _Response:
        url = endpoint.url(repository, path)
        # Tokens and credentials belong to the host asked: a mirror never gets the upstream's.
        host = endpoint.host
        scope = f"repository:{repository}:pull"
        headers = dict(endpoint.headers)
        if accept:
            headers["Accept"] = ", ".join(accept)
        tls = self._tls.get(endpoint.api_root, True)
        attempt, authorised = 0, False
        while True:
            token = self._cached_token(host, repository, scope)
            if token is not None:
                headers["Authorization"] = token
            try:
                response = await self._send(method, url, headers, params, deadline, max_size, tls)
            except (aiohttp.ClientError, TimeoutError) as error:
                reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                attempt = await self._backoff(
                    attempt,
                    None,
                    deadline,
                    RegistryUnavailable,
                    f"{host} did not answer ({reason})",
                    retries,
                )
                continue
            if response.status == 401 and not authorised:
                await self._authorise(host, repository, scope, response.headers, deadline, tls)
                authorised = True
                continue
            if response.status in (401, 403):
                raise Unauthorized(f"{host} refused access to {repository} ({response.status})")
            if response.status == 404:
                raise ManifestUnknown(f"{host}/{repository}: {path} not found")
            if response.status == 429 or response.status >= 500:
                limited = response.status == 429
                attempt = await self._backoff(
                    attempt,
                    response.headers.get("Retry-After"),
                    deadline,
                    RateLimited if limited else RegistryUnavailable,
                    f"{host} is rate limiting requests (429)"
                    if limited
                    else f"{host} answered {response.status}",
                    retries,
                )
                continue
            if response.status >= 300:
                raise RegistryError(f"{host} answered {response.status} for {path}")
            remaining = response.headers.get("ratelimit-remaining", "")
            if remaining.split(";")[0].strip() == "0":
                logger.warning("%s: pull rate limit exhausted (ratelimit-remaining: 0)", host)
            return response

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        deadline: float | None,
        max_size: int,
        tls: ssl.SSLContext | bool = True,
    ) -> _Response:
        timeout = self._request_timeout
        if deadline is not None:
            timeout = min(timeout, deadline - self._clock())
            if timeout <= 0:
                raise TimeoutError("deadline reached")
        async with self._session.request(
            method,
            url,
            headers=headers,
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=True,
            ssl=tls,
        ) as reply:
            body = b""
            if method != "HEAD" and reply.status < 300:
                body = await _read_capped(reply, url, max_size)
            return _Response(reply.status, dict(reply.headers), body)

    async def _backoff(
        self,
        attempt: int,
        retry_after: str | None,
        deadline: float | None,
        error: type[RegistryError],
        message: str,
        retries: int,
    ) -> int:
        if attempt >= retries:
            raise error(f"{message}; gave up after {attempt + 1} attempts")
        delay = (0.1 * 2**attempt) * (0.5 + self._jitter())
        if retry_after is not None and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        if deadline is not None and self._clock() + delay >= deadline:
            raise error(f"{message}; no time left to retry before the deadline")
        await self._sleep(delay)
        return attempt + 1

    # -- auth -----------------------------------------------------------------------------------

    def _cached_token(self, registry: str, repository: str, scope: str) -> str | None:
        credentials = self._keychain.credentials(registry, repository)
        return self._tokens.get(registry, scope, credentials)

    async def _authorise(
        self,
        registry: str,
        repository: str,
        scope: str,
        headers: Mapping[str, str],
        deadline: float | None,
        tls: ssl.SSLContext | bool = True,
    ) -> None:
        await self._tokens.authorise(
            self._session,
            registry=registry,
            scope=scope,
            credentials=self._keychain.credentials(registry, repository),
            headers=headers,
            request_timeout=self._request_timeout,
            deadline=deadline,
            tls=tls,
        )


def _names_a_tag(path: str) -> bool:
    """A manifest asked for by tag needs a `resolve` endpoint; by digest, `pull` will do."""
    kind, _, reference = path.partition("/")
    return kind == "manifests" and ":" not in reference


def _all_failed(
    registry: str, failures: list[tuple[mirrors.Endpoint, RegistryError]]
) -> RegistryError:
    """Every endpoint failed: "not found" if one said so (an air-gapped mirror without a `.sig`
    tag means unsigned, even with the upstream unreachable); else the first failure's kind."""
    summary = "; ".join(f"{endpoint.api_root}: {error}" for endpoint, error in failures)
    kinds = [type(error) for _, error in failures]
    kind = ManifestUnknown if ManifestUnknown in kinds else kinds[0]
    return kind(f"{registry}: no endpoint answered ({summary})")


def _tls_contexts(configured: mirrors.Mirrors) -> dict[str, ssl.SSLContext | bool]:
    """aiohttp's `ssl=` per endpoint that needs one: no verification, or extra CAs."""
    contexts: dict[str, ssl.SSLContext | bool] = {}
    for endpoints in configured.hosts.values():
        for endpoint in endpoints:
            if endpoint.skip_verify:
                contexts[endpoint.api_root] = False
            elif endpoint.ca_files:
                context = ssl.create_default_context()
                for ca_file in endpoint.ca_files:
                    try:
                        context.load_verify_locations(cafile=str(ca_file))
                    except (OSError, ssl.SSLError) as error:
                        raise mirrors.MirrorConfigError(
                            f"{ca_file}: not a CA file: {error}"
                        ) from error
                contexts[endpoint.api_root] = context
    return contexts


#: How much of a body is taken from aiohttp's buffer at a time.
_CHUNK = 64 * 1024


async def _read_capped(reply: aiohttp.ClientResponse, url: str, max_size: int) -> bytes:
    """The whole body, or `RegistryError` as soon as it passes `max_size`.

    Not `reply.content.read(n)`: that returns what has arrived so far, not n bytes, so a body
    that arrives in pieces would be cut short (and fail its digest check).
    """
    too_large = RegistryError(f"{url}: answer larger than {max_size} bytes")
    if reply.content_length is not None and reply.content_length > max_size:
        raise too_large  # declared too large: do not read any of it
    body = bytearray()
    async for chunk in reply.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_size:
            raise too_large
    return bytes(body)


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
