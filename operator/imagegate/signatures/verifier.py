"""The signature verdicts validation asks for (`webhook.SignatureVerifier`).

For each check: find the digest (the one the image is pinned to, or what its tag names now),
fetch its signatures once, and try the source's authorities in order (any one suffices). The
verdict names every authority tried and why it failed, so a denial can say what to fix.

Keys: inline PEM, or from a Secret (material.py says which namespaces). Keyless: Sigstore v0.3
bundles and legacy `.sig` signatures with a Fulcio certificate, against the public-good root
shipped with sigstore-python, or a custom `trusted_root.json` from a ConfigMap (private
Sigstore, or a private CA that signs without a log when `requireTransparencyLog: false`). A
requirement imagegate cannot check never passes: it fails with the reason.

Attestations (design.md §9): after the signatures, each attestation requirement of the source
is verified by its authorities (by default the source's signature authorities) over the `.att`
layers and bundles found for the same digest (attestations.py), and judged (predicates.py).

The checks raise (`failures.SignatureFailure`, registry, key and material errors); `_verdict` is
the one place those become a `SignatureVerdict`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from imagegate.core import keys, reference
from imagegate.errors import ImagegateError
from imagegate.policy import engine, model
from imagegate.registry import client as registry
from imagegate.registry import pinning, staleness
from imagegate.registry.keychain import Keychain
from imagegate.signatures import attestations, authorities, cosign, material, roots
from imagegate.signatures.cache import VerdictCache
from imagegate.signatures.failures import SignatureFailure, UnusableTrustRoot

logger = logging.getLogger(__name__)


#: What a verification raises when it cannot say yes; `_failed` turns each into the verdict.
FAILURES = (
    SignatureFailure,
    registry.RegistryError,
    material.MaterialError,
    keys.UnusableKeyError,
)


def _failed(
    error: Exception, digest: str | None, failed: str = "signature"
) -> engine.SignatureVerdict:
    """The one conversion of a failure to a verdict (`failed`: of a signature or attestation)."""
    if isinstance(error, registry.RegistryError):
        # No digest, and not cached: "no registry answer" is not a verdict on the image.
        return engine.SignatureVerdict(
            False, f"registry error: {error.user_message}", failed=failed
        )
    if isinstance(error, SignatureFailure):
        reason = f"{digest}: {error.user_message}"
        return engine.SignatureVerdict(False, reason, digest=digest, failed=failed)
    message = error.user_message if isinstance(error, ImagegateError) else str(error)
    return engine.SignatureVerdict(False, f"keys: {message}", digest=digest, failed=failed)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _authorities_of(
    attestation: model.Attestation, requirement: model.Signatures | None
) -> model.Signatures:
    """Who may sign an attestation: its own authorities, else the source's signature ones."""
    chosen = attestation.authorities or requirement
    if chosen is None:  # the model forbids it; be explicit anyway
        raise material.MaterialError(f"attestation {attestation.predicate_type} names no authority")
    return chosen


