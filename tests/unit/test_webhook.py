"""The reviewers behind /mutate and /validate, with the policies handed in directly."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from imagegate.admission import builder, patches
from imagegate.admission import records as audit
from imagegate.admission import review as admission
from imagegate.admission import reviewers as webhook
from imagegate.policy import engine, model
from imagegate.policy.compile import compile_policy


class Policies:
    def __init__(self, *policies: engine.CompiledPolicy, labels: Mapping[str, str] | None = None):
        self._policies = policies
        self._labels = labels or {}

    def policies(self) -> Sequence[engine.CompiledPolicy]:
        return self._policies

    async def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return {"kubernetes.io/metadata.name": namespace, **self._labels}


def policy(name: str, **spec: Any) -> engine.CompiledPolicy:
    return compile_policy(
        model.parse_policy_document(
            {
                "apiVersion": "imagegate.dev/v1alpha1",
                "kind": "ClusterImagePolicy",
                "metadata": {"name": name},
                "spec": spec,
            }
        )
    )


#: Mutation scope All: these tests are about how a controller's pod template is patched (the
#: default, Pods, leaves controllers as written: tests/unit/test_mutation_scope.py).
PATCH_CONTROLLERS = {"scope": "All"}

REWRITE = policy(
    "hardened",
    sources=[{"name": "chainguard", "images": ["cgr.dev/chainguard/**"]}],
    rewrites=[{"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python"}],
    mutation=PATCH_CONTROLLERS,
)


def deployment(image: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    template: dict[str, Any] = {"spec": {"containers": [{"name": "app", "image": image}]}}
    if annotations is not None:
        template["metadata"] = {"annotations": annotations}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": template},
    }


def review(
    obj: Any,
    *,
    operation: str = "CREATE",
    kind: tuple[str, str] = ("apps", "Deployment"),
    old: Any = None,
    sub_resource: str = "",
) -> admission.AdmissionReview:
    return admission.AdmissionReview.model_validate(
        builder.review_for(
            obj,
            operation=operation,
            group_kind=kind,
            version="v1",
            old=old,
            sub_resource=sub_resource,
            uid="u-1",
        )
    )


def apply_patch(obj: dict[str, Any], response: admission.AdmissionResponse) -> dict[str, Any]:
    """A minimal RFC 6902 add/replace, enough to check that our patches apply where they say."""
    wire = response.to_review()["response"]
    result = copy.deepcopy(obj)
    for op in json.loads(base64.b64decode(wire["patch"])) if "patch" in wire else []:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "replace":
            assert (int(last) if isinstance(node, list) else last) in (
                range(len(node)) if isinstance(node, list) else node
            )
        node[int(last) if isinstance(node, list) else last] = op["value"]
    return result


async def test_mutation_rewrites_the_template_and_records_the_original() -> None:
    obj = deployment("python:3.12")
    response = await webhook.Mutator(Policies(REWRITE))(review(obj), deadline=0)
    mutated = apply_patch(obj, response)
    template = mutated["spec"]["template"]
    assert template["spec"]["containers"][0]["image"] == "cgr.dev/chainguard/python:latest"
    assert json.loads(template["metadata"]["annotations"][patches.ORIGINAL_IMAGES_ANNOTATION]) == {
        "containers/app": "python:3.12"
    }
    assert response.audit_annotations["decision"] == "rewritten"
    validated = await webhook.Validator(Policies(REWRITE))(review(mutated), deadline=0)
    assert validated.allowed


async def test_images_that_are_not_rewritten_are_left_exactly_as_written() -> None:
    obj = deployment("nginx")  # trusted by nothing here, but mutation never normalises
    response = await webhook.Mutator(Policies(REWRITE))(review(obj), deadline=0)
    assert response.patch == ()
    assert response.audit_annotations == {"decision": "unchanged"}


async def test_an_earlier_record_of_originals_is_kept() -> None:
    earlier = {patches.ORIGINAL_IMAGES_ANNOTATION: '{"initContainers/setup":"busybox"}', "a": "b"}
    obj = deployment("python:3.12", earlier)
    mutated = apply_patch(obj, await webhook.Mutator(Policies(REWRITE))(review(obj), deadline=0))
    annotations = mutated["spec"]["template"]["metadata"]["annotations"]
    assert annotations["a"] == "b"
    assert json.loads(annotations[patches.ORIGINAL_IMAGES_ANNOTATION]) == {
        "containers/app": "python:3.12",
        "initContainers/setup": "busybox",
    }


async def test_validation_denies_with_the_suggestion_when_mutation_did_not_run() -> None:
    response = await webhook.Validator(Policies(REWRITE))(review(deployment("python:3.12")), 0)
    assert not response.allowed
    assert response.message == (
        "container 'app' image 'python:3.12' denied by policy hardened: docker.io/library/python "
        "is not from a source this policy trusts (use cgr.dev/chainguard/python:latest instead)"
    )
    assert response.audit_annotations["decision"] == "denied"
    assert json.loads(response.audit_annotations["detail"])[0]["outcome"] == "denied"


async def test_malformed_workloads_are_denied_by_validation_and_left_by_mutation() -> None:
    broken = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "x"}]}}
    denied = await webhook.Validator(Policies(REWRITE))(review(broken, kind=("", "Pod")), 0)
    assert (denied.allowed, denied.code) == (False, 400)
    assert "/spec/containers/0/image is missing" in denied.message
    mutated = await webhook.Mutator(Policies(REWRITE))(review(broken, kind=("", "Pod")), 0)
    assert (mutated.allowed, mutated.patch) == (True, ())


@pytest.mark.parametrize("operation", ["DELETE", "CONNECT"])
async def test_requests_without_new_images_are_admitted(operation: str) -> None:
    response = await webhook.Validator(Policies(REWRITE))(
        review(deployment("ghcr.io/x/y"), operation=operation), 0
    )
    assert response.allowed


async def test_an_ephemeral_container_is_judged_alone() -> None:
    old = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {"containers": [{"name": "app", "image": "ghcr.io/legacy/app"}]},
    }
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox"}]
    response = await webhook.Validator(Policies(REWRITE))(
        review(
            new, operation="UPDATE", kind=("", "Pod"), old=old, sub_resource="ephemeralcontainers"
        ),
        0,
    )
    assert not response.allowed
    assert response.message.startswith("ephemeral container 'debugger' image 'busybox' denied")
    assert "legacy" not in response.message


async def test_warn_mode_answers_with_warnings() -> None:
    warn = policy(
        "onboarding",
        mode="warn",
        sources=[{"name": "chainguard", "images": ["cgr.dev/chainguard/**"]}],
    )
    response = await webhook.Validator(Policies(warn))(review(deployment("nginx")), 0)
    assert response.allowed
    assert response.warnings == (
        "container 'app' image 'nginx' would be denied by policy onboarding: "
        "docker.io/library/nginx is not from a source this policy trusts",
    )


async def test_a_namespace_outside_every_selector_is_untouched() -> None:
    selective = policy(
        "p",
        namespaceSelector={"matchLabels": {"imagegate": "on"}},
        sources=[{"name": "c", "images": ["cgr.dev/chainguard/**"]}],
    )
    response = await webhook.Validator(Policies(selective))(review(deployment("nginx")), 0)
    assert response.allowed
    assert response.audit_annotations == {}
    on = await webhook.Validator(Policies(selective, labels={"imagegate": "on"}))(
        review(deployment("nginx")), 0
    )
    assert not on.allowed


class Recorder:
    def __init__(self) -> None:
        self.entries: list[audit.AuditEntry] = []

    def record(self, entry: audit.AuditEntry) -> None:
        self.entries.append(entry)


@pytest.mark.parametrize("dry_run", [False, True])
async def test_denials_are_recorded_with_the_dry_run_flag(dry_run: bool) -> None:
    recorder = Recorder()
    request = review(deployment("ghcr.io/x/y:1")).model_copy(deep=True)
    request = admission.AdmissionReview.model_validate(
        {
            **request.model_dump(by_alias=True),
            "request": {**request.request.model_dump(by_alias=True), "dryRun": dry_run},
        }
    )
    response = await webhook.Validator(Policies(REWRITE), recorders=[recorder])(request, 0)
    assert not response.allowed
    assert [
        (e.action, e.policy.display_name, e.namespace, e.obj, e.container, e.image, e.dry_run)
        for e in recorder.entries
    ] == [
        (
            audit.Action.DENIED,
            "hardened",
            "default",
            "Deployment/web",
            "app",
            "ghcr.io/x/y:1",
            dry_run,
        )
    ]
    assert "not from a source this policy trusts" in recorder.entries[0].detail


async def test_rewrites_are_recorded_by_the_mutating_webhook() -> None:
    recorder = Recorder()
    mutator = webhook.Mutator(Policies(REWRITE), recorders=[recorder])
    await mutator(review(deployment("python:3.12")), 0)
    [entry] = recorder.entries
    assert (entry.action, entry.image, entry.detail) == (
        audit.Action.REWRITTEN,
        "python:3.12",
        "cgr.dev/chainguard/python:latest",
    )
    assert entry.message() == (
        "rewrote container 'app' image 'python:3.12' of Deployment/web in default to "
        "cgr.dev/chainguard/python:latest"
    )


async def test_a_failing_recorder_never_costs_the_admission() -> None:
    class Broken:
        def record(self, entry: audit.AuditEntry) -> None:
            raise RuntimeError("boom")

    validator = webhook.Validator(Policies(REWRITE), recorders=[Broken()])
    response = await validator(review(deployment("ghcr.io/x/y:1")), 0)
    assert not response.allowed
    assert "not from a source" in (response.message or "")


class Resolver:
    def __init__(self, fail: bool = False) -> None:
        self.asked: list[str] = []
        self.fail = fail

    async def resolve(self, image: Any, deadline: float, keychain: Any = None) -> str:
        self.asked.append(str(image))
        if self.fail:
            raise RuntimeError("registry unreachable")
        return "sha256:" + "c" * 64


async def test_trusted_images_are_pinned_keeping_what_the_user_wrote() -> None:
    trusting = policy(
        "pin",
        sources=[{"name": "o", "images": ["docker.io/library/*"]}],
        mutation=PATCH_CONTROLLERS,
    )
    resolver = Resolver()
    obj = deployment("nginx:1.25")
    response = await webhook.Mutator(Policies(trusting), resolver)(review(obj), 0)
    pinned = apply_patch(obj, response)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pinned == "nginx:1.25@sha256:" + "c" * 64
    assert resolver.asked == ["docker.io/library/nginx:1.25"]


async def test_rewritten_images_are_pinned_in_their_new_form() -> None:
    resolver = Resolver()
    obj = deployment("python:3.12")
    response = await webhook.Mutator(Policies(REWRITE), resolver)(review(obj), 0)
    pinned = apply_patch(obj, response)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pinned == "cgr.dev/chainguard/python:latest@sha256:" + "c" * 64


async def test_untrusted_images_cost_no_registry_call_and_warn_mode_never_pins() -> None:
    resolver = Resolver()
    await webhook.Mutator(Policies(REWRITE), resolver)(review(deployment("ghcr.io/x/y")), 0)
    warn = policy("w", mode="warn", sources=[{"name": "o", "images": ["docker.io/library/*"]}])
    await webhook.Mutator(Policies(warn), resolver)(review(deployment("nginx")), 0)
    assert resolver.asked == []


async def test_pinning_is_best_effort_with_a_warning_when_the_registry_fails() -> None:
    trusting = policy(
        "pin",
        sources=[{"name": "o", "images": ["docker.io/library/*"]}],
        mutation=PATCH_CONTROLLERS,
    )
    response = await webhook.Mutator(Policies(trusting), Resolver(fail=True))(
        review(deployment("nginx:1.25")), 0
    )
    assert response.allowed
    assert response.patch == ()
    assert response.warnings == (
        "imagegate: could not pin docker.io/library/nginx:1.25: registry unreachable",
    )


async def test_pin_digests_false_leaves_tags_alone() -> None:
    unpinned = policy(
        "p",
        pinDigests=False,
        sources=[{"name": "o", "images": ["docker.io/library/*"]}],
        mutation=PATCH_CONTROLLERS,
    )
    resolver = Resolver()
    response = await webhook.Mutator(Policies(unpinned), resolver)(review(deployment("nginx")), 0)
    assert (response.patch, resolver.asked) == ((), [])


# -- image volumes: pulled by the kubelet like container images, so judged like them ----------

TRUSTS_OFFICIAL = policy(
    "official",
    sources=[{"name": "o", "images": ["docker.io/library/*"]}],
    mutation=PATCH_CONTROLLERS,
)
VOLUME_POINTERS = {
    ("", "Pod"): "/spec",
    ("apps", "Deployment"): "/spec/template/spec",
    ("batch", "CronJob"): "/spec/jobTemplate/spec/template/spec",
}


def with_image_volume(group_kind: tuple[str, str], reference: str) -> dict[str, Any]:
    """A workload whose one container is trusted and whose image volume is `reference`."""
    pod_spec = {
        "containers": [{"name": "app", "image": "nginx:1.25"}],
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "payload", "image": {"reference": reference, "pullPolicy": "IfNotPresent"}},
        ],
    }
    template = {"template": {"spec": pod_spec}}
    if group_kind == ("", "Pod"):
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod_spec}
    if group_kind == ("batch", "CronJob"):
        spec: dict[str, Any] = {"schedule": "* * * * *", "jobTemplate": {"spec": template}}
        return {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "c"},
            "spec": spec,
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": template,
    }


@pytest.mark.parametrize("group_kind", list(VOLUME_POINTERS))
async def test_an_untrusted_image_volume_is_denied(group_kind: tuple[str, str]) -> None:
    obj = with_image_volume(group_kind, "evil.example/payload:1")
    recorder = Recorder()
    validator = webhook.Validator(Policies(TRUSTS_OFFICIAL), recorders=[recorder])
    response = await validator(review(obj, kind=group_kind), 0)
    assert not response.allowed
    assert response.message == (
        "image volume 'payload' image 'evil.example/payload:1' denied by policy official: "
        "evil.example/payload is not from a source this policy trusts"
    )
    detail = json.loads(response.audit_annotations["detail"])
    assert [(d["kind"], d["container"], d["outcome"]) for d in detail] == [
        ("containers", "app", "allowed"),
        ("volumes", "payload", "denied"),
    ]
    [entry] = recorder.entries
    assert (entry.kind, entry.container, entry.image) == (
        "volumes",
        "payload",
        "evil.example/payload:1",
    )
    assert entry.message().startswith(
        "denied image volume 'payload' image 'evil.example/payload:1'"
    )


@pytest.mark.parametrize("group_kind", list(VOLUME_POINTERS))
async def test_a_trusted_image_volume_is_admitted(group_kind: tuple[str, str]) -> None:
    obj = with_image_volume(group_kind, "busybox:1.36")
    response = await webhook.Validator(Policies(TRUSTS_OFFICIAL))(review(obj, kind=group_kind), 0)
    assert response.allowed


async def test_a_malformed_image_volume_is_denied() -> None:
    obj = with_image_volume(("", "Pod"), "x")
    obj["spec"]["volumes"][1]["image"] = "evil.example/payload:1"
    response = await webhook.Validator(Policies(TRUSTS_OFFICIAL))(review(obj, kind=("", "Pod")), 0)
    assert (response.allowed, response.code) == (False, 400)
    assert "/spec/volumes/1/image is not an object" in (response.message or "")


@pytest.mark.parametrize("group_kind", list(VOLUME_POINTERS))
async def test_image_volumes_are_rewritten_and_pinned_like_containers(
    group_kind: tuple[str, str],
) -> None:
    obj = with_image_volume(group_kind, "python:3.12")
    response = await webhook.Mutator(Policies(REWRITE), Resolver())(review(obj, kind=group_kind), 0)
    prefix = VOLUME_POINTERS[group_kind]
    paths = [
        op["path"] for op in json.loads(base64.b64decode(response.to_review()["response"]["patch"]))
    ]
    assert f"{prefix}/volumes/1/image/reference" in paths
    mutated = apply_patch(obj, response)
    pod_spec = mutated
    for part in prefix.strip("/").split("/"):
        pod_spec = pod_spec[part]
    assert pod_spec["volumes"][1]["image"] == {
        "reference": "cgr.dev/chainguard/python:latest@sha256:" + "c" * 64,
        "pullPolicy": "IfNotPresent",
    }
    metadata = (
        mutated["metadata"] if group_kind == ("", "Pod") else pod_spec_parent(mutated, prefix)
    )
    assert json.loads(metadata["annotations"][patches.ORIGINAL_IMAGES_ANNOTATION]) == {
        "volumes/payload": "python:3.12"
    }


def pod_spec_parent(obj: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The pod template's metadata (the object holding the pod spec at `prefix`)."""
    node: Any = obj
    for part in prefix.strip("/").split("/")[:-1]:
        node = node[part]
    metadata: dict[str, Any] = node["metadata"]
    return metadata


