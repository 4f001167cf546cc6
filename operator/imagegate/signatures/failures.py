"""Why a signature does not verify: one error hierarchy, raised where a check fails.

Checks return None (or what they proved) and raise a `SignatureFailure` whose `user_message`
is the reason an admin reads in the denial. Subclasses exist where a caller tells them apart:
`WrongKey` is the least telling reason when several signatures were tried, and
`MalformedSignature` is what any attacker-made bytes that do not parse become, so one unreadable
signature never hides a valid one beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from imagegate.errors import ImagegateError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class SignatureFailure(ImagegateError):
    """A signature, or every signature, failed a requirement; `user_message` says why."""

    def __init__(self, message: str, *, failures: Sequence[SignatureFailure] = ()) -> None:
        super().__init__(message)
        #: The failure of each candidate, when this one sums several up.
        self.failures = tuple(failures)


class NoSignatures(SignatureFailure):
    """The image has no signature at all."""


class MalformedSignature(SignatureFailure):
    """A signature, its certificate or its log entry cannot be read."""


class WrongKey(SignatureFailure):
    """The signature was made with another key (or certificate) than the one checked."""


class UntrustedCertificate(SignatureFailure):
    """The certificate does not chain to a trusted CA, or was not valid when it signed."""


class WrongIdentity(SignatureFailure):
    """The certificate was issued to another signer than the policy names."""


class BadTransparencyLogEntry(SignatureFailure):
    """No log entry where one is required, or one that does not prove this signature."""


class WrongImage(SignatureFailure):
    """A valid signature, of another image (or of something that is not an image signature)."""


class UnusableTrustRoot(SignatureFailure):
    """The policy's trust root cannot be read or used."""


def any_passes(candidates: Sequence[T], check: Callable[[T], None]) -> None:
    """Returns when one candidate passes `check`; raises why each failed otherwise.

    Each candidate is judged on its own: whatever its (attacker-made) bytes make `check` raise
    is that candidate's failure, and the next one is tried. Nothing passes by accident: only a
    check that returns does.
    """
    if not candidates:
        raise NoSignatures("no signature found")
    failed: list[SignatureFailure] = []
    for candidate in candidates:
        try:
            check(candidate)
        except SignatureFailure as failure:
            failed.append(failure)
        except Exception as error:  # parsing hostile bytes can raise anything; it refuses one
            logger.debug("malformed signature", exc_info=True)
            failed.append(malformed(error))
        else:
            return
    raise summed_up(failed)


def malformed(error: Exception) -> MalformedSignature:
    detail = str(error).splitlines()[0][:120] if str(error) else ""
    name = type(error).__name__
    return MalformedSignature(
        f"malformed signature ({name}: {detail})" if detail else f"malformed signature ({name})"
    )


def summed_up(failed: Sequence[SignatureFailure]) -> SignatureFailure:
    """One failure naming each distinct reason; "wrong key" only when nothing says more."""
    telling = [f for f in failed if not isinstance(f, WrongKey)] or list(failed)
    reasons = sorted({f.user_message for f in telling})
    kinds = {type(f) for f in telling}
    kind = kinds.pop() if len(kinds) == 1 else SignatureFailure
    return kind("; ".join(reasons), failures=failed)


class AttestationFailure(SignatureFailure):
    """An attestation requirement is not met; the message names the predicate type."""


class NoAttestation(AttestationFailure):
    """No attestation of the required predicate type was found."""


class UnmetCondition(AttestationFailure):
    """A verified attestation says something the policy does not accept (the value found)."""
