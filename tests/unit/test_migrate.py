"""`imagegate migrate` (design.md §10): the plan, its three changes, and its outputs."""

from __future__ import annotations

import copy
import datetime
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonpatch  # type: ignore[import-untyped]  # a dependency of kopf; untyped
import pytest
import yaml

from imagegate.commands import migrate
from imagegate.commands.cli import main
from imagegate.core import workloads
from imagegate.policy import migration
from imagegate.trail import reports

from .test_scan import decide
from .test_webhook import REWRITE, policy

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    spec:
      initContainers: [{name: setup, image: "busybox:1.36"}]
      containers:
        - {name: app, image: "python:3.12-slim"}
        - {name: cache, image: "redis:7.2"}
        - {name: mine, image: "ghcr.io/acme/app:1"}
      ephemeralContainers: [{name: debug, image: "cgr.dev/chainguard/busybox:latest"}]
      volumes:
        - {name: data, image: {reference: "node:20-alpine"}}
        - {name: scratch, emptyDir: {}}
"""
CRONJOB = """
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers: [{name: job, image: "openjdk:21"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: not-a-workload}
"""
CHAINGUARD_VERSIONS_KEPT = """
apiVersion: imagegate.dev/v1alpha1
kind: ClusterImagePolicy
metadata: {name: chainguard}
spec:
  rewrites: [{catalog: chainguard}]
"""
PYTHON_ONLY = """
apiVersion: imagegate.dev/v1alpha1
kind: ClusterImagePolicy
metadata: {name: python-only}
spec:
  rewrites: [{from: docker.io/library/python, to: cgr.dev/chainguard/python}]
"""


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "web.yaml").write_text(DEPLOYMENT)
    (tmp_path / "nightly.yml").write_text(CRONJOB)
    (tmp_path / "README.md").write_text("not a manifest")
    return tmp_path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """`imagegate migrate ARGV...` → (exit status, what it printed)."""

    def run(*argv: str) -> tuple[int, str]:
        code = main(["migrate", *argv])
        return code, capsys.readouterr().out

    return run


def plan_of(cli: Callable[..., tuple[int, str]], manifests: Path, *argv: str) -> dict[str, Any]:
    code, out = cli(*argv, "-o", "json", str(manifests))
    assert code == 0
    document: dict[str, Any] = json.loads(out)
    return document


def images_by_container(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        image["container"]: image
        for workload in document["workloads"]
        for image in workload["images"]
    }


def test_dhi_keeps_or_maps_the_tag_for_every_list_and_lists_the_misses(
    cli: Callable[..., tuple[int, str]], manifests: Path
) -> None:
    found = images_by_container(plan_of(cli, manifests, "--catalog", "dhi"))
    assert {name: (i["status"], i["target"]) for name, i in found.items()} == {
        "setup": ("mapped", "dhi.io/busybox:1.36"),
        "app": ("mapped", "dhi.io/python:3.12"),
        "cache": ("mapped", "dhi.io/redis:7.2"),
        "mine": ("no-equivalent", None),
        "debug": ("hardened", None),
        "data": ("mapped", "dhi.io/node:20"),
        "job": ("no-equivalent", None),  # openjdk has no DHI entry
    }
    assert found["app"]["note"] == "tag mapped 3.12-slim -> 3.12"
    assert found["cache"]["note"] == "tag kept"
    assert found["data"]["path"] == "/spec/template/spec/volumes/0/image/reference"


def test_the_first_catalogue_with_an_equivalent_wins(
    cli: Callable[..., tuple[int, str]], manifests: Path
) -> None:
    found = images_by_container(
        plan_of(cli, manifests, "--catalog", "dhi", "--catalog", "chainguard")
    )
    assert (found["app"]["target"], found["job"]["target"]) == (
        "dhi.io/python:3.12",
        "cgr.dev/chainguard/jre:latest",
    )
    assert found["job"]["by"] == "chainguard"


def test_a_latest_only_target_says_which_version_it_drops(
    cli: Callable[..., tuple[int, str]], manifests: Path
) -> None:
    found = images_by_container(plan_of(cli, manifests, "--catalog", "chainguard"))
    assert found["cache"]["status"] == "latest-only"
    assert found["cache"]["target"] == "cgr.dev/chainguard/redis:latest"
    assert found["cache"]["droppedVersion"] == "7.2"
    assert found["cache"]["note"] == "latest only: version 7.2 dropped"


def test_a_policy_without_allow_latest_only_refuses_the_version_drop(
    cli: Callable[..., tuple[int, str]], manifests: Path, tmp_path: Path
) -> None:
    (tmp_path / "policy.yaml").write_text(CHAINGUARD_VERSIONS_KEPT)
    document = plan_of(cli, manifests / "apps", "-p", str(tmp_path / "policy.yaml"))
    [workload] = document["workloads"]
    cache = images_by_container(document)["cache"]
    assert (cache["status"], cache["droppedVersion"]) == ("latest-only-refused", "7.2")
    assert "allowLatestOnly" in cache["note"]
    assert workload["patch"] == []
    assert workload["kubectl"] is None

    allowing = policy("cg", rewrites=[{"catalog": "chainguard", "allowLatestOnly": True}])
    container = workloads.ContainerImage("containers", 0, "cache", "redis:7.2", "/spec/x")
    planned = migration.PolicyPlanner((allowing,)).plan(container)
    assert (planned.status, planned.by, planned.dropped_version) == ("latest-only", "cg", "7.2")


def test_kubectl_lines_cover_containers_and_init_containers_not_volumes(
    cli: Callable[..., tuple[int, str]], manifests: Path
) -> None:
    code, out = cli("--catalog", "dhi", str(manifests))
    assert code == 0
    lines = out.split("\n\n", 1)[1].splitlines()
    assert lines == [
        "kubectl set image -n shop deployment/web setup=dhi.io/busybox:1.36 "
        "app=dhi.io/python:3.12 cache=dhi.io/redis:7.2",
        "# Deployment/shop/web: image volume 'data' is not changed by kubectl set image: "
        "apply the JSON patch (--format patch)",
    ]
    table = out.split("\n\n", 1)[0]
    assert "data (volume)" in table
    assert "setup (init)" in table
    assert table.splitlines()[-1] == (
        "2 workloads, 7 images: 1 hardened, 4 mapped, 2 no-equivalent"
    )


def test_the_json_patch_applies_to_the_manifest_and_refuses_a_changed_one(
    cli: Callable[..., tuple[int, str]],
    manifests: Path,
) -> None:
    code, out = cli("--catalog", "dhi", "--format", "patch", "-o", "json", str(manifests))
    assert code == 0
    [entry] = json.loads(out)  # only the Deployment changes: the CronJob has no DHI equivalent
    original = yaml.safe_load(DEPLOYMENT)
    patched = jsonpatch.apply_patch(original, entry["patch"])
    spec = patched["spec"]["template"]["spec"]
    assert [c["image"] for c in spec["initContainers"] + spec["containers"]] == [
        "dhi.io/busybox:1.36",
        "dhi.io/python:3.12",
        "dhi.io/redis:7.2",
        "ghcr.io/acme/app:1",
    ]
    assert spec["volumes"][0]["image"]["reference"] == "dhi.io/node:20"
    assert (
        spec["ephemeralContainers"] == original["spec"]["template"]["spec"]["ephemeralContainers"]
    )

    edited = copy.deepcopy(original)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "python:3.13-slim"
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(edited, entry["patch"])


def test_kustomize_entries_give_a_new_tag_only_where_it_changes() -> None:
    def plan(*images: str) -> migration.WorkloadPlan:
        containers = [
            workloads.ContainerImage("containers", i, f"c{i}", image, f"/spec/containers/{i}/image")
            for i, image in enumerate(images)
        ]
        return migration.plan_workload(
            migration.Workload("Pod", "p"), containers, migration.CatalogPlanner(("dhi",))
        )

    found = migration.kustomize_images(
        [plan("redis:7.2", "redis:7.4", "node:20-alpine"), plan("python:3.12-slim", "python:3.11")]
    )
    assert [entry.to_json() for entry in found.entries] == [
        {"name": "redis", "newName": "dhi.io/redis"},  # tags carry over: kustomize keeps them
        {"name": "node", "newName": "dhi.io/node", "newTag": "20"},
    ]
    assert found.conflicts == (
        "python: uses need different tags (python:3.11 -> dhi.io/python:3.11; "
        "python:3.12-slim -> dhi.io/python:3.12)",
    )
    pinned = migration.kustomize_images([plan("redis:7.2@sha256:" + "a" * 64)])
    assert [entry.to_json() for entry in pinned.entries] == [
        {"name": "redis", "newName": "dhi.io/redis", "newTag": "7.2"}  # the digest must go
    ]


def test_format_kustomize_with_yaml_is_an_images_block(
    cli: Callable[..., tuple[int, str]], manifests: Path
) -> None:
    code, out = cli("--catalog", "dhi", "--format", "kustomize", "-o", "yaml", str(manifests))
    assert code == 0
    assert yaml.safe_load(out) == {
        "images": [
            {"name": "busybox", "newName": "dhi.io/busybox"},
            {"name": "python", "newName": "dhi.io/python", "newTag": "3.12"},
            {"name": "redis", "newName": "dhi.io/redis"},
            {"name": "node", "newName": "dhi.io/node", "newTag": "20"},
        ]
    }


def test_yaml_and_json_print_the_same_plan_with_a_summary(
    cli: Callable[..., tuple[int, str]], manifests: Path
) -> None:
    code, out = cli("--catalog", "dhi", "-o", "yaml", str(manifests))
    assert code == 0
    document = yaml.safe_load(out)
    assert document == plan_of(cli, manifests, "--catalog", "dhi")
    assert document["summary"]["officialImages"] == {"total": 5, "withEquivalent": 4}
    assert document["summary"]["vendorImages"] == {"total": 1, "withEquivalent": 0}
    assert document["summary"]["topMisses"] == [
        {"image": "docker.io/library/openjdk", "count": 1},
        {"image": "ghcr.io/acme/app", "count": 1},
    ]


def test_stdin_is_read(
    cli: Callable[..., tuple[int, str]], manifests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(DEPLOYMENT))
    code, out = cli("--catalog", "dhi", "-o", "json", "-")
    assert code == 0
    assert len(json.loads(out)["workloads"]) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["MANIFESTS"],  # nothing to migrate to
        ["--catalog", "dhi"],  # no manifests
        ["--catalog", "dhi", "--cluster", "MANIFESTS"],
        ["--catalog", "dhi", "MISSING"],
        ["--catalog", "dhi", "NOT_YAML"],
    ],
)
def test_bad_input_exits_2(argv: list[str], manifests: Path) -> None:
    (manifests / "bad.txt").write_text("a: [")
    names = {
        "MANIFESTS": str(manifests),
        "MISSING": str(manifests / "missing.yaml"),
        "NOT_YAML": str(manifests / "bad.txt"),
    }
    assert main(["migrate", *(names.get(arg, arg) for arg in argv)]) == 2


def test_online_plans_come_from_the_scan_reports_suggestions() -> None:
    obj = yaml.safe_load(DEPLOYMENT)
    obj["metadata"]["uid"] = "u-1"
    rows = reports.results_for(obj, decide(obj, REWRITE), [REWRITE])
    body = reports.report("shop", rows, NOW)
    [plan] = migrate.plans_from_reports([body], None)
    assert plan.workload.label == "Deployment/shop/web"
    by_name = {image.container.container_name: image for image in plan.images}
    app = by_name["app"]
    assert (app.status, str(app.target), app.by) == (
        "mapped",
        "cgr.dev/chainguard/python:latest",
        "hardened",
    )
    assert app.container.pointer == "/spec/template/spec/containers/0/image"
    assert by_name["cache"].status == "no-equivalent"  # REWRITE knows only python
    assert migration.kubectl_line(plan) == (
        "kubectl set image -n shop deployment/web app=cgr.dev/chainguard/python:latest"
    )

    [replanned] = migrate.plans_from_reports([body], migration.CatalogPlanner(("dhi",)))
    replanned_by_name = {image.container.container_name: image for image in replanned.images}
    assert str(replanned_by_name["cache"].target) == "dhi.io/redis:7.2"
    volume = replanned_by_name["data"]
    assert (volume.container.kind, str(volume.target)) == ("volumes", "dhi.io/node:20")


def test_a_file_in_a_directory_that_is_not_a_manifest_is_skipped_with_a_note(
    cli: Callable[..., tuple[int, str]], manifests: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (manifests / "apps" / "chart-template.yaml").write_text("image: {{ .Values.image }}\n")
    code, out = cli("--catalog", "dhi", "-o", "json", str(manifests))
    assert code == 0
    assert len(json.loads(out)["workloads"]) == 2
    assert (
        main(["migrate", "--catalog", "dhi", str(manifests / "apps" / "chart-template.yaml")]) == 2
    )


def test_official_images_are_counted_under_ecr_publics_mirror_too() -> None:
    containers = [
        workloads.ContainerImage("containers", 0, "a", image, "/spec/containers/0/image")
        for image in ("public.ecr.aws/docker/library/redis:8", "quay.io/acme/x:1")
    ]
    plan = migration.plan_workload(
        migration.Workload("Pod", "p"), containers, migration.CatalogPlanner(("dhi",))
    )
    found = migration.summary([plan])
    assert found["officialImages"] == {"total": 1, "withEquivalent": 1}
    assert found["vendorImages"] == {"total": 1, "withEquivalent": 0}


def test_an_image_listed_twice_in_a_report_is_planned_from_the_row_with_a_suggestion() -> None:
    obj = yaml.safe_load(DEPLOYMENT)
    rows = reports.results_for(obj, decide(obj, REWRITE), [REWRITE])
    app = next(row for row in rows if row.container == "app")
    body = {"results": [app._replace(suggestion="", action="").to_json(0), app.to_json(0)]}
    [plan] = migrate.plans_from_reports([body], None)
    [image] = plan.images
    assert str(image.target) == "cgr.dev/chainguard/python:latest"


def test_a_policy_and_a_catalogue_together_the_policy_first_then_the_catalogue(
    cli: Callable[..., tuple[int, str]], manifests: Path, tmp_path: Path
) -> None:
    (tmp_path / "python.yaml").write_text(PYTHON_ONLY)
    (tmp_path / "strict.yaml").write_text(CHAINGUARD_VERSIONS_KEPT)
    found = images_by_container(
        plan_of(cli, manifests, "-p", str(tmp_path / "python.yaml"), "--catalog", "dhi")
    )
    assert (found["app"]["target"], found["app"]["by"]) == (
        "cgr.dev/chainguard/python:latest",
        "python-only",
    )
    assert (found["cache"]["target"], found["cache"]["by"]) == ("dhi.io/redis:7.2", "dhi")

    # A policy's refusal stands: the webhook would not rewrite, so the plan does not either.
    strict = images_by_container(
        plan_of(cli, manifests, "-p", str(tmp_path / "strict.yaml"), "--catalog", "dhi")
    )
    assert strict["cache"]["status"] == "latest-only-refused"


def test_a_pod_templates_images_are_left_to_the_patch_not_kubectl() -> None:
    container = workloads.ContainerImage(
        "containers", 0, "app", "python:3.12", "/template/spec/containers/0/image"
    )
    plan = migration.plan_workload(
        migration.Workload("PodTemplate", "t"), [container], migration.CatalogPlanner(("dhi",))
    )
    assert migration.kubectl_line(plan) is None
    assert [image.container.container_name for image in migration.not_for_kubectl(plan)] == ["app"]
    assert migration.json_patch(plan)[1]["value"] == "dhi.io/python:3.12"


def test_verified_targets_are_noted_in_the_table() -> None:
    container = workloads.ContainerImage("containers", 0, "app", "python:3.12", "/spec/x")
    plan = migration.plan_workload(
        migration.Workload("Pod", "p"), [container], migration.CatalogPlanner(("dhi",))
    )
    table = migrate.render_table(
        [plan], "kubectl", {"dhi.io/python:3.12": migrate.Verified(False, detail="no such tag")}
    )
    assert "tag kept; TARGET MISSING" in table
