"""The authorities a signature requirement names, composed the way sigstore-python composes its
verification policies: each has `verify(found, digest) -> None`, which returns when the image's
signatures satisfy it and raises a `failures.SignatureFailure` saying why not; `AnyOf` is the
one place where "any authority suffices" is decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from imagegate.core import keys
from imagegate.policy import model
from imagegate.signatures import cosign, roots
from imagegate.signatures.failures import SignatureFailure, UnusableTrustRoot


class Authority(Protocol):
    def verify(self, found: Sequence[cosign.FoundSignature], digest: str) -> None: ...


#: A trust root, or why the policy's could not be used (raised by each authority needing it).
RootOrFailure = roots.Root | UnusableTrustRoot


def _usable(root: RootOrFailure) -> roots.Root:
    if isinstance(root, UnusableTrustRoot):
        raise UnusableTrustRoot(root.user_message)
    return root


@dataclass(frozen=True)
class KeyAuthority:
    """Signed with this public key (and logged, when the requirement asks for a log)."""

    key: keys.PublicKey
    require_tlog: bool
    root: RootOrFailure

    def verify(self, found: Sequence[cosign.FoundSignature], digest: str) -> None:
        # Without a log the root is not needed: a private key signs without one.
        root = _usable(self.root).document if self.require_tlog else None
        cosign.verify_with_key(
            found, self.key, digest, require_tlog=self.require_tlog, trusted_root=root
        )


@dataclass(frozen=True)
class IdentityAuthority:
    """Signed keyless, with a certificate the root's Fulcio CA issued to this identity."""

    identity: model.KeylessAuthority
    require_tlog: bool
    root: RootOrFailure

    def verify(self, found: Sequence[cosign.FoundSignature], digest: str) -> None:
        root = _usable(self.root)
        cosign.each_signature(found, lambda signature: self._verify_one(signature, digest, root))

    def _verify_one(self, signature: cosign.FoundSignature, digest: str, root: roots.Root) -> None:
        # Imported here: sigstore-python's keyless stack loads only when a policy names a
        # keyless identity and a signature is checked against it (design.md "Memory and start-up").
        from imagegate.signatures import fulcio, keyless

        if signature.bundle is not None:
            if root.parsed is None:
                raise SignatureFailure("bundles need a trust root sigstore-python accepts")
            keyless.verify_bundle(
                signature.bundle,
                digest,
                self.identity,
                root.parsed,
                predicate=signature.expected_predicate,
            )
        elif signature.certificate is not None:
            fulcio.verify_legacy(
                signature,
                digest,
                self.identity,
                root.document,
                root.parsed,
                require_tlog=self.require_tlog,
            )
        else:
            raise SignatureFailure("signed with a key, not a Fulcio certificate")


@dataclass(frozen=True)
class AnyOf:
    """Satisfied when one of the named authorities is; else the failure names each and why."""

    authorities: Sequence[tuple[str, Authority]]

    def verify(self, found: Sequence[cosign.FoundSignature], digest: str) -> None:
        reasons = []
        for name, authority in self.authorities:
            try:
                authority.verify(found, digest)
            except SignatureFailure as failure:
                reasons.append(f"{name}: {failure.user_message}")
                continue
            return
        raise SignatureFailure("; ".join(reasons) or "the requirement names no authority")


def of_requirement(
    requirement: model.Signatures, public_keys: Sequence[keys.PublicKey], root: RootOrFailure
) -> AnyOf:
    """The requirement's keys (in order), then its keyless identities, any one sufficing."""
    tlog = requirement.require_transparency_log
    named: list[tuple[str, Authority]] = [
        (f"keys[{index}]", KeyAuthority(key, tlog, root)) for index, key in enumerate(public_keys)
    ]
    named += [
        (f"keyless[{index}]", IdentityAuthority(identity, tlog, root))
        for index, identity in enumerate(requirement.keyless)
    ]
    return AnyOf(named)
