"""The signature verdicts validation asks for (`webhook.SignatureVerifier`).

For each check: find the digest (the one the image is pinned to, or what its tag names now),
fetch its signatures once, and try the source's authorities in order (any one suffices). The
verdict names every authority tried and why it failed, so a denial can say what to fix.

Keys: inline PEM. Keyless: Sigstore v0.3 bundles and legacy `.sig` signatures with a Fulcio
certificate, against the public-good root shipped with sigstore-python. Keys from Secrets and
custom trust roots are refused with a reason until they are implemented: a requirement imagegate
cannot check never passes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from imagegate import reference, registry
from imagegate.policy import engine, model
from imagegate.signatures import cosign, fulcio, keyless, keys, roots
from imagegate.signatures.cache import VerdictCache

logger = logging.getLogger(__name__)


class CosignVerifier:
    def __init__(self, client: registry.RegistryClient, cache: VerdictCache | None = None) -> None:
        self._client = client
        self._cache = cache

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
        if self._cache is None:
            return await self._verify_digest(image, digest, requirement, deadline)
        # Cached per digest (not tag) and per whole requirement: a retag is a new question.
        key = (f"{image.name}@{digest}", requirement)
        return await self._cache.get_or_verify(
            key, lambda: self._verify_digest(image, digest, requirement, deadline)
        )

    async def _verify_digest(
        self,
        image: reference.ImageReference,
        digest: str,
        requirement: model.Signatures,
        deadline: float,
    ) -> engine.SignatureVerdict:
        try:
            found = await cosign.find(
                self._client, image.registry, image.repository, digest, deadline=deadline
            )
        except registry.RegistryError as error:
            return engine.SignatureVerdict(False, f"registry error: {error.user_message}")
        reasons = []
        for index, authority in enumerate(requirement.keys):
            if authority.public_key is None:
                reasons.append(f"keys[{index}]: keys from Secrets are not supported yet")
                continue
            failure = cosign.verify_with_key(
                found,
                keys.load_public_key(authority.public_key),
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
