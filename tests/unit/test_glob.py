from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegate.policy.glob import GlobError, compile_glob


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("cgr.dev/chainguard/*", "cgr.dev/chainguard/python", True),
        ("cgr.dev/chainguard/*", "cgr.dev/chainguard/a/b", False),
        ("cgr.dev/chainguard/**", "cgr.dev/chainguard/a/b", True),
        ("cgr.dev/chainguard/**", "cgr.dev/chainguard/python", True),
        ("cgr.dev/chainguard/**", "cgr.dev/chainguard", False),
        ("cgr.dev/chainguard/**", "cgr.dev/chainguardx/python", False),
        ("docker.io/library/*", "docker.io/library/nginx", True),
        ("docker.io/library/*", "docker.io/bitnami/nginx", False),
        ("gcr.io/distroless/static*", "gcr.io/distroless/static-debian12", True),
        ("**/app", "ghcr.io/org/app", True),
        ("**", "anything.io/at/all", True),
        ("ghcr.io/o/a.b", "ghcr.io/o/aXb", False),  # "." is literal
        ("localhost:5000/*", "localhost:5000/app", True),
        ("[::1]:5000/*", "[::1]:5000/app", True),
    ],
)
def test_glob_table(pattern: str, name: str, matches: bool) -> None:
    assert compile_glob(pattern).matches(name) is matches


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty"),
        ("docker.io/ library/*", "whitespace"),
        ("Docker.io/library/*", "uppercase"),
        ("docker.io/library/?", "characters"),
        ("docker.io/***", "'***'"),
        ("/docker.io/x", "starts or ends"),
        ("docker.io/x/", "starts or ends"),
        ("docker.io//x", "empty path segment"),
        ("nginx", "no registry"),
    ],
)
def test_bad_globs_are_refused_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(GlobError) as caught:
        compile_glob(pattern)
    assert reason in caught.value.user_message


_segment = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=8)
_name = st.lists(_segment, min_size=2, max_size=5).map("/".join)


@settings(max_examples=200)
@given(_name, _name)
def test_a_literal_pattern_matches_only_itself(name: str, other: str) -> None:
    glob = compile_glob(name)
    assert glob.matches(name)
    assert glob.matches(other) is (other == name)


@settings(max_examples=200)
@given(_segment, st.lists(_segment, min_size=1, max_size=4))
def test_star_stays_in_one_segment_and_double_star_crosses(prefix: str, rest: list[str]) -> None:
    name = f"r.io/{prefix}/" + "/".join(rest)
    assert compile_glob(f"r.io/{prefix}/**").matches(name)
    assert compile_glob(f"r.io/{prefix}/*").matches(name) is (len(rest) == 1)
