"""What `imagegate check --verify` and `imagegate verify` verify with: the webhook's own
verifier and registry client, wired as the operator wires them (cluster/operator.py), with
credentials and key material from local files instead of the cluster (docs/design.md §6.2).

Offline, an `OfflineVerifier` answers every signature check with "not verified", so offline and
online runs both go through `reviewers.judge` and differ only in the verdicts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from imagegate.admission import reviewers as webhook
from imagegate.core import workloads
from imagegate.errors import UsageError
from imagegate.policy import engine
from imagegate.registry import mirrors
from imagegate.registry.keychain import Keychain

#: The verdict of every signature check offline: a requirement is never met without a look.
OFFLINE_SIGNATURE_REASON = "not verified: imagegate check is offline (--verify asks the registries)"
#: Seconds one object (or `imagegate verify`'s image) may take at the registries.
OBJECT_DEADLINE = 30.0


class OfflineVerifier:
    """A `webhook.SignatureVerifier` that looks nowhere and says so; `declined` counts the
    checks it could not do, so the summary can name them."""

    def __init__(self) -> None:
        self.declined = 0

    async def verify(
        self,
        checks: Sequence[engine.SignatureCheck],
        deadline: float,
        keychain: Keychain | None = None,
    ) -> Mapping[engine.SignatureCheck, engine.SignatureVerdict]:
        self.declined += len(checks)
        return {check: engine.SignatureVerdict(False, OFFLINE_SIGNATURE_REASON) for check in checks}


@dataclass(frozen=True)
class OnlineOptions:
    """Where credentials, keys and trust roots come from when the registries are asked."""

    #: A docker config (`{"auths": ...}`); None: $DOCKER_CONFIG/config.json or
    #: ~/.docker/config.json when it exists, else anonymous.
    registry_config: Path | None = None
    #: secretRef name (or namespace/name) → PEM file, for keys kept in cluster Secrets.
    key_files: Mapping[str, Path] = field(default_factory=dict)
    #: configMapRef name (or namespace/name) → trusted_root.json, for custom trust roots.
    trust_roots: Mapping[str, Path] = field(default_factory=dict)
    insecure_registries: frozenset[str] = frozenset()
    #: `--registry-mirrors`: read registries through the nodes' mirrors, as `imagegate run`.
    registry_mirrors: mirrors.Mirrors = mirrors.NO_MIRRORS


def parse_named_files(pairs: Sequence[str], flag: str) -> dict[str, Path]:
    """`NAME=PATH` pairs (repeatable flags) → {NAME: PATH}; the files must exist."""
    named = {}
    for pair in pairs:
        name, equals, path = pair.partition("=")
        if not equals or not name or not path:
            raise UsageError(f"{flag} wants NAME=PATH; got {pair!r}")
        if not Path(path).is_file():
            raise UsageError(f"{flag} {name}: no file {path}")
        named[name] = Path(path)
    return named


def docker_config(explicit: Path | None) -> Path | None:
    """The docker config to read: the one given (which must exist), else Docker's default."""
    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(f"--registry-config: no file {explicit}")
        return explicit
    directory = os.environ.get("DOCKER_CONFIG")
    default = Path(directory) if directory else Path.home() / ".docker"
    found = default / "config.json"
    return found if found.is_file() else None


class FileKeychains:
    """A `webhook.KeychainSource` from one docker config file, whatever the object names.

    A Pod's imagePullSecrets and a policy's `spec.pullSecrets` live in the cluster; here the
    local config stands in for them (credential helpers and `credsStore` are not run).
    """

    def __init__(self, config: Path | None) -> None:
        from imagegate.cluster import credentials

        entries = []
        if config is not None:
            try:
                entries = credentials.parse_docker_config(config.read_bytes())
            except (OSError, credentials.CredentialsError) as error:
                raise UsageError(f"{config}: {error}") from error
        self._keychain = credentials.EntryKeychain(entries)

    async def keychain(
        self,
        namespace: str,
        pull: workloads.PullContext,
        policies: Sequence[engine.CompiledPolicy],
    ) -> Keychain:
        return self._keychain


class FileMaterial:
    """A `material.ClusterMaterial` from local files named on the command line."""

    def __init__(self, key_files: Mapping[str, Path], trust_roots: Mapping[str, Path]) -> None:
        self._key_files = key_files
        self._trust_roots = trust_roots

    async def read(self, namespace: str, name: str, key: str) -> bytes:
        return self._find(self._key_files, "Secret", "--key-file", namespace, name).read_bytes()

    async def read_config_map(self, namespace: str, name: str, key: str) -> str:
        path = self._find(self._trust_roots, "ConfigMap", "--trust-root", namespace, name)
        return path.read_text()

    @staticmethod
    def _find(files: Mapping[str, Path], kind: str, flag: str, namespace: str, name: str) -> Path:
        from imagegate.signatures import material

        found = files.get(f"{namespace}/{name}") or files.get(name)
        if found is None:
            raise material.MaterialError(
                f"{kind} {namespace}/{name} is in the cluster, not readable here: "
                f"give {flag} {name}=PATH"
            )
        return found


@dataclass(frozen=True)
class Collaborators:
    """What `reviewers.judge` is given, and the tag resolver the verifier shares."""

    verifier: webhook.SignatureVerifier
    keychains: webhook.KeychainSource | None = None
    resolver: webhook.DigestResolver | None = None


@asynccontextmanager
async def online(options: OnlineOptions) -> AsyncIterator[Collaborators]:
    """The verifier, keychains and resolver the webhooks use, for one command's duration."""
    import aiohttp

    from imagegate.registry import client as oci
    from imagegate.registry import pinning
    from imagegate.signatures import verifier

    keychains = FileKeychains(docker_config(options.registry_config))
    material = FileMaterial(options.key_files, options.trust_roots)
    async with aiohttp.ClientSession() as session:
        registry_client = oci.RegistryClient(
            session, insecure=options.insecure_registries, mirrors=options.registry_mirrors
        )
        # One tag cache for the digest shown and the one verified, as the operator shares one
        # between /mutate and /validate; no verdict cache: one run asks each question once.
        resolver = pinning.CachingResolver(registry_client)
        signatures = verifier.CosignVerifier(registry_client, secrets=material, resolver=resolver)
        yield Collaborators(signatures, keychains, resolver)


@asynccontextmanager
async def offline() -> AsyncIterator[Collaborators]:
    yield Collaborators(OfflineVerifier())
