"""imagegate's operator in the admission path of a real API server, end to end."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, utils
from kubernetes.client.rest import ApiException

from imagegate.cluster import resources
from imagegate.testbed import local
from imagegate.testbed.registry import LocalRegistry
from support import Cluster, key_secret, push_key_signed_image, push_random_image

from .conftest import Hardened, PolicyFactory

pytestmark = pytest.mark.controlplane

CHAINGUARD = {"name": "chainguard", "images": ["cgr.dev/chainguard/**"]}
#: A rewrite to a target outside the test bed: `/mutate` cannot check it, so it does not make it
#: (design.md §5.1). Tests of rewrites use the `hardened_python` stand-in instead.
PYTHON = {"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python"}


def pod_body(name: str, image: str, init_image: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    if init_image:
        spec["initContainers"] = [{"name": "setup", "image": init_image}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def template(image: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "w"}},
        "spec": {"containers": [{"name": "app", "image": image}], "restartPolicy": "Never"},
    }


def workload(kind: str, image: str) -> tuple[str, dict[str, Any]]:
    """(apiVersion, body) for each kind with a pod template."""
    selector = {"matchLabels": {"app": "w"}}
    specs: dict[str, tuple[str, dict[str, Any]]] = {
        "Deployment": ("apps/v1", {"selector": selector, "template": template(image)}),
        "StatefulSet": (
            "apps/v1",
            {"selector": selector, "serviceName": "w", "template": template(image)},
        ),
        "DaemonSet": ("apps/v1", {"selector": selector, "template": template(image)}),
        "ReplicaSet": ("apps/v1", {"selector": selector, "template": template(image)}),
        "ReplicationController": ("v1", {"selector": {"app": "w"}, "template": template(image)}),
        "Job": ("batch/v1", {"template": template(image)}),
        "CronJob": (
            "batch/v1",
            {"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": template(image)}}},
        ),
    }
    api_version, spec = specs[kind]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        # restartPolicy Never is only valid for Jobs.
        spec["template"]["spec"].pop("restartPolicy")
    if kind == "ReplicationController":
        spec["template"]["spec"].pop("restartPolicy")
    return api_version, {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "w"},
        "spec": spec,
    }


def create(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> Any:
    return utils.create_from_dict(api, body, namespace=namespace)


def kubectl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    if cluster.control_plane is None or cluster.control_plane.binaries.kubectl is None:
        pytest.skip("kubectl comes with the local test bed")
    return subprocess.run(
        [
            str(cluster.control_plane.binaries.kubectl),
            "--kubeconfig",
            str(cluster.kubeconfig),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_untrusted_image_is_denied_with_container_image_policy_and_reason(
    api: client.ApiClient, gated_namespace: str, image_policy: PolicyFactory
) -> None:
    image_policy(gated_namespace, "chainguard", {"sources": [CHAINGUARD]})
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as denied:
        core.create_namespaced_pod(gated_namespace, pod_body("bad", "nginx:1.25"))
    message = json.loads(denied.value.body)["message"]
    assert message == (
        "admission webhook \"validate.imagegate.dev\" denied the request: container 'app' image "
        f"'nginx:1.25' denied by policy {gated_namespace}/chainguard: docker.io/library/nginx is "
        "not from a source this policy trusts"
    )
    core.create_namespaced_pod(gated_namespace, pod_body("good", "cgr.dev/chainguard/nginx:latest"))
    assert core.read_namespaced_pod("good", gated_namespace).spec.containers[0].image == (
        "cgr.dev/chainguard/nginx:latest"
    )


def test_rewrite_is_stored_on_the_pod_with_the_original_recorded(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    hardened_python: Hardened,
) -> None:
    hardened = hardened_python
    image_policy(
        gated_namespace, "hardened", {"sources": [hardened.source], "rewrites": [hardened.rewrite]}
    )
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(
        gated_namespace, pod_body("py", "python:3.12", init_image="python:3.11-slim")
    )
    stored = core.read_namespaced_pod("py", gated_namespace)
    assert stored.spec.containers[0].image == f"{hardened.image}@{hardened.digest}"
    assert stored.spec.init_containers[0].image == f"{hardened.image}@{hardened.digest}"
    originals = json.loads(stored.metadata.annotations["imagegate.dev/original-images"])
    assert originals == {
        "containers/app": "python:3.12",
        "initContainers/setup": "python:3.11-slim",
    }


@pytest.mark.parametrize(
    "kind",
    [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "ReplicationController",
        "Job",
        "CronJob",
    ],
)
def test_every_controller_kind_is_checked_and_rewritten(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    hardened_python: Hardened,
    kind: str,
) -> None:
    # Scope All: the controller itself is patched (the default, Pods: test_mutation_scope.py).
    hardened = hardened_python
    image_policy(
        gated_namespace,
        "hardened",
        {
            "sources": [hardened.source],
            "rewrites": [hardened.rewrite],
            "mutation": {"scope": "All"},
        },
    )
    _, denied_body = workload(kind, "ghcr.io/untrusted/app:1")
    with pytest.raises(utils.FailToCreateError) as denied:
        create(api, gated_namespace, denied_body)
    assert "ghcr.io/untrusted/app is not from a source this policy trusts" in str(denied.value)

    _, body = workload(kind, "python:3.12")
    (created,) = create(api, gated_namespace, body)
    pod_spec = (
        created.spec.job_template.spec.template.spec
        if kind == "CronJob"
        else created.spec.template.spec
    )
    assert pod_spec.containers[0].image == f"{hardened.image}@{hardened.digest}"


def test_warn_mode_admits_and_kubectl_shows_the_warning(
    cluster: Cluster, gated_namespace: str, image_policy: PolicyFactory
) -> None:
    image_policy(gated_namespace, "onboarding", {"mode": "warn", "sources": [CHAINGUARD]})
    result = kubectl(
        cluster, "-n", gated_namespace, "run", "w", "--image=nginx:1.25", "--restart=Never"
    )
    assert result.returncode == 0, result.stderr
    assert (
        f"Warning: container 'w' image 'nginx:1.25' would be denied by policy "
        f"{gated_namespace}/onboarding" in result.stderr
    )


def test_an_ephemeral_debug_container_is_checked(
    api: client.ApiClient, cluster: Cluster, gated_namespace: str, image_policy: PolicyFactory
) -> None:
    image_policy(gated_namespace, "chainguard", {"sources": [CHAINGUARD]})
    client.CoreV1Api(api).create_namespaced_pod(
        gated_namespace, pod_body("target", "cgr.dev/chainguard/nginx:latest")
    )
    denied = kubectl(
        cluster,
        "-n",
        gated_namespace,
        "debug",
        "target",
        "--image=busybox:1.36",
        "--container=debugger",
    )
    assert denied.returncode != 0
    assert "ephemeral container 'debugger' image 'busybox:1.36' denied" in denied.stderr
    allowed = kubectl(
        cluster,
        "-n",
        gated_namespace,
        "debug",
        "target",
        "--image=cgr.dev/chainguard/busybox:latest",
        "--container=debugger2",
    )
    assert allowed.returncode == 0, allowed.stderr
    stored = client.CoreV1Api(api).read_namespaced_pod("target", gated_namespace)
    assert [c.name for c in stored.spec.ephemeral_containers] == ["debugger2"]


def test_a_cluster_policy_selects_namespaces_by_label(
    api: client.ApiClient, gated_namespace: str, image_policy: PolicyFactory
) -> None:
    core = client.CoreV1Api(api)
    image_policy(
        None,
        f"only-{gated_namespace}",
        {"namespaceSelector": {"matchLabels": {"tier": "prod"}}, "sources": [CHAINGUARD]},
    )
    core.create_namespaced_pod(gated_namespace, pod_body("before", "nginx"))  # not selected
    core.patch_namespace(gated_namespace, {"metadata": {"labels": {"tier": "prod"}}})
    with pytest.raises(ApiException) as denied:
        core.create_namespaced_pod(gated_namespace, pod_body("after", "nginx"))
    assert f"denied by policy only-{gated_namespace}" in denied.value.body


def test_malformed_admission_review_is_refused_by_the_operator(
    operator: local.LocalOperator,
) -> None:
    request = urllib.request.Request(
        operator.url + "/validate",
        data=b"{not json",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=operator.ssl_context(), timeout=10)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["error"].startswith("body is not JSON")


def test_denials_are_counted_in_policy_status_but_dry_runs_are_not(
    api: client.ApiClient, gated_namespace: str, image_policy: PolicyFactory
) -> None:
    import time

    image_policy(gated_namespace, "counted", {"sources": [CHAINGUARD]})
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException):
        core.create_namespaced_pod(gated_namespace, pod_body("dry", "nginx"), dry_run="All")
    for name in ("one", "two"):
        with pytest.raises(ApiException):
            core.create_namespaced_pod(gated_namespace, pod_body(name, f"ghcr.io/x/{name}:1"))
    policies = resources.PolicyResources(api)
    status: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = policies.get(gated_namespace, "counted").get("status") or {}
        if status.get("denials", 0) >= 2:
            break
        time.sleep(0.5)
    assert status.get("denials") == 2
    assert status["lastDenial"]["namespace"] == gated_namespace
    assert status["lastDenial"]["object"] == "Pod/two"
    assert status["lastDenial"]["image"] == "ghcr.io/x/two:1"
    assert status["conditions"][0]["status"] == "True"  # the counter kept the Ready condition


def test_admitted_images_are_pinned_to_the_digest_in_the_registry(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    crane: Path,
    tmp_path: Path,
) -> None:
    digest = push_random_image(crane, registry.address, "pin/app", "v1", tmp_path)
    image_policy(
        gated_namespace,
        "pinned",
        {"sources": [{"name": "local", "images": [f"{registry.address}/**"]}]},
    )
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(
        gated_namespace, pod_body("pinned", f"{registry.address}/pin/app:v1")
    )
    stored = core.read_namespaced_pod("pinned", gated_namespace).spec.containers[0].image
    assert stored == f"{registry.address}/pin/app:v1@{digest}"
    # A tag the registry does not have is left as written, with a warning (and validation,
    # which needs no registry for an unsigned source, admits it: the kubelet will fail to pull).
    core.create_namespaced_pod(
        gated_namespace, pod_body("missing", f"{registry.address}/pin/app:nope")
    )
    assert core.read_namespaced_pod("missing", gated_namespace).spec.containers[0].image == (
        f"{registry.address}/pin/app:nope"
    )


def test_a_signature_policy_denies_unsigned_and_admits_signed_pinned(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    _, signed = push_key_signed_image(crane, cosign, registry.address, "e2e/signed", tmp_path)
    unsigned = push_random_image(crane, registry.address, "e2e/unsigned", "v1", tmp_path)
    image_policy(
        gated_namespace,
        "signed-only",
        {
            "sources": [
                {
                    "name": "team",
                    "images": [f"{registry.address}/e2e/*"],
                    "signatures": {
                        "keys": [{"publicKey": (tmp_path / "cosign.pub").read_text()}],
                        "requireTransparencyLog": False,
                    },
                }
            ]
        },
    )
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as denied:
        core.create_namespaced_pod(
            gated_namespace, pod_body("u", f"{registry.address}/e2e/unsigned:v1")
        )
    message = json.loads(denied.value.body)["message"]
    assert (
        f"signature verification failed for source team: {unsigned}: keys[0]: no signature found"
        in message
    )

    core.create_namespaced_pod(gated_namespace, pod_body("s", f"{registry.address}/e2e/signed:v1"))
    stored = core.read_namespaced_pod("s", gated_namespace).spec.containers[0].image
    assert stored == f"{registry.address}/e2e/signed:v1@{signed}"


def test_keys_can_come_from_a_secret_in_the_policys_namespace(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    _, digest = push_key_signed_image(crane, cosign, registry.address, "e2e/secret", tmp_path)
    key_secret(client.CoreV1Api(api), gated_namespace, (tmp_path / "cosign.pub").read_text())
    image_policy(
        gated_namespace,
        "from-secret",
        {
            "sources": [
                {
                    "name": "team",
                    "images": [f"{registry.address}/e2e/*"],
                    "signatures": {
                        "keys": [{"secretRef": {"name": "cosign"}}],
                        "requireTransparencyLog": False,
                    },
                }
            ]
        },
    )
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(gated_namespace, pod_body("s", f"{registry.address}/e2e/secret:v1"))
    assert core.read_namespaced_pod("s", gated_namespace).spec.containers[0].image.endswith(digest)


def with_image_volume(body: dict[str, Any], reference: str) -> dict[str, Any]:
    body["spec"]["volumes"] = [
        {"name": "payload", "image": {"reference": reference, "pullPolicy": "IfNotPresent"}}
    ]
    return body


def test_image_volumes_are_judged_and_rewritten_like_containers(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    hardened_python: Hardened,
) -> None:
    image_policy(
        gated_namespace,
        "hardened",
        {
            "sources": [CHAINGUARD, hardened_python.source],
            "rewrites": [hardened_python.rewrite],
            "pinDigests": False,
        },
    )
    core = client.CoreV1Api(api)
    trusted = "cgr.dev/chainguard/nginx:latest"
    with pytest.raises(ApiException) as denied:
        core.create_namespaced_pod(
            gated_namespace, with_image_volume(pod_body("bad", trusted), "evil.example/payload:1")
        )
    assert json.loads(denied.value.body)["message"] == (
        "admission webhook \"validate.imagegate.dev\" denied the request: image volume 'payload' "
        f"image 'evil.example/payload:1' denied by policy {gated_namespace}/hardened: "
        "evil.example/payload is not from a source this policy trusts"
    )
    core.create_namespaced_pod(
        gated_namespace, with_image_volume(pod_body("good", trusted), "python:3.12")
    )
    # Raw JSON: the API server kept the image volume (its feature is on) and the rewrite.
    response = core.read_namespaced_pod("good", gated_namespace, _preload_content=False)
    stored = json.loads(response.data)
    assert stored["spec"]["volumes"][0]["image"]["reference"] == hardened_python.image
    originals = stored["metadata"]["annotations"]["imagegate.dev/original-images"]
    assert json.loads(originals) == {"volumes/payload": "python:3.12"}


def test_an_image_id_is_not_admitted_as_a_docker_official_image(
    api: client.ApiClient, gated_namespace: str, image_policy: PolicyFactory
) -> None:
    official = {"name": "official", "images": ["docker.io/library/*"]}
    image_policy(gated_namespace, "official", {"sources": [official], "pinDigests": False})
    image_id = "sha256:" + "0123456789abcdef" * 4
    body = pod_body("by-id", image_id)
    body["spec"]["containers"][0]["imagePullPolicy"] = "Never"
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(api).create_namespaced_pod(gated_namespace, body)
    message = json.loads(denied.value.body)["message"]
    assert f"container 'app' image '{image_id}' denied by policy {gated_namespace}/official" in (
        message
    )
    assert "is an image ID, not a reference: name the image by repository" in message


def test_a_label_on_a_pod_the_tightened_policy_would_deny_is_admitted_unchanged(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    crane: Path,
    tmp_path: Path,
) -> None:
    digest = push_random_image(crane, registry.address, "update/app", "v1", tmp_path)
    image = f"{registry.address}/update/app:v1"
    image_policy(
        gated_namespace,
        "local",
        {"sources": [{"name": "l", "images": [f"{registry.address}/update/**"]}]},
    )
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(gated_namespace, pod_body("old", image))
    pinned = f"{image}@{digest}"
    assert core.read_namespaced_pod("old", gated_namespace).spec.containers[0].image == pinned
    # Policies AND: with this one too, the image is no longer admitted.
    image_policy(gated_namespace, "tightened", {"sources": [CHAINGUARD]})
    with pytest.raises(ApiException) as denied:
        core.create_namespaced_pod(gated_namespace, pod_body("new", pinned))
    assert "denied by policy" in denied.value.body

    # What `kubectl label` sends; the Python client needs no kubectl, so this never skips.
    core.patch_namespaced_pod("old", gated_namespace, {"metadata": {"labels": {"team": "a"}}})
    stored = core.read_namespaced_pod("old", gated_namespace)
    assert stored.metadata.labels == {"team": "a"}
    assert stored.spec.containers[0].image == pinned


def test_an_annotation_on_a_deployment_leaves_its_template_alone(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    crane: Path,
    tmp_path: Path,
) -> None:
    image = f"{registry.address}/update/deploy:v1"
    image_policy(
        gated_namespace,
        "local",
        {
            "sources": [{"name": "l", "images": [f"{registry.address}/update/**"]}],
            # Scope All: a template that would be pinned, so that leaving it alone means something.
            "mutation": {"scope": "All"},
        },
    )
    _, body = workload("Deployment", image)
    create(api, gated_namespace, body)  # the tag is not in the registry yet: left unpinned
    push_random_image(crane, registry.address, "update/deploy", "v1", tmp_path)
    apps = client.AppsV1Api(api)
    before = apps.read_namespaced_deployment("w", gated_namespace)
    assert before.spec.template.spec.containers[0].image == image

    apps.patch_namespaced_deployment(
        "w", gated_namespace, {"metadata": {"annotations": {"owner": "team-a"}}}
    )
    annotated = apps.read_namespaced_deployment("w", gated_namespace)
    assert annotated.metadata.annotations["owner"] == "team-a"
    # The template is what a rollout follows (its hash names the ReplicaSet): a pin would change it.
    assert api.sanitize_for_serialization(annotated.spec.template) == (
        api.sanitize_for_serialization(before.spec.template)
    )
    # The API server bumps a Deployment's generation for an annotation (they are copied to its
    # ReplicaSets), but for a label only when the spec changed.
    apps.patch_namespaced_deployment("w", gated_namespace, {"metadata": {"labels": {"team": "a"}}})
    labelled = apps.read_namespaced_deployment("w", gated_namespace)
    assert labelled.metadata.labels == {"team": "a"}
    assert labelled.metadata.generation == annotated.metadata.generation
    assert labelled.spec.template.spec.containers[0].image == image