async def test_a_trusted_image_volume_is_pinned_as_written() -> None:
    resolver = Resolver()
    obj = with_image_volume(("", "Pod"), "busybox:1.36")
    response = await webhook.Mutator(Policies(TRUSTS_OFFICIAL), resolver)(
        review(obj, kind=("", "Pod")), 0
    )
    mutated = apply_patch(obj, response)
    assert mutated["spec"]["volumes"][1]["image"]["reference"] == "busybox:1.36@sha256:" + "c" * 64
    assert resolver.asked == ["docker.io/library/nginx:1.25", "docker.io/library/busybox:1.36"]


# -- image IDs: a runtime resolves them to whatever image the node already has ----------------


@pytest.mark.parametrize("image", ["sha256:" + "a" * 64, "a" * 64, "0123456789ab"])
async def test_an_image_id_is_denied_even_where_official_images_are_trusted(image: str) -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": image, "imagePullPolicy": "Never"}]},
    }
    resolver = Resolver()
    mutated = await webhook.Mutator(Policies(TRUSTS_OFFICIAL), resolver)(
        review(obj, kind=("", "Pod")), 0
    )
    assert (mutated.patch, resolver.asked) == ((), [])
    response = await webhook.Validator(Policies(TRUSTS_OFFICIAL))(review(obj, kind=("", "Pod")), 0)
    assert not response.allowed
    assert "is an image ID, not a reference: name the image by repository" in (
        response.message or ""
    )


