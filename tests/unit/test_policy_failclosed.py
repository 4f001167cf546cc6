"""A policy that cannot be compiled fails closed in its scope, and is refused at apply time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imagegate.admission import builder
from imagegate.admission import review as admission
from imagegate.admission.policies import PolicyReviewer
from imagegate.errors import ImagegateError
from imagegate.policy import compile as policy_compile
from imagegate.policy import engine
from imagegate.policy.engine import Mode

from .test_engine import CHAINGUARD, decide, pod, policy

MINER = "ghcr.io/evil/miner:1"
BAD_KEYLESS = {"keyless": [{"issuer": "https://i", "subjectRegExp": "([a-z"}]}


def resource(
    name: str, namespace: str | None = None, **spec: Any
) -> dict[str, Any]:  # a live resource, as the operator and the webhook get it
    kind = "ImagePolicy" if namespace else "ClusterImagePolicy"
    metadata = {"name": name, "uid": "u-7", **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }


def invalid(name: str, namespace: str | None = None, **spec: Any) -> dict[str, Any]:
    source = {"name": "signed", "images": ["ghcr.io/good/**"], "signatures": BAD_KEYLESS}
    return resource(name, namespace, sources=[source], **spec)


def broken(body: dict[str, Any]) -> engine.CompiledPolicy:
    with pytest.raises(ImagegateError) as raised:
        policy_compile.compile_resource(body)
    return policy_compile.compile_broken(body, raised.value.user_message)


# -- the engine -------------------------------------------------------------------------------


def test_a_broken_policy_denies_every_image_with_its_reason() -> None:
    compiled = engine.CompiledPolicy("p", Mode.ENFORCE, broken="policy p cannot be compiled: x")
    decision = decide(pod(MINER, "cgr.dev/chainguard/python:3"), [compiled])
    assert not decision.allowed
    assert [image.outcome for image in decision.images] == [engine.Outcome.DENIED] * 2
    assert "policy p cannot be compiled: x" in decision.denial_message()
    # Nothing to verify or pin: no registry call for an image that is denied anyway.
    planned = engine.plan_rewrites(pod(MINER), [compiled])
    assert engine.signature_checks(planned, [compiled]) == []
    assert planned[0].final is not None
    assert not engine.trusted_by_sources(planned[0].final, [compiled])


def test_a_broken_policy_keeps_to_its_mode() -> None:
    for mode, outcome in ((Mode.WARN, engine.Outcome.WARNED), (Mode.AUDIT, engine.Outcome.AUDITED)):
        compiled = engine.CompiledPolicy("p", mode, broken="cannot be compiled")
        decision = decide(pod(MINER), [compiled])
        assert decision.allowed
        assert decision.images[0].outcome is outcome


# -- compile_broken: scope, mode, reason ------------------------------------------------------


def test_an_invalid_cluster_policy_denies_in_every_namespace_with_a_fix_hint() -> None:
    compiled = broken(invalid("strict"))
    assert compiled.mode is Mode.ENFORCE
    assert compiled.uid == "u-7"
    decision = decide(pod(MINER), [compiled], namespace="anywhere")
    assert not decision.allowed
    message = decision.denial_message()
    assert "policy strict cannot be compiled: " in message
    assert "'([a-z' is not a valid regular expression" in message
    assert "fix it (kubectl describe cip strict)" in message


def test_an_invalid_cluster_policy_keeps_its_readable_namespace_selector() -> None:
    compiled = broken(invalid("strict", namespaceSelector={"matchLabels": {"team": "a"}}))
    assert not decide(pod(MINER), [compiled], labels={"team": "a"}).allowed
    assert decide(pod(MINER), [compiled], labels={"team": "b"}).allowed


def test_an_unreadable_selector_or_mode_fails_closed() -> None:
    compiled = broken(invalid("strict", namespaceSelector={"matchLabels": "nope"}, mode="loud"))
    assert compiled.mode is Mode.ENFORCE
    assert not decide(pod(MINER), [compiled], labels={"team": "b"}).allowed


def test_an_invalid_image_policy_denies_only_in_its_namespace() -> None:
    compiled = broken(invalid("local", "team-a"))
    assert "kubectl describe imagepolicy local -n team-a" in (compiled.broken or "")
    assert not decide(pod(MINER), [compiled], namespace="team-a").allowed
    assert decide(pod(MINER), [compiled], namespace="team-b").allowed


def test_an_invalid_warn_policy_only_warns() -> None:
    compiled = broken(invalid("soft", mode="warn"))
    decision = decide(pod(MINER), [compiled])
    assert decision.allowed
    assert any("policy soft cannot be compiled" in w for w in decision.warnings())


def test_a_broken_policy_does_not_stop_other_policies_from_trusting() -> None:
    compiled = broken(invalid("local", "team-a"))
    good = policy("good", sources=[CHAINGUARD])
    decision = decide(pod("cgr.dev/chainguard/python:3"), [good, compiled], namespace="team-b")
    assert decision.allowed


# -- /validate-policy --------------------------------------------------------------------------


def review(body: dict[str, Any], operation: str = "CREATE") -> admission.AdmissionReview:
    deleting = operation == "DELETE"
    return admission.AdmissionReview.model_validate(
        builder.review_for(
            None if deleting else body,
            old=body if deleting else None,
            operation=operation,
            namespace="",
            uid="u-1",
        )
    )


def answer(body: dict[str, Any], operation: str = "CREATE") -> admission.AdmissionResponse:
    return asyncio.run(PolicyReviewer()(review(body, operation), deadline=0.0))


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_the_policy_webhook_refuses_an_invalid_regexp_naming_the_field(operation: str) -> None:
    response = answer(invalid("strict"), operation)
    assert not response.allowed
    assert response.uid == "u-1"
    assert response.code == 422
    assert "spec.sources[0].signatures.keyless[0].subjectRegExp" in response.message
    assert "'([a-z' is not a valid regular expression" in response.message


def test_the_policy_webhook_admits_a_valid_policy_and_any_deletion() -> None:
    assert answer(resource("ok", sources=[CHAINGUARD])).allowed
    assert answer(resource("ok", "team-a", sources=[CHAINGUARD]), "UPDATE").allowed
    assert answer(invalid("strict"), "DELETE").allowed
