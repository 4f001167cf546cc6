"""The signature verdicts validation asks for (`webhook.SignatureVerifier`).

For each check: find the digest (the one the image is pinned to, or what its tag names now),
fetch its signatures once, and try the source's authorities in order (any one suffices). The
verdict names every authority tried and why it failed, so a denial can say what to fix.

Keys: inline PEM, or from a Secret (material.py says which namespaces). Keyless: Sigstore v0.3
bundles and legacy `.sig` signatures with a Fulcio certificate, against the public-good root
shipped with sigstore-python, or a custom `trusted_root.json` from a ConfigMap (private
Sigstore, or a private CA that signs without a log when `requireTransparencyLog: false`). A
requirement imagegate cannot check never passes: it fails with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from imagegate.core import keys, reference
from imagegate.policy import engine, model
from imagegate.registry import client as registry
from imagegate.registry.keychain import Keychain
from imagegate.signatures import cosign, fulcio, keyless, material, roots
from imagegate.signatures.cache import VerdictCache

logger = logging.getLogger(__name__)


class CosignVerifier:
    def __init__(
        self,
        client: registry.RegistryClient,
        cache: VerdictCache | None = None,
        *,
        secrets: material.ClusterMaterial | None = None,
        own_namespace: str = "imagegate-system",
        observe_seconds: Callable[[float], None] | None = None,
    ) -> None:
        """`observe_seconds` is told how long each verification that really ran took."""
        self._client = client
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
            *(self._verify(client, check, deadline) for check in checks)
        )
        return dict(zip(checks, verdicts, strict=True))

    async def _verify(
        self, client: registry.RegistryClient, check: engine.SignatureCheck, deadline: float
    ) -> engine.SignatureVerdict:
        requirement = check.requirement
        if not isinstance(requirement, model.Signatures):
            return engine.SignatureVerdict(
                False, "the policy's signature requirement is unreadable"
            )
        image = reference.parse(check.image)
        try:
            digest = image.digest or (await client.resolve(image, deadline=deadline)).digest
        except registry.RegistryError as error:
            return engine.SignatureVerdict(False, f"registry error: {error.user_message}")
        try:
            public_keys = await self._public_keys(requirement, check.policy_namespace)
        except (material.MaterialError, keys.UnusableKeyError) as error:
            return engine.SignatureVerdict(False, f"keys: {error.user_message}", digest=digest)

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

        if self._cache is None:
            return await verification()
        # Cached per digest (not tag), per whole requirement and per key material: a retag or a
        # rotated key in a Secret is a new question.
        key = (f"{image.name}@{digest}", (requirement, tuple(k.der for k in public_keys)))
        return await self._cache.get_or_verify(key, verification)

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
        except registry.RegistryError as error:
            return engine.SignatureVerdict(False, f"registry error: {error.user_message}")
        root: roots.Root | str = roots.public_good()
        if requirement.trust_root is not None:
            # A private Sigstore's log keys serve key signatures too, not only keyless ones.
            root = await self._custom_root(requirement.trust_root, policy_namespace)
        reasons = []
        for index, public_key in enumerate(public_keys):
            if isinstance(root, str) and requirement.require_transparency_log:
                reasons.append(f"keys[{index}]: {root}")
                continue
            failure = cosign.verify_with_key(
                found,
                public_key,
                digest,
                require_tlog=requirement.require_transparency_log,
                trusted_root=None if isinstance(root, str) else root.document,
            )
            if failure is None:
                return engine.SignatureVerdict(True, digest=digest)
            reasons.append(f"keys[{index}]: {failure}")
        for index, identity in enumerate(requirement.keyless):
            failure = (
                root
                if isinstance(root, str)
                else self._keyless(found, identity, requirement, digest, root)
            )
            if failure is None:
                return engine.SignatureVerdict(True, digest=digest)
            reasons.append(f"keyless[{index}]: {failure}")
        return engine.SignatureVerdict(False, f"{digest}: " + "; ".join(reasons), digest=digest)

    async def _custom_root(
        self, trust_root: model.TrustRoot, policy_namespace: str | None
    ) -> roots.Root | str:
        """The policy's trusted_root.json, or why it cannot be used."""
        if self._secrets is None:
            return "no access to ConfigMaps configured for the custom trust root"
        reference = trust_root.config_map_ref
        namespace = material.secret_namespace(
            policy_namespace, reference.namespace, self._own_namespace
        )
        try:
            text = await self._secrets.read_config_map(namespace, reference.name, reference.key)
            return roots.custom(text)
        except material.MaterialError as error:
            return f"trust root: {error.user_message}"
        except ValueError as error:
            return f"trust root {namespace}/{reference.name}: {error}"

    @staticmethod
    def _keyless(
        found: Sequence[cosign.FoundSignature],
        identity: model.KeylessAuthority,
        requirement: model.Signatures,
        digest: str,
        root: roots.Root,
    ) -> str | None:
        if not found:
            return "no signature found"
        failures = []
        for signature in found:
            if signature.bundle is not None:
                failure = (
                    keyless.verify_bundle(signature.bundle, digest, identity, root.parsed)
                    if root.parsed is not None
                    else "bundles need a trust root sigstore-python accepts"
                )
            elif signature.certificate is not None:
                failure = fulcio.verify_legacy(
                    signature,
                    digest,
                    identity,
                    root.document,
                    root.parsed,
                    require_tlog=requirement.require_transparency_log,
                )
            else:
                failure = "signed with a key, not a Fulcio certificate"
            if failure is None:
                return None
            failures.append(failure)
        return "; ".join(sorted(set(failures)))
