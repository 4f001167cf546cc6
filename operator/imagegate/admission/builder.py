"""AdmissionReviews as the API server sends them: the one builder for `imagegate selftest`, the
tests and the benchmarks (the API server's side of the wire, so nothing here parses)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

#: (API group, kind) → resource, for the kinds imagegate judges and its own policies.
_RESOURCES = {
    ("", "Pod"): "pods",
    ("", "PodTemplate"): "podtemplates",
    ("", "ReplicationController"): "replicationcontrollers",
    ("apps", "Deployment"): "deployments",
    ("apps", "StatefulSet"): "statefulsets",
    ("apps", "DaemonSet"): "daemonsets",
    ("apps", "ReplicaSet"): "replicasets",
    ("batch", "Job"): "jobs",
    ("batch", "CronJob"): "cronjobs",
    ("imagegate.dev", "ClusterImagePolicy"): "clusterimagepolicies",
    ("imagegate.dev", "ImagePolicy"): "imagepolicies",
}


def review_for(
    obj: Any,
    *,
    operation: str = "CREATE",
    namespace: str = "default",
    name: str | None = None,
    uid: str | None = None,
    old: Any = None,
    group_kind: tuple[str, str] | None = None,
    version: str | None = None,
    sub_resource: str = "",
    dry_run: bool = False,
    username: str = "imagegate-test",
    api_version: str = "admission.k8s.io/v1",
) -> dict[str, Any]:
    """The AdmissionReview for `operation` on `obj` (or `old`, for a DELETE), as JSON data.

    The request's kind and resource come from the object's apiVersion and kind unless
    `group_kind` says otherwise; the uid is fresh unless given.
    """
    # A test may send an object that is not one (a list, a string): describe it by `group_kind`.
    described = obj if isinstance(obj, Mapping) else old if isinstance(old, Mapping) else {}
    object_api_version = str(described.get("apiVersion", "v1"))
    group, _, object_version = object_api_version.rpartition("/")
    if group_kind is None:
        group_kind = (group, str(described.get("kind", "Pod")))
    version = version or object_version or "v1"
    metadata = described.get("metadata")
    if name is None and isinstance(metadata, Mapping) and isinstance(metadata.get("name"), str):
        name = metadata["name"]
    request: dict[str, Any] = {
        "uid": uid or str(uuid.uuid4()),
        "kind": {"group": group_kind[0], "version": version, "kind": group_kind[1]},
        "resource": {
            "group": group_kind[0],
            "version": version,
            "resource": _RESOURCES.get(group_kind, group_kind[1].lower() + "s"),
        },
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": username},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
    }
    if name is not None:
        request["name"] = name
    if sub_resource:
        request["subResource"] = sub_resource
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": request}


def pod(name: str, *images: str) -> dict[str, Any]:
    """A Pod whose containers (app-0, app-1, ...) run `images`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {"name": f"app-{index}" if index else "app", "image": image}
                for index, image in enumerate(images)
            ]
        },
    }
