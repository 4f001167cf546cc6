"""The signature verdicts validation asks for (`webhook.SignatureVerifier`).

For each check: find the digest (the one the image is pinned to, or what its tag names now),
fetch its signatures once, and try the source's authorities in order (any one suffices). The
verdict names every authority tried and why it failed, so a denial can say what to fix.

Keys: inline PEM, or from a Secret (material.py says which namespaces). Keyless: Sigstore v0.3
bundles and legacy `.sig` signatures with a Fulcio certificate, against the public-good root
shipped with sigstore-python. Custom trust roots are refused with a reason until they are
implemented: a requirement imagegate cannot check never passes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from imagegate import reference, registry
from imagegate.policy import engine, model
from imagegate.signatures import cosign, fulcio, keyless, keys, material, roots
from imagegate.signatures.cache import VerdictCache

logger = logging.getLogger(__name__)


class CosignVerifier:
    def __init__(
        self,
        client: registry.RegistryClient,
        cache: VerdictCache | None = None,
        *,
        secrets: material.SecretReader | None = None,
        own_namespace: str = "imagegate-system",
    ) -> None:
        self._client = client
        self._cache = cache
        self._secrets = secrets
        self._own_namespace = own_namespace

    async def verify(
        self, checks: Sequence[engine.SignatureCheck], deadline: float
    ) -> Mapping[engine.SignatureCheck, engine.SignatureVerdict]:
        verdicts = await asyncio.gather(*(self._verify(check, deadline) for check in checks))
        return dict(zip(checks, verdicts, strict=True))

    async def _verify(
        self, check: engine.SignatureCheck, deadline: float
    ) -> engine.SignatureVerdict:
        requirement = check.requirement
        if not isinstance(requirement, model.Signatures):
            return engine.SignatureVerdict(
                False, "the policy's signature requirement is unreadable"
            )
        image = reference.parse(check.image)
        try:
            digest = image.digest or (await self._client.resolve(image, deadline=deadline)).digest
        except registry.RegistryError as error:
            return engine.SignatureVerdict(False, f"registry error: {error.user_message}")
        try:
            public_keys = await self._public_keys(requirement, check.policy_namespace)
        except (material.MaterialError, keys.KeyError_) as error:
            return engine.SignatureVerdict(False, f"keys: {error.user_message}", digest=digest)
        if self._cache is None:
            return await self._verify_digest(image, digest, requirement, public_keys, deadline)
        # Cached per digest (not tag), per whole requirement and per key material: a retag or a
        # rotated key in a Secret is a new question.
        key = (f"{image.name}@{digest}", (requirement, tuple(k.der() for k in public_keys)))
        return await self._cache.get_or_verify(
            key, lambda: self._verify_digest(image, digest, requirement, public_keys, deadline)
        )

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
        image: reference.ImageReference,
        digest: str,
        requirement: model.Signatures,
        public_keys: Sequence[keys.PublicKey],
        deadline: float,
    ) -> engine.SignatureVerdict:
        try:
            found = await cosign.find(
                self._client, image.registry, image.repository, digest, deadline=deadline
            )
        except registry.RegistryError as error:
            return engine.SignatureVerdict(False, f"registry error: {error.user_message}")
        reasons = []
        for index, public_key in enumerate(public_keys):
            failure = cosign.verify_with_key(
                found,
                public_key,
                digest,
                require_tlog=requirement.require_transparency_log,
            )
            if failure is None:
                return engine.SignatureVerdict(True, digest=digest)
            reasons.append(f"keys[{index}]: {failure}")
        for index, identity in enumerate(requirement.keyless):
            failure = self._keyless(found, identity, requirement, digest)
            if failure is None:
                return engine.SignatureVerdict(True, digest=digest)
            reasons.append(f"keyless[{index}]: {failure}")
        return engine.SignatureVerdict(False, f"{digest}: " + "; ".join(reasons), digest=digest)

    @staticmethod
    def _keyless(
        found: Sequence[cosign.FoundSignature],
        identity: model.KeylessAuthority,
        requirement: model.Signatures,
        digest: str,
    ) -> str | None:
        if requirement.trust_root is not None:
            return "custom trust roots (configMapRef) are not supported yet"
        if not found:
            return "no signature found"
        failures = []
        for signature in found:
            if signature.bundle is not None:
                failure = keyless.verify_bundle(
                    signature.bundle, digest, identity, roots.public_good_root()
                )
            elif signature.certificate is not None:
                failure = fulcio.verify_legacy(
                    signature, digest, identity, roots.public_good_json(), roots.public_good_root()
                )
            else:
                failure = "signed with a key, not a Fulcio certificate"
            if failure is None:
                return None
            failures.append(failure)
        return "; ".join(sorted(set(failures)))
