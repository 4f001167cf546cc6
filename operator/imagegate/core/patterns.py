"""Regular expressions from policies, with RE2 semantics: linear time, whatever the input.

Policy authors write `issuerRegExp` and `subjectRegExp`; certificate subjects come from whoever
signed the image. With Python's backtracking `re`, `(a+)+@y\\.test` against 29 "a"s holds the
event loop for seconds, in the path of every Pod. cosign (Go's regexp) and Kubernetes CEL use RE2,
so RE2 is also what a policy's patterns already mean elsewhere. What RE2 refuses (backreferences,
lookaround) is refused when the policy is validated, with RE2's reason.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

from imagegate.errors import ImagegateError


class PatternError(ImagegateError):
    """Not a regular expression RE2 accepts; the message says why."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error is raised with its reason; no stderr noise
    return options


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    try:
        return re2.compile(pattern, _options())
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise PatternError(
            f"{pattern!r} is not a valid regular expression "
            f"(RE2 syntax: no backreferences or lookaround): {reason}"
        ) from error


def check(pattern: str) -> str:
    """`pattern` itself, or `PatternError` when RE2 refuses it."""
    _compiled(pattern)
    return pattern


def fullmatches(pattern: str, value: str) -> bool:
    """Whether all of `value` matches `pattern`, in time linear in `value`."""
    return _compiled(pattern).fullmatch(value) is not None
