"""Rewrite targets checked before `/mutate` patches them in (design.md §5.2).

A rewrite is made only to a target the kubelet can pull and validation will admit: its tag is
resolved (the registry has it), and when an enforce policy that will validate it asks for
signatures, they are verified with the verifier `/validate` uses. A target that is missing, not
answered for within the mutate budget, or not verified leaves the image as written: validation
then decides, and the warning says why. What to patch stays the engine's (`without_rewrite`);
this module gathers the facts.

Caching: a found tag is the resolver's (30 s, shared with `/validate` and pinning); a verdict is
the verifier's (per digest and requirement, negative ones briefly). A missing tag is cached
nowhere else, so it is kept here for `MISSING_TTL`: a Deployment's burst of Pods asks the
registry once, not once per Pod.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from imagegate.core import reference
from imagegate.errors import ImagegateError
from imagegate.policy import engine
from imagegate.registry import errors as registry_errors
from imagegate.registry.keychain import Keychain

logger = logging.getLogger(__name__)

#: As long as a negative signature verdict lives (signatures/cache.py): a target pushed a moment
#: after a refusal is rewritten to soon.
MISSING_TTL = 10.0
MAX_MISSING = 1_000


class DigestResolver(Protocol):
    async def resolve(
        self, image: reference.ImageReference, deadline: float, keychain: Keychain | None = None
    ) -> str: ...


class SignatureVerifier(Protocol):
    async def verify(
        self,
        checks: Sequence[engine.SignatureCheck],
        deadline: float,
        keychain: Keychain | None = None,
    ) -> Mapping[engine.SignatureCheck, engine.SignatureVerdict]: ...


@dataclass(frozen=True)
class Window:
    """The share of an admission's deadline `/mutate` may spend on registries (targets, pins)."""

    #: Seconds, or None for no bound (tests, tools).
    budget: float | None
    #: The monotonic time by which every lookup ends (0: none).
    until: float


@dataclass(frozen=True)
class Checked:
    """One planned image after its rewrite target was checked."""

    #: What to patch: the rewrite, or the image as written when the rewrite was refused.
    image: engine.PlannedImage
    #: The target's digest (the verified one when signatures were asked for).
    digest: str | None = None
    #: Why the rewrite was refused, for the warning.
    refusal: str | None = None


class RefusedTarget(ImagegateError):
    """A rewrite target the workload must not be moved to; `user_message` says why."""


def refusal_warning(
    image: engine.PlannedImage, target: reference.ImageReference, reason: str
) -> str:
    return (
        f"imagegate: not rewriting {image.container.image} to {target}: {reason}; "
        "validation decides"
    )


def dropped_warnings(planned: Sequence[engine.PlannedImage]) -> list[str]:
    """One warning per rewrite that dropped a version (a latest-only target)."""
    return [
        f"imagegate: {image.container.where}: rewrote {image.container.image} to {image.final}, "
        + engine.dropping(image.dropped_version)
        for image in planned
        if image.rewritten_by is not None and image.dropped_version is not None
    ]


def dropped_versions(planned: Sequence[engine.PlannedImage]) -> dict[str, str]:
    """`list/name` → the version its rewrite dropped (the audit annotation)."""
    return {
        f"{image.container.kind}/{image.container.container_name}": image.dropped_version
        for image in planned
        if image.rewritten_by is not None and image.dropped_version is not None
    }


