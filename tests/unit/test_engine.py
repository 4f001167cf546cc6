"""The decision engine: pure functions of workloads, compiled policies and verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from imagegate.cluster import policies as policies_module
from imagegate.core import workloads
from imagegate.policy import engine, model
from imagegate.policy.compile import compile_policy
from imagegate.policy.engine import Mode, SignatureCheck, SignatureVerdict


def policy(name: str, namespace: str | None = None, **spec: Any) -> engine.CompiledPolicy:
    kind = "ImagePolicy" if namespace else "ClusterImagePolicy"
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return compile_policy(
        model.parse_policy_document(
            {
                "apiVersion": "imagegate.dev/v1alpha1",
                "kind": kind,
                "metadata": metadata,
                "spec": spec,
            }
        )
    )


def pod(*images: str, init: tuple[str, ...] = ()) -> list[workloads.ContainerImage]:
    return workloads.find_images(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "spec": {
                "initContainers": [{"name": f"i{n}", "image": i} for n, i in enumerate(init)],
                "containers": [{"name": f"c{n}", "image": i} for n, i in enumerate(images)],
            },
        }
    )


CHAINGUARD = {"name": "chainguard", "images": ["cgr.dev/chainguard/**"]}
OFFICIAL = {"name": "official", "images": ["docker.io/library/*"]}
SIGNED = {
    "name": "signed",
    "images": ["cgr.dev/chainguard/**"],
    "signatures": {"keyless": [{"issuer": "https://i", "subject": "https://s"}]},
}
PYTHON = {"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python"}


def decide(
    images: list[workloads.ContainerImage],
    policies: list[engine.CompiledPolicy],
    verdicts: dict[SignatureCheck, SignatureVerdict] | None = None,
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    apply: bool = True,
) -> engine.Decision:
    chosen = engine.applicable(policies, namespace, labels or {})
    planned = engine.plan_rewrites(images, chosen, apply=apply)
    return engine.evaluate(planned, chosen, verdicts or {})


def test_trusted_sources_are_admitted_and_others_denied_with_the_reason() -> None:
    decision = decide(
        pod("cgr.dev/chainguard/nginx", "ghcr.io/x/y:1"), [policy("p", sources=[CHAINGUARD])]
    )
    assert not decision.allowed
    assert [i.outcome for i in decision.images] == [engine.Outcome.ALLOWED, engine.Outcome.DENIED]
    assert decision.images[0].trusted_by == (("p", "chainguard"),)
    assert decision.denial_message() == (
        "container 'c1' image 'ghcr.io/x/y:1' denied by policy p: "
        "ghcr.io/x/y is not from a source this policy trusts"
    )


def test_policies_are_anded_and_sources_ored() -> None:
    both = [policy("a", sources=[CHAINGUARD, OFFICIAL]), policy("b", sources=[OFFICIAL])]
    decision = decide(pod("nginx", "cgr.dev/chainguard/nginx"), both)
    assert [i.allowed for i in decision.images] == [True, False]
    assert "denied by policy b" in decision.denial_message()


def test_a_namespace_no_policy_selects_is_admitted() -> None:
    selective = policy("p", sources=[CHAINGUARD], namespaceSelector={"matchLabels": {"gate": "on"}})
    assert decide(pod("ghcr.io/x/y"), [selective]).allowed
    assert not decide(pod("ghcr.io/x/y"), [selective], labels={"gate": "on"}).allowed


def test_match_expressions_select_namespaces() -> None:
    selective = policy(
        "p",
        sources=[CHAINGUARD],
        namespaceSelector={
            "matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["ops"]}]
        },
    )
    assert not decide(pod("ghcr.io/x/y"), [selective], labels={}).allowed
    assert decide(pod("ghcr.io/x/y"), [selective], labels={"team": "ops"}).allowed


def test_an_image_policy_applies_only_in_its_own_namespace() -> None:
    local = policy("p", namespace="team-a", sources=[CHAINGUARD])
    assert decide(pod("nginx"), [local], namespace="team-b").allowed
    decision = decide(pod("nginx"), [local], namespace="team-a")
    assert "denied by policy team-a/p" in decision.denial_message()


def test_warn_mode_admits_with_warnings_and_audit_only_records() -> None:
    warn = policy("w", mode="warn", sources=[CHAINGUARD])
    decision = decide(pod("nginx"), [warn])
    assert decision.allowed
    assert decision.warnings() == [
        "container 'c0' image 'nginx' would be denied by policy w: "
        "docker.io/library/nginx is not from a source this policy trusts"
    ]
    audit = decide(pod("nginx"), [policy("a", mode="audit", sources=[CHAINGUARD])])
    assert audit.allowed
    assert audit.warnings() == []
    assert audit.images[0].outcome is engine.Outcome.AUDITED


def test_enforce_rewrites_first_matching_rule_and_validates_the_result() -> None:
    rewriting = policy(
        "r",
        sources=[CHAINGUARD],
        rewrites=[PYTHON, {"from": "docker.io/library/**", "to": "cgr.dev/chainguard/wolfi-base"}],
    )
    images = pod("python:3.12@sha256:" + "a" * 64, "busybox:1.36")
    planned = engine.plan_rewrites(images, [rewriting])
    assert [p.final_text for p in planned] == [
        "cgr.dev/chainguard/python:latest",  # the digest named the old image: dropped
        "cgr.dev/chainguard/wolfi-base:latest",
    ]
    assert {p.rewritten_by for p in planned} == {"r"}
    assert engine.evaluate(planned, [rewriting], {}).allowed


def test_tag_keep_carries_the_tag_over() -> None:
    keep = policy("k", rewrites=[{**PYTHON, "tag": "keep"}])
    (planned,) = engine.plan_rewrites(pod("python:3.12"), [keep])
    assert planned.final_text == "cgr.dev/chainguard/python:3.12"


def test_warn_rewrites_are_previews_and_validation_does_not_apply_enforce_rewrites() -> None:
    warn = policy("w", mode="warn", rewrites=[PYTHON], sources=[OFFICIAL])
    decision = decide(pod("python:3.12"), [warn])
    assert decision.images[0].planned.final_text == "docker.io/library/python:3.12"
    assert decision.warnings() == [
        "container 'c0': policy w would rewrite python:3.12 to cgr.dev/chainguard/python:latest"
    ]
    enforce = policy("e", rewrites=[PYTHON], sources=[CHAINGUARD])
    unmutated = decide(pod("python:3.12"), [enforce], apply=False)
    assert not unmutated.allowed
    assert unmutated.denial_message().endswith("(use cgr.dev/chainguard/python:latest instead)")


def test_signatures_need_a_positive_verdict_and_a_missing_one_denies() -> None:
    signed = policy("s", sources=[SIGNED])
    images = pod("cgr.dev/chainguard/nginx")
    chosen = engine.applicable([signed], "default", {})
    planned = engine.plan_rewrites(images, chosen)
    (check,) = engine.signature_checks(planned, chosen)
    assert check == SignatureCheck("cgr.dev/chainguard/nginx:latest", "s", "signed")
    assert "was not verified" in engine.evaluate(planned, chosen, {}).denial_message()
    failed = {check: SignatureVerdict(False, "no signature found")}
    assert "no signature found" in engine.evaluate(planned, chosen, failed).denial_message()
    assert engine.evaluate(planned, chosen, {check: SignatureVerdict(True)}).allowed


def test_invalid_references_are_violations_not_crashes() -> None:
    decision = decide(pod("Not A Ref"), [policy("p", sources=[CHAINGUARD])])
    assert "invalid image reference: image reference 'Not A Ref' contains whitespace" in (
        decision.denial_message()
    )


def test_rewrite_only_policies_forbid_nothing() -> None:
    assert decide(pod("ghcr.io/a/b"), [policy("r", rewrites=[PYTHON])]).allowed


@pytest.mark.parametrize("mode", [Mode.ENFORCE, Mode.WARN, Mode.AUDIT])
def test_applicable_orders_cluster_policies_first_then_by_name(mode: Mode) -> None:
    policies = [
        policy("b", namespace="ns", mode=mode.value, sources=[CHAINGUARD]),
        policy("z", mode=mode.value, sources=[CHAINGUARD]),
        policy("a", mode=mode.value, sources=[CHAINGUARD]),
    ]
    assert [p.display_name for p in engine.applicable(policies, "ns", {})] == ["a", "z", "ns/b"]


def test_a_policy_set_answers_as_the_plain_list_and_follows_a_namespace_relabelled() -> None:
    """PolicySet keeps what applies per namespace: the same answer as working it out afresh,
    for each namespace on its own, worked out again when the labels differ; a copy each time."""
    policies = [
        policy("b", namespace="ns", sources=[CHAINGUARD]),
        policy("z", sources=[CHAINGUARD]),
        policy("gated", sources=[CHAINGUARD], namespaceSelector={"matchLabels": {"gate": "on"}}),
    ]
    kept = engine.PolicySet(policies)
    cases = [("ns", {}), ("other", {}), ("ns", {"gate": "on"}), ("other", {"gate": "on"})]
    for namespace, labels in [*cases, *cases]:  # the second pass is served from the memo
        expected = engine.applicable(list(policies), namespace, labels)
        assert engine.applicable(kept, namespace, labels) == expected, (namespace, labels)
    given = engine.applicable(kept, "ns", {})
    given.clear()
    assert [p.display_name for p in engine.applicable(kept, "ns", {})] == ["z", "ns/b"]


def test_the_cache_gives_one_policy_set_until_a_policy_changes() -> None:
    cache = policies_module.PolicyCache(None)  # type: ignore[arg-type]  # no reads here
    cache.set_policy((None, "z"), policy("z", sources=[CHAINGUARD]))
    first = cache.policies()
    assert cache.policies() is first
    assert [p.name for p in engine.applicable(first, "ns", {})] == ["z"]
    cache.set_policy((None, "a"), policy("a", sources=[CHAINGUARD]))
    assert [p.name for p in engine.applicable(cache.policies(), "ns", {})] == ["a", "z"]
    cache.set_policy((None, "z"), None)
    assert [p.name for p in engine.applicable(cache.policies(), "ns", {})] == ["a"]


# Memoised decisions (design.md §4.10)


def test_memoised_rewrites_keep_each_tag_apart() -> None:
    keep = policy(
        "keep",
        sources=[CHAINGUARD],
        rewrites=[
            {"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python", "tag": "keep"}
        ],
    )
    for _ in range(2):  # the second pass answers from the memo
        planned = engine.plan_rewrites(pod("python:3.11", "python:3.12", "python"), [keep])
        assert [str(p.final) for p in planned] == [
            "cgr.dev/chainguard/python:3.11",
            "cgr.dev/chainguard/python:3.12",
            "cgr.dev/chainguard/python:latest",
        ]


def test_memoised_sources_answer_as_the_first_matching_source() -> None:
    two = policy("two", sources=[OFFICIAL, CHAINGUARD])
    for _ in range(2):
        decision = decide(pod("nginx", "cgr.dev/chainguard/x", "quay.io/x/y"), [two])
        assert [i.trusted_by for i in decision.images] == [
            (("two", "official"),),
            (("two", "chainguard"),),
            (),
        ]


def test_a_flood_of_distinct_names_never_grows_a_policy_memo_past_its_bound() -> None:
    flooded = policy("flooded", sources=[CHAINGUARD], rewrites=[PYTHON])
    names = [f"registry.example/team/app{n}:v1" for n in range(engine.MEMO_SIZE + 500)]
    for start in range(0, len(names), 500):
        decide(pod(*names[start : start + 500]), [flooded])
    assert 0 < len(flooded._source_memo) <= engine.MEMO_SIZE
    assert 0 < len(flooded._rewrite_memo) <= engine.MEMO_SIZE
