"""Policy globs: the documented semantics, the grammar the CRD shares, and linear-time matching."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegate.policy import glob
from imagegate.policy.glob import GlobError, compile_any, compile_glob


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        # `/**` names what is under a prefix, at any depth, never the prefix itself.
        ("cgr.dev/chainguard/**", "cgr.dev/chainguard/python", True),
        ("cgr.dev/chainguard/**", "cgr.dev/chainguard/a/b", True),
        ("cgr.dev/chainguard/**", "cgr.dev/chainguard", False),
        ("cgr.dev/chainguard/**", "cgr.dev/chainguardx/python", False),
        # `*` stays in its segment.
        ("docker.io/library/*", "docker.io/library/nginx", True),
        ("docker.io/library/*", "docker.io/library/a/b", False),
        ("docker.io/library/*", "docker.io/bitnami/nginx", False),
        ("docker.io/library/*", "docker.io/library", False),
        ("docker.io/*/nginx", "docker.io/bitnami/nginx", True),
        ("docker.io/*/nginx", "docker.io/a/b/nginx", False),
        # `*` can match nothing, and sits anywhere in a segment.
        ("gcr.io/distroless/static*", "gcr.io/distroless/static", True),
        ("gcr.io/distroless/static*", "gcr.io/distroless/static-debian12", True),
        ("gcr.io/distroless/*-debian12", "gcr.io/distroless/base-debian12", True),
        ("gcr.io/distroless/*-debian12", "gcr.io/distroless/base-debian11", False),
        ("r.io/*a*b", "r.io/xaybzb", True),
        ("r.io/*a*b", "r.io/xaybzbc", False),
        ("r.io/a*a", "r.io/a", False),  # the two literal pieces never overlap
        ("r.io/a*a", "r.io/aa", True),
        ("*.example.com/**", "registry.example.com/team/app", True),
        ("*.example.com/**", "example.com/app", False),
        # A `**` segment is one or more whole segments, wherever it stands.
        ("**", "anything.io/at/all", True),
        ("**/app", "ghcr.io/org/app", True),
        ("**/app", "ghcr.io/org/myapp", False),
        ("a.io/**/b", "a.io/x/y/b", True),
        ("a.io/**/b", "a.io/b", False),
        ("a.io/**/**/b", "a.io/x/b", False),
        ("a.io/**/**/b", "a.io/x/y/b", True),
        ("**/x/**", "r.io/xy/x/z", True),
        ("**/x/**", "r.io/xy/z", False),
        ("**/x/**", "r.io/z/x", False),
        # Nothing else is special.
        ("ghcr.io/o/a.b", "ghcr.io/o/a-b", False),
        ("ghcr.io/o/a.b", "ghcr.io/o/a.b", True),
        ("localhost:5000/*", "localhost:5000/app", True),
        ("[::1]:5000/*", "[::1]:5000/app", True),
    ],
)
def test_glob_table(pattern: str, name: str, matches: bool) -> None:
    assert compile_glob(pattern).matches(name) is matches


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "glob is empty"),
        ("docker.io/ library/*", "whitespace"),
        (" docker.io/library/*", "whitespace"),
        ("Docker.io/library/*", "uppercase"),
        ("docker.io/library/?", "characters that never appear"),
        ("docker.io/library/{a,b}", "characters that never appear"),
        ("docker.io/***", "'***'"),
        ("/docker.io/x", "starts or ends with '/'"),
        ("docker.io/x/", "starts or ends with '/'"),
        ("docker.io//x", "empty path segment"),
        ("ghcr.io/org**", "'**' must be a whole segment"),
        ("ghcr.io/**org/x", "'**' must be a whole segment"),
        ("docker.io/library/nginx:1.25", "never a tag or digest"),
        ("docker.io/library/[ab]", "never wildcards"),
        ("nginx", "has no registry"),
        ("*", "has no registry"),
        ("docker.io", "write docker.io/** for everything"),
        ("localhost:5000", "names a registry but no repository"),
    ],
)
def test_bad_globs_are_refused_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(GlobError) as caught:
        compile_glob(pattern)
    assert reason in caught.value.user_message
    assert re.fullmatch(glob.PATTERN, pattern) is None  # the CRD schema refuses it too


def test_long_globs_are_refused() -> None:
    compile_glob("r.io/" + "a" * 250)
    with pytest.raises(GlobError, match="longer than 255"):
        compile_glob("r.io/" + "a" * 251)


def test_a_compiled_glob_keeps_its_pattern_and_compares_by_it() -> None:
    compiled = compile_glob("cgr.dev/chainguard/**")
    assert compiled.pattern == "cgr.dev/chainguard/**"
    assert compiled == compile_glob("cgr.dev/chainguard/**")
    assert hash(compiled) == hash(compile_glob("cgr.dev/chainguard/**"))
    assert re.compile(compiled.regex).fullmatch("cgr.dev/chainguard/python")


def test_compile_any_matches_what_any_glob_matches_and_nothing_when_empty() -> None:
    combined = compile_any([compile_glob("docker.io/library/*"), compile_glob("cgr.dev/**")])
    assert combined.fullmatch("docker.io/library/nginx")
    assert combined.fullmatch("cgr.dev/chainguard/python")
    assert not combined.fullmatch("ghcr.io/o/app")
    assert not compile_any(()).fullmatch("docker.io/library/nginx")
    assert not compile_any(()).fullmatch("")


@pytest.mark.timeout(10)  # a backtracking regression hangs in C: fail it within seconds
def test_matching_stays_fast_on_hostile_names() -> None:
    """A naive translation (`*` → `[^/]*`, `**` → `.*`) takes seconds to hours on these."""
    patterns = [
        "r.io/" + "*a" * 8 + "*b",
        "r.io/" + "*ab" * 5 + "*x",
        "/".join(["**"] * 8) + "/x",
        "**/" + "/".join(["*a*"] * 8) + "/**/x",
        "**/a/**/a/**/a/**/a/**/a/**/x",
    ]
    names = [
        "r.io/" + "a" * 247 + "bc",
        "r.io/" + "ab" * 124 + "a",
        "r.io/" + "/".join(["a"] * 124) + "/y",
        "r.io/" + "/".join(["ax", "xa"] * 62) + "/y",
    ]
    compiled = [compile_glob(pattern) for pattern in patterns]
    started = time.perf_counter()
    for candidate in compiled:
        for name in names:
            assert not candidate.matches(name)
    assert time.perf_counter() - started < 0.5


# --- properties ---------------------------------------------------------------------------------


def _reference(pattern: str, name: str) -> bool:
    """The documented semantics, segment by segment: slow, and obviously right."""

    def segment(p: str, s: str) -> bool:
        if not p:
            return not s
        if p[0] == "*":
            return any(segment(p[1:], s[i:]) for i in range(len(s) + 1))
        return bool(s) and s[0] == p[0] and segment(p[1:], s[1:])

    def segments(ps: list[str], ns: list[str]) -> bool:
        if not ps:
            return not ns
        if ps[0] == "**":  # one or more whole segments
            return any(segments(ps[1:], ns[i:]) for i in range(1, len(ns) + 1))
        return bool(ns) and segment(ps[0], ns[0]) and segments(ps[1:], ns[1:])

    return segments(pattern.split("/"), name.split("/"))


_text = st.text("ab.-", min_size=1, max_size=4)
_names = st.lists(_text, min_size=2, max_size=6).map("/".join)
_wild_segment = st.one_of(
    st.just("**"),
    st.just("*"),
    _text,
    st.lists(st.text("ab.", max_size=2), min_size=2, max_size=4)
    .map("*".join)
    .filter(lambda segment: "**" not in segment),
)
_patterns = st.lists(_wild_segment, min_size=1, max_size=5).map("/".join)


@st.composite
def _derived(draw: st.DrawFn) -> tuple[str, str]:
    """A name, and a glob made from it by putting wildcards in: matches are common."""
    parts = draw(st.lists(_text, min_size=2, max_size=6))
    pattern: list[str] = []
    index = 0
    while index < len(parts):
        choice = draw(st.sampled_from(["keep", "keep", "star", "inner", "double"]))
        if choice == "double":
            run = draw(st.integers(1, len(parts) - index))
            pattern.append("**")
            index += run
            continue
        part = parts[index]
        if choice == "star":
            pattern.append("*")
        elif choice == "inner":
            cut = draw(st.integers(0, len(part)))
            end = draw(st.integers(cut, len(part)))
            pattern.append(part[:cut] + "*" + part[end:])
        else:
            pattern.append(part)
        index += 1
    return "/".join(pattern), "/".join(parts)


def _valid(pattern: str) -> bool:
    try:
        compile_glob(pattern)
    except GlobError:
        return False
    return True


@settings(max_examples=200)
@given(_patterns, _names)
def test_matching_agrees_with_the_reference_semantics(pattern: str, name: str) -> None:
    if _valid(pattern):
        assert compile_glob(pattern).matches(name) is _reference(pattern, name)


@settings(max_examples=200)
@given(_derived())
def test_a_glob_made_from_a_name_matches_it_as_the_reference_says(case: tuple[str, str]) -> None:
    pattern, name = case
    if _valid(pattern):
        assert compile_glob(pattern).matches(name) is _reference(pattern, name)


@settings(max_examples=200)
@given(_names, _names)
def test_a_literal_pattern_matches_only_itself(name: str, other: str) -> None:
    literal = compile_glob(name)
    assert literal.matches(name)
    assert literal.matches(other) is (other == name)


@settings(max_examples=200)
@given(_patterns.filter(lambda p: "**" not in p), _names)
def test_without_double_star_a_match_has_as_many_segments_as_the_glob(
    pattern: str, name: str
) -> None:
    if _valid(pattern) and compile_glob(pattern).matches(name):
        assert name.count("/") == pattern.count("/")


@settings(max_examples=200)
@given(_text, st.lists(_text, min_size=1, max_size=5))
def test_star_stays_in_one_segment_and_double_star_crosses(prefix: str, rest: list[str]) -> None:
    name = f"r.io/{prefix}/" + "/".join(rest)
    assert compile_glob(f"r.io/{prefix}/**").matches(name)
    assert compile_glob(f"r.io/{prefix}/*").matches(name) is (len(rest) == 1)
    assert not compile_glob(f"r.io/{prefix}/**").matches(f"r.io/{prefix}")
    assert not compile_glob(f"r.io/{prefix}/**").matches(f"r.io/{prefix}x/" + "/".join(rest))
    assert compile_glob("**").matches(name)


@settings(max_examples=200)
@given(st.lists(_patterns, min_size=0, max_size=4), _names)
def test_compile_any_is_any_of_the_globs(patterns: list[str], name: str) -> None:
    compiled = [compile_glob(pattern) for pattern in patterns if _valid(pattern)]
    combined = compile_any(compiled).fullmatch(name) is not None
    assert combined is any(candidate.matches(name) for candidate in compiled)


@settings(max_examples=200)
@given(st.text("ab.:[]*/-A ?", max_size=14))
def test_the_schema_pattern_accepts_exactly_what_compile_glob_accepts(pattern: str) -> None:
    """The CRD carries `glob.PATTERN`, so `kubectl apply` and the operator agree on globs."""
    assert (re.fullmatch(glob.PATTERN, pattern) is not None) is _valid(pattern)


def test_the_schema_pattern_is_plain_enough_for_the_api_server() -> None:
    """RE2 (the API server's engine) has no lookaround, atomic groups or backreferences."""
    for construct in ("(?=", "(?!", "(?<", "(?>", "\\1", "*+", "++"):
        assert construct not in glob.PATTERN
