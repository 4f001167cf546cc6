"""Registry credentials for one admission: docker config Secrets turned into a `Keychain`.

The kubelet pulls with the Pod's imagePullSecrets and its ServiceAccount's; imagegate reads
manifests and signatures with the same credentials, so a private image that the kubelet can pull
can also be verified. A policy may name Secrets of its own (`spec.pullSecrets`), tried first: they
let an admin give imagegate read access without handing a pull secret to every namespace.

Matching follows the kubelet: a config key is `host[:port][/path]` (or a URL such as Docker's
`https://index.docker.io/v1/`); `*` matches one DNS label of the host; the path must be a prefix
of the repository on a `/` boundary; the most specific key wins.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from imagegate.core import reference, workloads
from imagegate.errors import ImagegateError
from imagegate.policy import engine
from imagegate.registry.keychain import Credentials, Keychain
from imagegate.signatures import material

logger = logging.getLogger(__name__)

#: The data keys of `kubernetes.io/dockerconfigjson` and the older `kubernetes.io/dockercfg`.
DOCKER_CONFIG_JSON = ".dockerconfigjson"
DOCKER_CFG = ".dockercfg"
#: Docker's CLI writes Docker Hub credentials under these names.
_DOCKER_HUB_KEYS = frozenset(
    {"index.docker.io", "registry-1.docker.io", "docker.io", "registry.hub.docker.com"}
)


class CredentialsError(ImagegateError):
    """A pull secret that cannot be read as a docker config."""


@dataclass(frozen=True)
class CredentialEntry:
    host: str  # lower case, with port, may contain `*` labels
    path: str  # repository prefix, "" for the whole host
    credentials: Credentials

    def matches(self, registry: str, repository: str) -> bool:
        if not _host_matches(self.host, registry.lower()):
            return False
        return not self.path or repository == self.path or repository.startswith(self.path + "/")

    @property
    def specificity(self) -> tuple[int, int]:
        return (self.host.count("*") * -1, len(self.path))


def _host_matches(pattern: str, host: str) -> bool:
    pattern_host, _, pattern_port = pattern.partition(":")
    name, _, port = host.partition(":")
    if pattern_port != port:
        return False
    wanted, labels = pattern_host.split("."), name.split(".")
    if len(wanted) != len(labels):
        return False
    return all(w == "*" or w == label for w, label in zip(wanted, labels, strict=True))


def _normalise_key(key: str) -> tuple[str, str]:
    """A docker config key → (host, path)."""
    text = key.strip().lower()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    host, _, path = text.partition("/")
    if host in _DOCKER_HUB_KEYS:
        # `https://index.docker.io/v1/` is Docker Hub as a whole, not a repository path.
        return reference.DOCKER_HUB, ""
    path = path.strip("/")
    if path in ("v1", "v2"):
        path = ""
    return host, path


def parse_docker_config(data: bytes, key: str = DOCKER_CONFIG_JSON) -> list[CredentialEntry]:
    """The entries of a `.dockerconfigjson` (`{"auths": {...}}`) or `.dockercfg` (`{...}`)."""
    try:
        document = json.loads(data)
    except ValueError as error:
        raise CredentialsError(f"{key} is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise CredentialsError(f"{key} is not a JSON object")
    auths = document.get("auths") if key == DOCKER_CONFIG_JSON else document
    if not isinstance(auths, dict):
        raise CredentialsError(f"{key} has no 'auths' object")
    entries = []
    for name, value in auths.items():
        credentials = _credentials(value)
        if credentials is None:
            continue  # an entry with only an email, or a credential helper: nothing to send
        host, path = _normalise_key(str(name))
        if host:
            entries.append(CredentialEntry(host, path, credentials))
    return entries


def _credentials(value: Any) -> Credentials | None:
    if not isinstance(value, dict):
        return None
    username, password = value.get("username"), value.get("password")
    if isinstance(username, str) and isinstance(password, str) and username:
        return Credentials(username, password)
    auth = value.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, colon, secret = decoded.partition(":")
        if colon and user:
            return Credentials(user, secret)
    return None


class EntryKeychain:
    """A `registry.Keychain` over parsed entries, in order of preference."""

    def __init__(self, entries: Iterable[CredentialEntry]) -> None:
        self._entries = tuple(entries)

    def credentials(self, registry: str, repository: str) -> Credentials | None:
        best: CredentialEntry | None = None
        for entry in self._entries:
            # The most specific key wins; among equals, the earlier source (policy, Pod, account).
            if entry.matches(registry, repository) and (
                best is None or entry.specificity > best.specificity
            ):
                best = entry
        return best.credentials if best is not None else None


@dataclass(frozen=True)
class PullSecretRef:
    namespace: str
    name: str


class PullMaterial(Protocol):
    """What a keychain is read from (the cluster, or a test's dictionary)."""

    async def secret_data(self, namespace: str, name: str) -> Mapping[str, bytes]: ...

    async def service_account_pull_secrets(self, namespace: str, name: str) -> tuple[str, ...]: ...


async def keychain_for(
    material: PullMaterial,
    *,
    policy_secrets: Sequence[PullSecretRef],
    namespace: str,
    pod_secrets: Sequence[str],
    service_account: str,
) -> Keychain:
    """Policy Secrets first, then the Pod's imagePullSecrets, then its ServiceAccount's.

    An unreadable Secret is logged and skipped, as the kubelet does: the registry's own refusal
    (`Unauthorized`) then says what is missing, in the denial.
    """
    refs = list(policy_secrets)
    refs += [PullSecretRef(namespace, name) for name in pod_secrets]
    try:
        account_secrets = await material.service_account_pull_secrets(namespace, service_account)
    except ImagegateError as error:
        logger.warning("pull secrets of %s/%s: %s", namespace, service_account, error.user_message)
        account_secrets = ()
    refs += [PullSecretRef(namespace, name) for name in account_secrets]
    entries: list[CredentialEntry] = []
    seen: set[PullSecretRef] = set()
    for ref in refs:
        if ref in seen:
            continue
        seen.add(ref)
        try:
            entries += _entries(await material.secret_data(ref.namespace, ref.name), ref)
        except ImagegateError as error:
            logger.warning("pull secret %s/%s: %s", ref.namespace, ref.name, error.user_message)
    return EntryKeychain(entries)


def _entries(data: Mapping[str, bytes], ref: PullSecretRef) -> list[CredentialEntry]:
    for key in (DOCKER_CONFIG_JSON, DOCKER_CFG):
        if key in data:
            return parse_docker_config(data[key], key)
    raise CredentialsError(
        f"Secret {ref.namespace}/{ref.name} has neither {DOCKER_CONFIG_JSON} nor {DOCKER_CFG}"
    )


class ClusterKeychains:
    """A `webhook.KeychainSource`: one admission's keychain, read from the cluster."""

    def __init__(self, material: PullMaterial, own_namespace: str) -> None:
        self._material = material
        self._own_namespace = own_namespace

    async def keychain(
        self,
        namespace: str,
        pull: workloads.PullContext,
        policies: Sequence[engine.CompiledPolicy],
    ) -> Keychain:
        policy_secrets = [
            PullSecretRef(
                material.secret_namespace(policy.namespace, requested, self._own_namespace), name
            )
            for policy in policies
            for requested, name in policy.pull_secrets
        ]
        return await keychain_for(
            self._material,
            policy_secrets=policy_secrets,
            namespace=namespace,
            pod_secrets=pull.pull_secrets,
            service_account=pull.service_account,
        )