class CosignVerifier:
    def __init__(
        self,
        client: registry.RegistryClient,
        cache: VerdictCache | None = None,
        *,
        secrets: material.ClusterMaterial | None = None,
        own_namespace: str = "imagegate-system",
        observe_seconds: Callable[[float], None] | None = None,
        resolver: pinning.CachingResolver | None = None,
        now: Callable[[], datetime.datetime] = _now,
    ) -> None:
        """`observe_seconds` is told how long each verification that really ran took.

        `resolver` finds the digest a tag names: give the one `/mutate` pins with, so both
        webhooks share one tag cache (and its stale-if-error) instead of asking twice."""
        self._client = client
        self._resolver = resolver or pinning.CachingResolver(client)
        self._cache = cache
        self._secrets = secrets
        self._own_namespace = own_namespace
        self._observe = observe_seconds
        self._now = now  # how old an SBOM or scan is

    async def verify(
        self,
        checks: Sequence[engine.SignatureCheck],
        deadline: float,
        keychain: Keychain | None = None,
    ) -> Mapping[engine.SignatureCheck, engine.SignatureVerdict]:
        # Verdicts are cached per digest, not per credentials: whether a digest is signed does
        # not depend on who asks, and the kubelet still pulls with the Pod's own credentials.
        client = self._client.using(keychain) if keychain is not None else self._client
        verdicts = await asyncio.gather(
            *(self._verify(client, keychain, check, deadline) for check in checks)
        )
        return dict(zip(checks, verdicts, strict=True))

    async def _verify(
        self,
        client: registry.RegistryClient,
        keychain: Keychain | None,
        check: engine.SignatureCheck,
        deadline: float,
    ) -> engine.SignatureVerdict:
        requirement = check.requirement
        if requirement is None and not check.attestations:
            return engine.SignatureVerdict(
                False, "the policy's signature requirement is unreadable"
            )
        image = reference.parse(check.image)
        try:
            digest = await self._resolver.resolve(image, deadline, keychain)
        except FAILURES as error:
            return _failed(error, None)
        try:
            public_keys = (
                await self._public_keys(requirement, check.policy_namespace)
                if requirement is not None
                else []
            )
            attestation_keys = [
                await self._public_keys(_authorities_of(a, requirement), check.policy_namespace)
                for a in check.attestations
            ]
        except FAILURES as error:
            return _failed(error, digest)

        def verification() -> Awaitable[engine.SignatureVerdict]:
            return self._timed(
                self._verify_digest(
                    client,
                    image,
                    digest,
                    requirement,
                    public_keys,
                    check.policy_namespace,
                    deadline,
                    tuple(zip(check.attestations, attestation_keys, strict=True)),
                )
            )

        # Cached per digest (not tag), per whole requirement and per key material: a retag or a
        # rotated key in a Secret is a new question. Attestation requirements are part of it.
        key = (
            f"{image.name}@{digest}",
            (
                requirement,
                tuple(k.der for k in public_keys),
                check.attestations,
                tuple(tuple(k.der for k in keys_) for keys_ in attestation_keys),
            ),
        )
        try:
            if self._cache is None:
                return await verification()
            return await self._cache.get_or_verify(key, verification, registry=image.registry)
        except staleness.UNREACHABLE as error:  # and no positive verdict to serve stale
            return _failed(error, digest)

    async def _timed(
        self, verification: Awaitable[engine.SignatureVerdict]
    ) -> engine.SignatureVerdict:
        started = time.monotonic()
        try:
            return await verification
        finally:
            if self._observe is not None:
                self._observe(time.monotonic() - started)

    async def _public_keys(
        self, requirement: model.Signatures, policy_namespace: str | None
    ) -> list[keys.PublicKey]:
        loaded = []
        for index, authority in enumerate(requirement.keys):
            if authority.public_key is not None:
                loaded.append(keys.load_public_key(authority.public_key))
                continue
            reference = authority.secret_ref
            if reference is None:  # the model forbids it; be explicit anyway
                raise material.MaterialError(f"keys[{index}] names no key")
            if self._secrets is None:
                raise material.MaterialError(f"keys[{index}]: no access to Secrets configured")
            namespace = material.secret_namespace(
                policy_namespace, reference.namespace, self._own_namespace
            )
            pem = await self._secrets.read(namespace, reference.name, reference.key)
            loaded.append(keys.load_public_key(pem))
        return loaded

    async def _verify_digest(
        self,
        client: registry.RegistryClient,
        image: reference.ImageReference,
        digest: str,
        requirement: model.Signatures | None,
        public_keys: Sequence[keys.PublicKey],
        policy_namespace: str | None,
        deadline: float,
        required: Sequence[tuple[model.Attestation, Sequence[keys.PublicKey]]] = (),
    ) -> engine.SignatureVerdict:
        try:
            if requirement is not None:
                found = await cosign.find(
                    client, image.registry, image.repository, digest, deadline=deadline
                )
                root = await self._root(requirement, policy_namespace)
                authorities.of_requirement(requirement, public_keys, root).verify(found, digest)
        except staleness.UNREACHABLE:
            raise  # no answer, not a verdict: the cache may serve an earlier one (cache.py)
        except FAILURES as error:
            return _failed(error, digest)
        if required:
            return await self._verify_attestations(
                client, image, digest, required, requirement, policy_namespace, deadline
            )
        return engine.SignatureVerdict(True, digest=digest)

    async def _verify_attestations(
        self,
        client: registry.RegistryClient,
        image: reference.ImageReference,
        digest: str,
        required: Sequence[tuple[model.Attestation, Sequence[keys.PublicKey]]],
        requirement: model.Signatures | None,
        policy_namespace: str | None,
        deadline: float,
    ) -> engine.SignatureVerdict:
        """Every attestation requirement met (AND), each by any of its authorities."""
        try:
            found = await cosign.find_attestations(
                client, image.registry, image.repository, digest, deadline=deadline
            )
            for attestation, public_keys in required:
                signers = _authorities_of(attestation, requirement)
                root = await self._root(signers, policy_namespace)
                authority = authorities.of_requirement(signers, public_keys, root)
                attestations.verify(attestation, found, digest, authority, self._now())
        except staleness.UNREACHABLE:
            raise
        except FAILURES as error:
            return _failed(error, digest, "attestation")
        return engine.SignatureVerdict(True, digest=digest)

    async def _root(
        self, requirement: model.Signatures, policy_namespace: str | None
    ) -> authorities.RootOrFailure:
        """The requirement's trust root; one that cannot be used fails only what needs it."""
        if requirement.trust_root is None:
            return roots.public_good()
        # A private Sigstore's log keys serve key signatures too, not only keyless ones.
        try:
            return await self._custom_root(requirement.trust_root, policy_namespace)
        except UnusableTrustRoot as failure:
            return failure

    async def _custom_root(
        self, trust_root: model.TrustRoot, policy_namespace: str | None
    ) -> roots.Root:
        """The policy's trusted_root.json; raises UnusableTrustRoot saying why it cannot be used."""
        if self._secrets is None:
            raise UnusableTrustRoot("no access to ConfigMaps configured for the custom trust root")
        reference = trust_root.config_map_ref
        namespace = material.secret_namespace(
            policy_namespace, reference.namespace, self._own_namespace
        )
        try:
            text = await self._secrets.read_config_map(namespace, reference.name, reference.key)
            return roots.custom(text)
        except material.MaterialError as error:
            raise UnusableTrustRoot(f"trust root: {error.user_message}") from None
        except ValueError as error:
            raise UnusableTrustRoot(f"trust root {namespace}/{reference.name}: {error}") from None
