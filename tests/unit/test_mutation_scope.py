"""`mutation.scope` (docs/design.md §5.1): which objects /mutate patches, and how /validate
judges a controller it leaves as written."""

from __future__ import annotations

from typing import Any

import pytest

from imagegate.admission import patches
from imagegate.admission import reviewers as webhook
from imagegate.core import workloads
from imagegate.policy import engine, model
from imagegate.trail import reports

from .test_webhook import Policies, Resolver, apply_patch, deployment, policy, review

DIGEST = "sha256:" + "c" * 64
DHI = {"name": "dhi", "images": ["dhi.io/**"]}


def hardened(name: str = "dhi", scope: str | None = None, **spec: Any) -> engine.CompiledPolicy:
    """Rewrite to DHI and trust only DHI; `scope` None leaves the default."""
    spec = {"sources": [DHI], "rewrites": [{"catalog": "dhi"}], **spec}
    if scope is not None:
        spec["mutation"] = {"scope": scope}
    return policy(name, **spec)


def pod(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1"},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


CONTROLLERS = [
    ("apps", "Deployment"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("apps", "ReplicaSet"),
    ("", "ReplicationController"),
    ("batch", "Job"),
    ("batch", "CronJob"),
]


def controller(group_kind: tuple[str, str], image: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    body: dict[str, Any] = {"template": {"spec": spec}}
    if group_kind[1] == "CronJob":
        body = {"jobTemplate": {"spec": body}}
    version = f"{group_kind[0]}/v1" if group_kind[0] else "v1"
    return {"apiVersion": version, "kind": group_kind[1], "metadata": {"name": "x"}, "spec": body}


# -- the field ----------------------------------------------------------------------------------


def test_the_default_scope_is_pods_and_compiles_into_the_policy() -> None:
    spec = model.parse_spec({"rewrites": [{"catalog": "dhi"}]})
    assert spec.mutation.scope == "Pods"
    assert hardened().mutation_scope is engine.MutationScope.PODS
    assert hardened(scope="All").mutation_scope is engine.MutationScope.ALL


@pytest.mark.parametrize("scope", ["pods", "Deployments", ""])
def test_an_unknown_scope_is_refused_naming_the_field(scope: str) -> None:
    with pytest.raises(model.PolicyError, match=r"spec\.mutation\.scope"):
        model.parse_spec({"rewrites": [{"catalog": "dhi"}], "mutation": {"scope": scope}})


# -- the pure decision ----------------------------------------------------------------------------


@pytest.mark.parametrize("group_kind", CONTROLLERS)
def test_controllers_are_patched_only_under_scope_all(group_kind: tuple[str, str]) -> None:
    assert not engine.patches_kind(group_kind, [hardened()])
    assert engine.judged_as_pods(group_kind, [hardened()])
    assert engine.patches_kind(group_kind, [hardened(scope="All")])
    assert not engine.judged_as_pods(group_kind, [hardened(scope="All")])


def test_pods_are_always_patched() -> None:
    assert engine.patches_kind(engine.POD_KIND, [hardened()])
    assert engine.patches_kind(engine.POD_KIND, [hardened(scope="All")])


def test_one_mutating_policy_that_says_pods_keeps_a_controller_as_written() -> None:
    rewrites_everywhere = hardened("rewrite", scope="All")
    pins_pods_only = policy("pin", sources=[DHI], mutation={"scope": "Pods"})
    kind = ("apps", "Deployment")
    assert not engine.patches_kind(kind, [rewrites_everywhere, pins_pods_only])
    assert engine.patches_kind(kind, [rewrites_everywhere, hardened("other", scope="All")])


def test_policies_that_change_nothing_have_no_say() -> None:
    kind = ("apps", "Deployment")
    everywhere = hardened("rewrite", scope="All")
    previews = hardened("preview", mode="warn")  # scope Pods, but warn mode never patches
    neither = policy("plain", sources=[DHI], pinDigests=False)  # no rewrites, no pins
    assert engine.patches_kind(kind, [everywhere, previews, neither])


# -- /mutate --------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_kind", CONTROLLERS)
async def test_a_controller_under_scope_pods_is_stored_as_written(
    group_kind: tuple[str, str],
) -> None:
    resolver = Resolver()
    obj = controller(group_kind, "python:3.12-slim")
    response = await webhook.Mutator(Policies(hardened()), resolver)(
        review(obj, kind=group_kind), 0
    )
    assert response.allowed
    assert (response.patch, response.warnings) == ((), ())
    assert response.audit_annotations == {"decision": "left-to-pods"}
    assert resolver.asked == []  # nothing pinned, so no registry call either


async def test_a_controller_under_scope_all_is_rewritten_and_pinned() -> None:
    obj = deployment("python:3.12-slim")
    response = await webhook.Mutator(Policies(hardened(scope="All")), Resolver())(review(obj), 0)
    template = apply_patch(obj, response)["spec"]["template"]
    assert template["spec"]["containers"][0]["image"] == f"dhi.io/python:3.12@{DIGEST}"


async def test_the_pod_is_rewritten_pinned_and_records_the_original() -> None:
    obj = pod("python:3.12-slim")
    response = await webhook.Mutator(Policies(hardened()), Resolver())(
        review(obj, kind=engine.POD_KIND), 0
    )
    mutated = apply_patch(obj, response)
    assert mutated["spec"]["containers"][0]["image"] == f"dhi.io/python:3.12@{DIGEST}"
    annotation = mutated["metadata"]["annotations"][patches.ORIGINAL_IMAGES_ANNOTATION]
    assert annotation == '{"containers/app":"python:3.12-slim"}'


async def test_mixed_scopes_leave_the_controller_and_patch_its_pods() -> None:
    policies = Policies(
        hardened("rewrite", scope="All"), policy("pin", sources=[DHI], mutation={"scope": "Pods"})
    )
    response = await webhook.Mutator(policies, Resolver())(review(deployment("python:3.12")), 0)
    assert response.patch == ()
    pod_response = await webhook.Mutator(policies, Resolver())(
        review(pod("python:3.12"), kind=engine.POD_KIND), 0
    )
    assert apply_patch(pod("python:3.12"), pod_response)["spec"]["containers"][0]["image"] == (
        f"dhi.io/python:3.12@{DIGEST}"
    )


# -- /validate ------------------------------------------------------------------------------------


async def test_a_controller_is_judged_as_its_pods_will_run_with_the_exact_rewrite() -> None:
    response = await webhook.Validator(Policies(hardened()))(
        review(deployment("python:3.12-slim")), 0
    )
    assert response.allowed, response.message
    assert response.warnings == (
        "imagegate: Pods of Deployment/web will run dhi.io/python:3.12 instead of "
        "python:3.12-slim (policy dhi, mutation scope Pods)",
    )


async def test_an_image_no_rule_rewrites_is_still_denied_on_the_controller() -> None:
    response = await webhook.Validator(Policies(hardened()))(review(deployment("ghcr.io/x/y")), 0)
    assert not response.allowed
    assert "ghcr.io/x/y is not from a source this policy trusts" in response.message
    assert response.warnings == ()


async def test_under_scope_all_the_controller_is_judged_as_stored() -> None:
    """`/mutate` patches it: an original that reaches /validate was not rewritten."""
    response = await webhook.Validator(Policies(hardened(scope="All")))(
        review(deployment("python:3.12-slim")), 0
    )
    assert not response.allowed
    assert "(use dhi.io/python:3.12 instead)" in response.message


async def test_a_pod_is_judged_as_stored_whatever_the_scope() -> None:
    response = await webhook.Validator(Policies(hardened()))(
        review(pod("python:3.12-slim"), kind=engine.POD_KIND), 0
    )
    assert not response.allowed  # /mutate would have rewritten it: this one was not


async def test_the_background_scan_judges_a_controller_as_validate_does() -> None:
    """The scan calls `judge` too: a Deployment left as written is reported as its Pods run."""
    obj = deployment("python:3.12-slim")
    decision = await webhook.judge(
        workloads.find_images(obj),
        [hardened()],
        obj=obj,
        namespace="shop",
        group_kind=("apps", "Deployment"),
        verifier=None,
        keychains=None,
        deadline=0,
    )
    assert decision.allowed
    assert [str(image.planned.final) for image in decision.images] == ["dhi.io/python:3.12"]


async def test_the_scan_reports_a_controller_left_to_its_pods_as_rewritten_not_pass() -> None:
    """Its Pods are admitted, but its stored spec still names the original: the report says
    so ("rewritten", with the suggestion), so the migration is not hidden behind a pass."""
    obj = deployment("python:3.12-slim")
    policies = [hardened()]
    decision = await webhook.judge(
        workloads.find_images(obj),
        policies,
        obj=obj,
        namespace="shop",
        group_kind=("apps", "Deployment"),
        verifier=None,
        keychains=None,
        deadline=0,
    )
    [row] = reports.results_for(obj, decision, policies)
    assert row.result == "warn"
    assert row.message.startswith("rewritten: ")
    assert "mutation scope Pods" in row.message
    assert row.suggestion == "dhi.io/python:3.12"
