"""The signature verdicts validation asks for (`webhook.SignatureVerifier`).

For each check: find the digest (the one the image is pinned to, or what its tag names now),
fetch its signatures once, and try the source's authorities in order (any one suffices). The
verdict names every authority tried and why it failed, so a denial can say what to fix.

Keys: inline PEM, or from a Secret (material.py says which namespaces). Keyless: Sigstore v0.3
bundles and legacy `.sig` signatures with a Fulcio certificate, against the public-good root
shipped with sigstore-python, or a custom `trusted_root.json` from a ConfigMap (private
Sigstore, or a private CA that signs without a log when `requireTransparencyLog: false`). A
requirement imagegate cannot check never passes: it fails with the reason.

The checks raise (`failures.SignatureFailure`, registry, key and material errors); `_verdict` is
the one place those become a `SignatureVerdict`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from imagegate.core import keys, reference
from imagegate.errors import ImagegateError
from imagegate.policy import engine, model
from imagegate.registry import client as registry
from imagegate.registry import pinning, staleness
from imagegate.registry.keychain import Keychain
from imagegate.signatures import authorities, cosign, material, roots
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


def _failed(error: Exception, digest: str | None) -> engine.SignatureVerdict:
    """The one conversion of a failure to a verdict."""
    if isinstance(error, registry.RegistryError):
        # No digest, and not cached: "no registry answer" is not a verdict on the image.
        return engine.SignatureVerdict(False, f"registry error: {error.user_message}")
    if isinstance(error, SignatureFailure):
        return engine.SignatureVerdict(False, f"{digest}: {error.user_message}", digest=digest)
    message = error.user_message if isinstance(error, ImagegateError) else str(error)
    return engine.SignatureVerdict(False, f"keys: {message}", digest=digest)


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
        if requirement is None:
            return engine.SignatureVerdict(
                False, "the policy's signature requirement is unreadable"
            )
        image = reference.parse(check.image)
        try:
            digest = await self._resolver.resolve(image, deadline, keychain)
        except FAILURES as error:
            return _failed(error, None)
        try:
            public_keys = await self._public_keys(requirement, check.policy_namespace)
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
                )
            )

        # Cached per digest (not tag), per whole requirement and per key material: a retag or a
        # rotated key in a Secret is a new question.
        key = (f"{image.name}@{digest}", (requirement, tuple(k.der for k in public_keys)))
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
        requirement: model.Signatures,
        public_keys: Sequence[keys.PublicKey],
        policy_namespace: str | None,
        deadline: float,
    ) -> engine.SignatureVerdict:
        try:
            found = await cosign.find(
                client, image.registry, image.repository, digest, deadline=deadline
            )
            root = await self._root(requirement, policy_namespace)
            authorities.of_requirement(requirement, public_keys, root).verify(found, digest)
        except staleness.UNREACHABLE:
            raise  # no answer, not a verdict: the cache may serve an earlier one (cache.py)
        except FAILURES as error:
            return _failed(error, digest)
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
