from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imagegate.core import workloads
from imagegate.core.workloads import MalformedWorkloadError, find_images, new_images


def _spec(containers: Any, **lists: Any) -> dict[str, Any]:
    return {"containers": containers, **lists}


def _wrap(api_version: str, kind: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    template = {"template": {"spec": pod_spec}}
    body: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
    if kind == "Pod":
        body["spec"] = pod_spec
    elif kind == "CronJob":
        body["spec"] = {"jobTemplate": {"spec": template}}
    elif kind == "PodTemplate":
        body.update(template)
    else:
        body["spec"] = template
    return body


@pytest.mark.parametrize(
    ("api_version", "kind", "prefix"),
    [
        ("v1", "Pod", "/spec"),
        ("v1", "PodTemplate", "/template/spec"),
        ("v1", "ReplicationController", "/spec/template/spec"),
        ("apps/v1", "Deployment", "/spec/template/spec"),
        ("apps/v1", "StatefulSet", "/spec/template/spec"),
        ("apps/v1", "DaemonSet", "/spec/template/spec"),
        ("apps/v1", "ReplicaSet", "/spec/template/spec"),
        ("batch/v1", "Job", "/spec/template/spec"),
        ("batch/v1", "CronJob", "/spec/jobTemplate/spec/template/spec"),
    ],
)
def test_every_kind_yields_its_images_with_pointers(
    api_version: str, kind: str, prefix: str
) -> None:
    obj = _wrap(
        api_version,
        kind,
        _spec(
            [{"name": "app", "image": "nginx"}, {"name": "side", "image": "busybox"}],
            initContainers=[{"name": "init", "image": "alpine"}],
        ),
    )
    assert [(i.kind, i.container_name, i.image, i.pointer) for i in find_images(obj)] == [
        ("initContainers", "init", "alpine", f"{prefix}/initContainers/0/image"),
        ("containers", "app", "nginx", f"{prefix}/containers/0/image"),
        ("containers", "side", "busybox", f"{prefix}/containers/1/image"),
    ]


IMAGE_VOLUME = {"name": "payload", "image": {"reference": "evil.example/payload:1"}}


@pytest.mark.parametrize(
    ("api_version", "kind", "prefix"),
    [
        ("v1", "Pod", "/spec"),
        ("apps/v1", "Deployment", "/spec/template/spec"),
        ("batch/v1", "CronJob", "/spec/jobTemplate/spec/template/spec"),
    ],
)
def test_image_volumes_are_images_and_other_volumes_are_not(
    api_version: str, kind: str, prefix: str
) -> None:
    """The kubelet pulls an image volume's reference like a container image."""
    volumes = [{"name": "scratch", "emptyDir": {}}, IMAGE_VOLUME]
    obj = _wrap(api_version, kind, _spec([{"name": "app", "image": "nginx"}], volumes=volumes))
    images = find_images(obj)
    assert [(i.kind, i.container_name, i.image, i.pointer) for i in images] == [
        ("containers", "app", "nginx", f"{prefix}/containers/0/image"),
        ("volumes", "payload", "evil.example/payload:1", f"{prefix}/volumes/1/image/reference"),
    ]
    assert [i.where for i in images] == ["container 'app'", "image volume 'payload'"]


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [("rbac.authorization.k8s.io/v1", "Role"), ("v1", "ConfigMap"), ("example.com/v1", "Pod")],
)
def test_kinds_without_pod_specs_yield_nothing(api_version: str, kind: str) -> None:
    assert find_images({"apiVersion": api_version, "kind": kind, "spec": {"containers": 5}}) == []


@pytest.mark.parametrize(
    ("obj", "where"),
    [
        ({"apiVersion": "v1", "kind": "Pod"}, "/spec is missing"),
        ({"apiVersion": "v1", "kind": "Pod", "spec": []}, "/spec is missing or not an object"),
        ({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}}, "/spec/template is"),
        (
            {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": {}}},
            "/spec/containers is not",
        ),
        (
            {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": ["x"]}},
            "/spec/containers/0 is",
        ),
        (
            {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "a"}]}},
            "/spec/containers/0/image is missing",
        ),
        (
            {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"image": 7}]}},
            "/spec/containers/0/image is missing or not a string",
        ),
        (
            {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [], "volumes": {}}},
            "/spec/volumes is not a list",
        ),
        (
            {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [], "volumes": ["v"]}},
            "/spec/volumes/0 is not an object",
        ),
        (
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "spec": {"containers": [], "volumes": [{"name": "v", "image": "nginx"}]},
            },
            "/spec/volumes/0/image is not an object",
        ),
        (
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "spec": {"containers": [], "volumes": [{"name": "v", "image": {}}]},
            },
            "/spec/volumes/0/image/reference is missing or not a string",
        ),
        (
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "spec": {"containers": [], "volumes": [{"name": "v", "image": {"reference": 1}}]},
            },
            "/spec/volumes/0/image/reference is missing or not a string",
        ),
    ],
)
def test_malformed_pod_specs_name_the_field(obj: dict[str, Any], where: str) -> None:
    with pytest.raises(MalformedWorkloadError) as caught:
        find_images(obj)
    assert where in caught.value.user_message


