"""Globs over normalised `registry/repository` names (never a tag or digest).

`*` matches within one path segment, `**` across segments; every other character is literal.
So `cgr.dev/chainguard/*` matches `cgr.dev/chainguard/python` but not `cgr.dev/chainguard/a/b`,
`cgr.dev/chainguard/**` matches both, and neither matches `cgr.dev/chainguard` itself (a glob
ending in `/**` names what is *under* a prefix). `docker.io/library/*` is the Docker Official
Images; write `docker.io/library/python`, not `python`: globs see names after normalisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from imagegate.errors import ImagegateError

_ALLOWED = re.compile(r"[a-z0-9._\-:/\[\]*]+", re.ASCII)


class GlobError(ImagegateError):
    """A glob that cannot match a normalised image name; the message says why."""


@dataclass(frozen=True)
class CompiledGlob:
    pattern: str
    _regex: re.Pattern[str] = field(repr=False, compare=False)

    def matches(self, name: str) -> bool:
        return self._regex.fullmatch(name) is not None

    @property
    def regex(self) -> str:
        """The anchored-by-fullmatch regular expression this glob compiled to."""
        return self._regex.pattern


def compile_any(globs: tuple[CompiledGlob, ...]) -> re.Pattern[str]:
    """One pattern that fullmatches what any of `globs` matches (one regex call, not N)."""
    return re.compile("|".join(f"(?:{g.regex})" for g in globs), re.ASCII)


def compile_glob(pattern: str) -> CompiledGlob:
    """Check `pattern` and compile it, or raise `GlobError` saying what is wrong."""
    if not pattern:
        raise GlobError("glob is empty")
    if pattern != pattern.strip() or any(char.isspace() for char in pattern):
        raise GlobError(f"glob {pattern!r} contains whitespace")
    if pattern.lower() != pattern:
        raise GlobError(f"glob {pattern!r} has uppercase letters; image names are lowercase")
    if not _ALLOWED.fullmatch(pattern):
        raise GlobError(
            f"glob {pattern!r} has characters that never appear in an image name "
            "(allowed: a-z 0-9 . _ - : / [ ] and the wildcards * and **)"
        )
    if "***" in pattern:
        raise GlobError(f"glob {pattern!r} has '***': use '*' (one segment) or '**' (any depth)")
    if pattern.startswith("/") or pattern.endswith("/"):
        raise GlobError(f"glob {pattern!r} starts or ends with '/'")
    if "//" in pattern:
        raise GlobError(f"glob {pattern!r} has an empty path segment ('//')")
    if "/" not in pattern and "**" not in pattern:
        raise GlobError(
            f"glob {pattern!r} has no registry: globs match normalised names such as "
            f"docker.io/library/{pattern}"
        )
    parts = []
    for piece in re.split(r"(\*\*|\*)", pattern):
        if piece == "**":
            parts.append(".*")
        elif piece == "*":
            parts.append("[^/]*")
        else:
            parts.append(re.escape(piece))
    return CompiledGlob(pattern, re.compile("".join(parts), re.ASCII))
