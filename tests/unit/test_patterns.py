"""Policy regular expressions match in linear time (RE2) and what RE2 refuses is refused early."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from imagegate.core import patterns
from imagegate.policy import model
from imagegate.signatures import keyless

#: Nested quantifiers: exponential with a backtracking engine on a near miss.
CATASTROPHIC = r"(a+)+@y\.test"
#: 29 "a"s held the event loop ~20 s with Python's `re`.
NEAR_MISS = "a" * 29 + "@x.test"


def _returns_within(seconds: float, call: Any) -> list[Any]:
    """Run `call` in a thread; what it returned, or [] when it did not return in time."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    return result


def _policy(**authority: Any) -> dict[str, Any]:
    return {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "p"},
        "spec": {
            "sources": [
                {
                    "name": "s",
                    "images": ["cgr.dev/**"],
                    "signatures": {"keyless": [{"issuer": "https://i", **authority}]},
                }
            ]
        },
    }


def test_a_catastrophic_subject_pattern_compiles_and_a_near_miss_returns_at_once() -> None:
    model.parse_policy_document(_policy(subjectRegExp=CATASTROPHIC))
    assert _returns_within(5, lambda: keyless._matches(NEAR_MISS, None, CATASTROPHIC)) == [False]
    assert keyless._matches("aaa@y.test", None, CATASTROPHIC)


def test_identity_patterns_are_full_matches() -> None:
    assert patterns.fullmatches(r"https://s/.*", "https://s/x")
    assert not patterns.fullmatches(r"https://s/", "https://s/x")
    assert not keyless._matches("xhttps://s/", None, r"https://s/")


@pytest.mark.parametrize(
    "pattern", [r"(a)\1@x", r"(?=a)a", r"(?<!b)a", r"(?!a)b", "([a-z"], ids=str
)
def test_a_pattern_re2_refuses_is_refused_with_the_reason(pattern: str) -> None:
    with pytest.raises(patterns.PatternError, match="not a valid regular expression"):
        patterns.check(pattern)
    with pytest.raises(model.PolicyError) as refused:
        model.parse_policy_document(_policy(subjectRegExp=pattern))
    assert "subjectRegExp" in refused.value.user_message
    assert "RE2" in refused.value.user_message