def test_new_images_are_only_the_added_or_changed_ones() -> None:
    old = _wrap("v1", "Pod", _spec([{"name": "app", "image": "nginx"}]))
    new = _wrap(
        "v1",
        "Pod",
        _spec(
            [{"name": "app", "image": "nginx"}],
            ephemeralContainers=[{"name": "debugger", "image": "busybox"}],
        ),
    )
    assert [(i.kind, i.image) for i in new_images(new, old)] == [("ephemeralContainers", "busybox")]
    changed = _wrap("v1", "Pod", _spec([{"name": "app", "image": "nginx:2"}]))
    assert [i.image for i in new_images(changed, old)] == ["nginx:2"]


def test_new_images_include_a_changed_image_volume() -> None:
    old = _wrap("v1", "Pod", _spec([{"name": "app", "image": "nginx"}], volumes=[IMAGE_VOLUME]))
    assert new_images(old, old) == []
    changed_volume = {"name": "payload", "image": {"reference": "evil.example/payload:2"}}
    new = _wrap("v1", "Pod", _spec([{"name": "app", "image": "nginx"}], volumes=[changed_volume]))
    assert [(i.kind, i.image) for i in new_images(new, old)] == [
        ("volumes", "evil.example/payload:2")
    ]


def test_pod_spec_pointer_uses_the_api_group() -> None:
    assert workloads.pod_spec_pointer("apps/v1", "Deployment") == "/spec/template/spec"
    assert workloads.pod_spec_pointer("extensions/v1beta1", "Deployment") is None


def _requests(
    shared_fixtures: Path,
) -> list[tuple[str, tuple[dict[str, Any], tuple[str, str]]]]:
    found = []
    for path in sorted((shared_fixtures / "admission-requests").rglob("*.json")):
        document = json.loads(path.read_text())
        request = document.get("request", document) if isinstance(document, dict) else None
        if isinstance(request, dict) and isinstance(request.get("object"), dict):
            group_kind = (request["kind"].get("group", ""), request["kind"]["kind"])
            found.append((f"{path.parent.name}/{path.name}", (request["object"], group_kind)))
    return found


def test_real_admission_requests(shared_fixtures: Path) -> None:
    requests = dict(_requests(shared_fixtures))
    objects = {name: obj for name, (obj, _) in requests.items()}
    assert len(objects) > 30
    init = find_images(objects["connaisseur/19_pod_initcontainer.json"])
    assert {i.kind for i in init} == {"initContainers", "containers"}
    ephemeral = find_images(objects["connaisseur/20_pod_ephemeralcontainer.json"])
    assert "ephemeralContainers" in {i.kind for i in ephemeral}
    multi = find_images(objects["connaisseur/09_dply_multi_image.json"])
    assert len(multi) >= 2
    assert all(i.pointer.startswith("/spec/template/spec/") for i in multi)
    # Kubewarden's objects carry no apiVersion/kind: the request's kind says what they are.
    cron = find_images(*requests["kubewarden/cronjob_creation_signed.json"])
    assert cron[0].pointer.startswith("/spec/jobTemplate/spec/template/spec/")
    assert find_images(objects["connaisseur/11_role.json"]) == []
    # Connaisseur's deliberately broken pod (an object with no spec) must be refused, not read.
    broken, group_kind = requests.pop("connaisseur/12_err_pod.json")
    with pytest.raises(MalformedWorkloadError, match="/spec is missing"):
        find_images(broken, group_kind)
    for name, (obj, group_kind) in requests.items():
        for image in find_images(obj, group_kind):
            assert image.image, name


def _pod_with(containers: int, volumes: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": "nginx"} for i in range(containers)],
        "volumes": [{"name": f"v{i}", "emptyDir": {}} for i in range(volumes)],
    }
    return {"apiVersion": "v1", "kind": "Pod", "spec": spec}


def test_images_per_object_are_bounded_and_the_bound_is_named() -> None:
    with pytest.raises(MalformedWorkloadError, match="imagegate judges at most 1000"):
        find_images(_pod_with(70_000))
    with pytest.raises(MalformedWorkloadError, match="/spec has 1001 containers and volumes"):
        find_images(_pod_with(600, volumes=401))


def test_an_object_at_the_image_bound_is_judged() -> None:
    assert len(find_images(_pod_with(workloads.MAX_IMAGES))) == workloads.MAX_IMAGES
