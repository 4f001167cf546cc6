"""Globs over normalised `registry/repository` names (never a tag or digest).

Two wildcards, nothing else is special (`.`, `?`, `[` are literal or refused, never wildcards):

- `*` matches zero or more characters within one path segment (never a `/`);
- `**` matches zero or more characters *including* `/`, and must be a whole path segment.

Because a name's segments are never empty, a `**` segment stands for one or more whole segments:
`cgr.dev/chainguard/**` matches `cgr.dev/chainguard/python` and `cgr.dev/chainguard/a/b` but not
`cgr.dev/chainguard` itself (a glob ending in `/**` names what is *under* a prefix: list the
prefix too if you mean it), `a/**/b` needs at least one segment between `a` and `b`, and `**`
alone matches every name. `docker.io/library/*` is the Docker Official Images, one level deep.
Globs see names after normalisation: write `docker.io/library/python`, not `python`.

A glob compiles once to a regular expression that is fullmatched and never backtracks far (see
`_translate`: the name is chosen by whoever creates the pod, so matching must stay linear);
`compile_any` merges many into one, so a source with N globs costs one regex call per image.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from imagegate.errors import ImagegateError

#: Characters of a registry host (with port, or an IPv6 literal), and of a repository path.
_HOST_CHARS = "a-z0-9._:\\[\\]-"
_PATH_CHARS = "a-z0-9._-"
#: One segment: `**`, `*`, or text with single `*`s (never two in a row). Written so that no
#: string can be matched two ways (a regex engine that backtracks stays fast on it too).
_HOST_SEGMENT = rf"(?:\*\*|\*|\*?(?:[{_HOST_CHARS}]+\*)*[{_HOST_CHARS}]+\*?)"
_PATH_SEGMENT = rf"(?:\*\*|\*|\*?(?:[{_PATH_CHARS}]+\*)*[{_PATH_CHARS}]+\*?)"

#: The whole grammar as one regex (RE2- and Python-compatible, anchored): the CRD schema carries
#: it as `pattern`, so the API server refuses at `kubectl apply` what `compile_glob` refuses.
PATTERN = rf"^(?:\*\*|{_HOST_SEGMENT}(?:/{_PATH_SEGMENT})+)$"
#: Longest accepted glob (a normalised name is at most 255 characters).
MAX_LENGTH = 255

_GRAMMAR = re.compile(PATTERN, re.ASCII)
_ALLOWED = re.compile(r"[a-z0-9._\-:/\[\]*]+", re.ASCII)
_NEVER = "(?!)"


class GlobError(ImagegateError):
    """A glob that cannot match a normalised image name; the message says why."""


@dataclass(frozen=True)
class CompiledGlob:
    """A checked glob; `matches` takes a normalised `registry/repository` name."""

    pattern: str
    _regex: re.Pattern[str] = field(repr=False, compare=False)

    def matches(self, name: str) -> bool:
        return self._regex.fullmatch(name) is not None

    @property
    def regex(self) -> str:
        """The regular expression this glob compiled to (it must be fullmatched)."""
        return self._regex.pattern


def compile_any(globs: Iterable[CompiledGlob]) -> re.Pattern[str]:
    """One pattern that fullmatches what any of `globs` matches (one regex call, not N).

    With no globs it matches nothing.
    """
    alternatives = [f"(?:{glob.regex})" for glob in globs]
    return re.compile("|".join(alternatives) or _NEVER, re.ASCII)


def compile_glob(pattern: str) -> CompiledGlob:
    """Check `pattern` and compile it, or raise `GlobError` saying what is wrong."""
    _check(pattern)
    return CompiledGlob(pattern, re.compile(_translate(pattern), re.ASCII))


def _translate(pattern: str) -> str:
    """The regular expression for a checked glob, built so that matching never backtracks far.

    A naive translation (`*` → `[^/]*`, `**` → `.*`) is exponential in the number of wildcards:
    `*a*a*a*b` against a long run of `a`s takes seconds, and an image name is chosen by whoever
    creates the pod. Instead, both wildcards are matched greedily-leftmost, which is exact for
    globs (a piece between two wildcards placed at its leftmost possible position leaves the most
    room for the rest), and atomic groups stop the engine from retrying other placements:

    - a segment with a `*` is one atomic group that must end at a `/` or at the end, with each
      literal piece between two `*`s found at its leftmost place (`(?>[^/]*?piece)`);
    - a run of r `**` segments takes at least r segments; the segments after it, when more
      wildcards follow, are found at their leftmost place (atomic, lazy); the last ones are
      anchored to the end of the name.

    The cost is then about (segments in the name) x (length of the glob).
    """
    units: list[tuple[int, list[str]]] = [(0, [])]  # (run of `**` before, segments after)
    for segment in pattern.split("/"):
        if segment == "**":
            if units[-1][1] or len(units) == 1:
                units.append((0, []))
            units[-1] = (units[-1][0] + 1, units[-1][1])
        else:
            units[-1][1].append(_segment(segment))
    if units[0] == (0, []):
        units.pop(0)
    regex = ""
    for index, (stars, segments) in enumerate(units):
        separator = "/" if regex else ""
        chunk = "/".join(segments)
        if not stars:  # the segments before the first `**`, anchored to the start
            regex += chunk
            continue
        gap = "[^/]++" + "(?:/[^/]++)" * (stars - 1)
        if not segments:  # a trailing `**`: one or more segments to the end
            regex += f"{separator}{gap}(?:/[^/]++)*"
        elif index == len(units) - 1:  # the last segments, anchored to the end
            regex += f"{separator}{gap}(?:/[^/]++)*/{chunk}"
        else:  # segments between two `**` runs, at their leftmost place
            regex += f"{separator}(?>{gap}(?:/[^/]++)*?/{chunk}(?![^/]))"
    return regex


def _segment(segment: str) -> str:
    """One segment (no `**`); with a `*`, an atomic group that must end at a `/` or the end."""
    pieces = [re.escape(piece) for piece in segment.split("*")]
    if len(pieces) == 1:
        return pieces[0]
    middle = "".join(f"(?>[^/]*?{piece})" for piece in pieces[1:-1])
    last = f"[^/]*?{pieces[-1]}(?![^/])" if pieces[-1] else "[^/]*+"
    return f"(?>{pieces[0]}{middle}{last})"


def _check(pattern: str) -> None:
    """Raise `GlobError` with the first reason `pattern` is not in the grammar."""
    if not pattern:
        raise GlobError("glob is empty")
    if any(char.isspace() for char in pattern):
        raise GlobError(f"glob {pattern!r} contains whitespace")
    if len(pattern) > MAX_LENGTH:
        raise GlobError(f"glob is longer than {MAX_LENGTH} characters")
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
    segments = pattern.split("/")
    for segment in segments:
        if "**" in segment and segment != "**":
            raise GlobError(
                f"glob {pattern!r} has '**' inside the segment {segment!r}: '**' must be a whole "
                "segment (as in ghcr.io/org/**); use '*' within a segment"
            )
    for segment in segments[1:]:
        if ":" in segment:
            raise GlobError(
                f"glob {pattern!r} has ':' in the repository path: globs match registry/repository "
                "names, never a tag or digest"
            )
        if "[" in segment or "]" in segment:
            raise GlobError(
                f"glob {pattern!r} has '[' or ']' in the repository path: they only appear in an "
                "IPv6 registry host, and are never wildcards"
            )
    if len(segments) == 1 and pattern != "**":
        if "." in pattern or ":" in pattern or pattern == "localhost":
            raise GlobError(
                f"glob {pattern!r} names a registry but no repository: "
                f"write {pattern}/** for everything it serves"
            )
        raise GlobError(
            f"glob {pattern!r} has no registry: globs match normalised names such as "
            f"docker.io/library/{pattern}"
        )
    if not _GRAMMAR.fullmatch(pattern):  # the checks above should have said why; a safety net
        raise GlobError(f"glob {pattern!r} is not a valid image glob")
