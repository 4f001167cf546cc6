"""`mutation.scope` end to end (docs/design.md §5.1): under Pods, a Deployment is stored as
written (no GitOps drift) and the Pods made from it are rewritten and pinned.

The test bed runs no controller-manager (testbed/controlplane.py), so the test does what the
Deployment and ReplicaSet controllers would: it creates the ReplicaSet from the Deployment's
template and the Pod from the ReplicaSet's, each owned by the one before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from imagegate.testbed.registry import LocalRegistry
from support import Cluster, push_random_image

from .conftest import PolicyFactory
from .test_admission import kubectl, workload

pytestmark = pytest.mark.controlplane

ORIGINAL = "python:3.12-slim"


def rewrite_policy(
    registry: LocalRegistry,
    crane: Path,
    tmp_path: Path,
    apply: PolicyFactory,
    namespace: str,
    scope: str | None,
) -> tuple[str, str]:
    """Push a target image and apply a policy that rewrites python to it (tag kept) and trusts
    only it; `scope` None leaves the default. (target tag reference, its digest).

    Each scope has its own target repository, so no digest cached for one serves the other."""
    repository = f"scope-{(scope or 'default').lower()}/python"
    digest = push_random_image(crane, registry.address, repository, "3.12-slim", tmp_path)
    target = f"{registry.address}/{repository}"
    spec: dict[str, Any] = {
        "sources": [{"name": "local", "images": [target]}],
        "rewrites": [{"from": "docker.io/library/python", "to": target, "tag": "keep"}],
    }
    if scope is not None:
        spec["mutation"] = {"scope": scope}
    apply(namespace, "hardened", spec)
    return f"{target}:3.12-slim", digest


def owned_by(owner: Any, kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "controller": True,
    }


def replica_set_of(api: client.ApiClient, deployment: Any) -> dict[str, Any]:
    """What the Deployment controller would create (the pod template copied as stored)."""
    template = api.sanitize_for_serialization(deployment.spec.template)
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "w-1", "ownerReferences": [owned_by(deployment, "Deployment")]},
        "spec": {"selector": {"matchLabels": {"app": "w"}}, "template": template},
    }


def pod_of(api: client.ApiClient, replica_set: Any) -> dict[str, Any]:
    """What the ReplicaSet controller would create."""
    template = api.sanitize_for_serialization(replica_set.spec.template)
    metadata = {
        **template.get("metadata", {}),
        "name": "w-1-abcde",
        "ownerReferences": [owned_by(replica_set, "ReplicaSet")],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def test_under_scope_pods_the_deployment_is_stored_as_written_and_its_pod_is_rewritten(
    api: client.ApiClient,
    cluster: Cluster,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    crane: Path,
    tmp_path: Path,
) -> None:
    target, digest = rewrite_policy(  # the default scope: Pods
        registry, crane, tmp_path, image_policy, gated_namespace, scope=None
    )
    _, body = workload("Deployment", ORIGINAL)
    manifest = tmp_path / "deployment.json"
    manifest.write_text(json.dumps(body))
    created = kubectl(cluster, "-n", gated_namespace, "create", "-f", str(manifest))
    assert created.returncode == 0, created.stderr
    assert (
        f"Warning: imagegate: Pods of Deployment/w will run {target} instead of {ORIGINAL} "
        f"(policy {gated_namespace}/hardened, mutation scope Pods)"
    ) in created.stderr

    apps = client.AppsV1Api(api)
    deployment = apps.read_namespaced_deployment("w", gated_namespace)
    assert deployment.spec.template.spec.containers[0].image == ORIGINAL
    assert deployment.spec.template.metadata.annotations is None  # no record: nothing changed
    replica_set = apps.create_namespaced_replica_set(
        gated_namespace, replica_set_of(api, deployment)
    )
    assert replica_set.spec.template.spec.containers[0].image == ORIGINAL

    pod = client.CoreV1Api(api).create_namespaced_pod(gated_namespace, pod_of(api, replica_set))
    assert pod.spec.containers[0].image == f"{target}@{digest}"
    originals = json.loads(pod.metadata.annotations["imagegate.dev/original-images"])
    assert originals == {"containers/app": ORIGINAL}
    assert pod.metadata.owner_references[0].name == "w-1"


def test_under_scope_all_the_deployment_is_rewritten_and_pinned(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    crane: Path,
    tmp_path: Path,
) -> None:
    target, digest = rewrite_policy(
        registry, crane, tmp_path, image_policy, gated_namespace, scope="All"
    )
    _, body = workload("Deployment", ORIGINAL)
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(gated_namespace, body)
    template = apps.read_namespaced_deployment("w", gated_namespace).spec.template
    assert template.spec.containers[0].image == f"{target}@{digest}"
    originals = json.loads(template.metadata.annotations["imagegate.dev/original-images"])
    assert originals == {"containers/app": ORIGINAL}