class TargetChecker:
    def __init__(
        self,
        resolver: DigestResolver | None,
        verifier: SignatureVerifier | None,
        *,
        missing_ttl: float = MISSING_TTL,
        max_missing: int = MAX_MISSING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self._verifier = verifier
        self._missing_ttl = missing_ttl
        self._max_missing = max_missing
        self._clock = clock
        self._missing: OrderedDict[reference.ImageReference, tuple[float, str]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Without a resolver or a verifier nothing can be checked: rewrites stay unchecked."""
        return self._resolver is not None or self._verifier is not None

    async def check(
        self,
        planned: Sequence[engine.PlannedImage],
        policies: Sequence[engine.CompiledPolicy],
        window: Window,
        keychain: Callable[[], Awaitable[Keychain | None]],
    ) -> list[Checked]:
        """Each planned image, its rewrite kept or refused; all targets at once, within `window`.

        Only rewrites validation could admit are checked: a target no enforce policy's sources
        trust is denied by validation anyway, naming it (no registry call for nothing).
        """
        checked = [Checked(image) for image in planned]
        to_check = [
            index
            for index, image in enumerate(planned)
            if self.enabled
            and image.rewritten_by is not None
            and image.final is not None
            and engine.trusted_by_sources(image.final, policies)
        ]
        if not to_check:
            return checked
        tasks = {
            index: asyncio.ensure_future(self._target(planned[index], policies, window, keychain))
            for index in to_check
        }
        timeout = None if window.budget is None else max(0.0, window.until - self._clock())
        _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for index, task in tasks.items():
            image = planned[index]
            if task in pending:
                reason = f"not checked within {window.budget:.1f}s"
            elif isinstance(error := task.exception(), RefusedTarget):
                reason = error.user_message
            elif error is not None:  # a resolver's or verifier's bug must not cost admission
                logger.warning("could not check rewrite target %s: %r", image.final, error)
                reason = f"could not check it: {error}"
            else:
                checked[index] = Checked(image, task.result())
                continue
            checked[index] = Checked(engine.without_rewrite(image), refusal=reason)
        return checked

    async def _target(
        self,
        image: engine.PlannedImage,
        policies: Sequence[engine.CompiledPolicy],
        window: Window,
        keychain: Callable[[], Awaitable[Keychain | None]],
    ) -> str | None:
        """The target's digest (verified when asked for); raises `RefusedTarget` saying why not."""
        target = image.final
        if target is None:  # the caller passes only rewritten images
            raise ValueError(f"{image.container.pointer} has no rewrite target")
        digest = await self._resolve(target, window, keychain)
        checks = _enforced_checks(image, target, digest, policies)
        if not checks or self._verifier is None:
            return digest
        verdicts = await self._verifier.verify(checks, window.until, await keychain())
        for check in checks:
            verdict = verdicts.get(check)
            if verdict is None or not verdict.verified:
                why = verdict.reason if verdict is not None else "not verified"
                # The API server keeps 256 characters of a warning: the digest is the one the
                # warning's target names now, so the reason need not repeat it.
                why = why.removeprefix(f"{digest}: ") if digest else why
                raise RefusedTarget(
                    f"signature not verified by policy {check.policy}, source {check.source}: "
                    + why
                )
            digest = verdict.digest or digest
        return digest

    async def _resolve(
        self,
        target: reference.ImageReference,
        window: Window,
        keychain: Callable[[], Awaitable[Keychain | None]],
    ) -> str | None:
        if self._resolver is None:
            return None  # the verifier resolves it
        missing = self._recently_missing(target)
        if missing is not None:
            raise RefusedTarget(missing)
        try:
            return await self._resolver.resolve(target, window.until, await keychain())
        except registry_errors.ManifestUnknown:
            reason = "not found in its registry"
            self._remember_missing(target, reason)
            raise RefusedTarget(reason) from None
        except registry_errors.RegistryError as error:
            raise RefusedTarget(f"could not resolve it: {error.user_message}") from None

    def _recently_missing(self, target: reference.ImageReference) -> str | None:
        entry = self._missing.get(target)
        if entry is None:
            return None
        found_at, reason = entry
        if self._clock() - found_at >= self._missing_ttl:
            del self._missing[target]
            return None
        return reason

    def _remember_missing(self, target: reference.ImageReference, reason: str) -> None:
        self._missing[target] = (self._clock(), reason)
        self._missing.move_to_end(target)
        while len(self._missing) > self._max_missing:
            self._missing.popitem(last=False)


def _enforced_checks(
    image: engine.PlannedImage,
    target: reference.ImageReference,
    digest: str | None,
    policies: Sequence[engine.CompiledPolicy],
) -> list[engine.SignatureCheck]:
    """The signature checks of the enforce policies on the target, pinned to the digest found
    (so what is verified is what will be patched in); warn and audit policies never refuse."""
    pinned = target.with_digest(digest) if digest is not None else target
    enforcing = [policy for policy in policies if policy.mode is engine.Mode.ENFORCE]
    return engine.signature_checks([engine.with_final(image, pinned)], enforcing)