# UPDATEs: only images that differ from oldObject are judged, rewritten or pinned.

TRUST_LIBRARY = policy(
    "pin", sources=[{"name": "o", "images": ["docker.io/library/*"]}], mutation=PATCH_CONTROLLERS
)


def pod(*containers: tuple[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": labels or {}},
        "spec": {"containers": [{"name": name, "image": image} for name, image in containers]},
    }


def pod_update(new: dict[str, Any], old: dict[str, Any]) -> admission.AdmissionReview:
    return review(new, operation="UPDATE", kind=("", "Pod"), old=old)


async def test_a_label_on_a_pod_the_policy_would_now_deny_changes_and_judges_nothing() -> None:
    # Admitted before the rewrite policy existed; today's policies would rewrite or deny it.
    old = pod(("app", "python:3.12"))
    labelled = pod(("app", "python:3.12"), labels={"team": "a"})
    resolver = Resolver()
    mutated = await webhook.Mutator(Policies(REWRITE), resolver)(pod_update(labelled, old), 0)
    assert (mutated.allowed, mutated.patch, resolver.asked) == (True, (), [])
    validated = await webhook.Validator(Policies(REWRITE))(pod_update(labelled, old), 0)
    assert (validated.allowed, validated.message, validated.warnings) == (True, "", ())


async def test_an_annotation_on_a_deployment_emits_no_patch() -> None:
    old = deployment("nginx:1.25")  # pinning failed when it was created: a tag, no digest
    annotated = copy.deepcopy(old)
    annotated["metadata"]["annotations"] = {"owner": "team-a"}
    resolver = Resolver()
    response = await webhook.Mutator(Policies(TRUST_LIBRARY), resolver)(
        review(annotated, operation="UPDATE", old=old), 0
    )
    assert (response.patch, resolver.asked) == ((), [])
    assert patches.ORIGINAL_IMAGES_ANNOTATION not in json.dumps(response.to_review())


async def test_changing_one_of_two_images_judges_and_pins_only_that_one() -> None:
    old = pod(("app", "nginx:1.25"), ("sidecar", "busybox:1.36"))
    new = pod(("app", "nginx:1.25"), ("sidecar", "busybox:1.37"))
    resolver = Resolver()
    mutated = await webhook.Mutator(Policies(TRUST_LIBRARY), resolver)(pod_update(new, old), 0)
    assert resolver.asked == ["docker.io/library/busybox:1.37"]
    stored = apply_patch(new, mutated)
    assert [c["image"] for c in stored["spec"]["containers"]] == [
        "nginx:1.25",
        "busybox:1.37@sha256:" + "c" * 64,
    ]
    validated = await webhook.Validator(Policies(TRUST_LIBRARY))(pod_update(stored, old), 0)
    assert validated.allowed
    assert [d["container"] for d in json.loads(validated.audit_annotations["detail"])] == [
        "sidecar"
    ]


async def test_a_changed_image_is_still_rewritten_on_update() -> None:
    old = deployment("cgr.dev/chainguard/python:latest")
    new = deployment("python:3.13")
    response = await webhook.Mutator(Policies(REWRITE))(review(new, operation="UPDATE", old=old), 0)
    template = apply_patch(new, response)["spec"]["template"]
    assert template["spec"]["containers"][0]["image"] == "cgr.dev/chainguard/python:latest"
    assert json.loads(template["metadata"]["annotations"][patches.ORIGINAL_IMAGES_ANNOTATION]) == {
        "containers/app": "python:3.13"
    }


async def test_an_untrusted_new_image_on_update_is_denied_naming_only_it() -> None:
    old = pod(("app", "ghcr.io/legacy/app:1"), ("sidecar", "cgr.dev/chainguard/busybox:latest"))
    new = pod(("app", "ghcr.io/legacy/app:1"), ("sidecar", "ghcr.io/x/new:1"))
    response = await webhook.Validator(Policies(REWRITE))(pod_update(new, old), 0)
    assert not response.allowed
    assert response.message == (
        "container 'sidecar' image 'ghcr.io/x/new:1' denied by policy hardened: ghcr.io/x/new "
        "is not from a source this policy trusts"
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # An image moved from the init containers to the app containers runs differently.
        (
            {"initContainers": [{"name": "app", "image": "ghcr.io/x/y:1"}], "containers": []},
            {"containers": [{"name": "app", "image": "ghcr.io/x/y:1"}]},
        ),
        # A renamed container (a template can rename; a Pod cannot).
        (
            {"containers": [{"name": "old", "image": "ghcr.io/x/y:1"}]},
            {"containers": [{"name": "new", "image": "ghcr.io/x/y:1"}]},
        ),
    ],
)
async def test_an_image_in_another_place_is_judged_again(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    def wrap(spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}

    response = await webhook.Validator(Policies(REWRITE))(pod_update(wrap(new), wrap(old)), 0)
    assert not response.allowed


async def test_an_update_without_old_object_judges_every_image() -> None:
    response = await webhook.Validator(Policies(REWRITE))(
        review(pod(("app", "ghcr.io/legacy/app:1")), operation="UPDATE", kind=("", "Pod")), 0
    )
    assert not response.allowed
