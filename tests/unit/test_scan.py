"""The background scan, pure part: decisions → PolicyReport rows; which objects and namespaces."""

from __future__ import annotations

import datetime
import gc
from typing import Any

import pytest

from imagegate.admission import reviewers as webhook
from imagegate.core import workloads
from imagegate.policy import engine
from imagegate.trail import reports, scan

from .test_webhook import REWRITE, Policies, apply_patch, deployment, policy, review

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
WARN = policy("preview", mode="warn", sources=[{"name": "cg", "images": ["cgr.dev/**"]}])


def decide(obj: dict[str, Any], *policies: engine.CompiledPolicy) -> engine.Decision:
    planned = engine.plan_rewrites(workloads.find_images(obj), policies, apply=False)
    return engine.evaluate(planned, policies, {})


def with_namespace(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"] = {**obj["metadata"], "namespace": "shop", "uid": "u-1"}
    return obj


def test_enforce_violations_fail_warn_and_audit_ones_warn_trusted_images_pass() -> None:
    obj = with_namespace(deployment("ghcr.io/acme/billing:2"))
    rows = reports.results_for(obj, decide(obj, REWRITE, WARN))
    assert sorted((r.policy, r.result) for r in rows) == [("hardened", "fail"), ("preview", "warn")]
    fail = next(r for r in rows if r.result == "fail")
    assert fail.message.startswith("container 'app' image 'ghcr.io/acme/billing:2' denied by")
    assert fail.resource == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
        "namespace": "shop",
        "uid": "u-1",
    }
    assert (fail.path, fail.container) == ("/spec/template/spec/containers/0/image", "app")

    trusted = with_namespace(deployment("cgr.dev/chainguard/nginx:latest"))
    assert [
        (r.policy, r.result) for r in reports.results_for(trusted, decide(trusted, REWRITE))
    ] == [("hardened", "pass")]


async def test_the_scan_reaches_the_admission_chains_verdict() -> None:
    """Same engine calls as the webhooks: the report fails exactly what admission (mutation,
    then validation) would deny, and what mutation would rewrite is a warning, not a failure."""
    for image in ("python:3.12", "ghcr.io/x/y:1", "cgr.dev/chainguard/python:latest"):
        obj = deployment(image)
        mutated = apply_patch(obj, await webhook.Mutator(Policies(REWRITE))(review(obj), 0))
        response = await webhook.Validator(Policies(REWRITE))(review(mutated), 0)
        rows = reports.results_for(obj, decide(obj, REWRITE), [REWRITE])
        failed = any(r.result == "fail" for r in rows)
        assert failed is (not response.allowed), image


def test_an_image_the_webhook_would_rewrite_is_reported_rewritten_with_its_suggestion() -> None:
    obj = with_namespace(deployment("python:3.12"))
    [row] = reports.results_for(obj, decide(obj, REWRITE), [REWRITE])
    assert row.result == "warn"
    assert row.message.startswith(
        "rewritten: container 'app' image 'python:3.12' is rewritten to "
        "cgr.dev/chainguard/python:latest by policy hardened when next admitted"
    )
    properties = row.to_json(0)["properties"]
    assert properties["suggestion"] == "cgr.dev/chainguard/python:latest"
    assert properties["action"] == "rewrite"


def test_a_warn_policys_row_keeps_its_own_message_beside_a_rewritten_one() -> None:
    obj = with_namespace(deployment("python:3.12"))
    rows = reports.results_for(obj, decide(obj, REWRITE, WARN), [REWRITE, WARN])
    by_policy = {row.policy: row for row in rows}
    assert by_policy["hardened"].message.startswith("rewritten: ")
    assert by_policy["preview"].result == "warn"
    assert "would be denied by policy preview" in by_policy["preview"].message


def test_a_rewrite_to_an_untrusted_target_still_fails_and_carries_the_suggestion() -> None:
    elsewhere = policy(
        "elsewhere",
        sources=[{"name": "ours", "images": ["ghcr.io/acme/**"]}],
        rewrites=[{"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python"}],
    )
    obj = with_namespace(deployment("python:3.12"))
    [row] = reports.results_for(obj, decide(obj, elsewhere), [elsewhere])
    assert row.result == "fail"
    assert row.to_json(0)["properties"]["suggestion"] == "cgr.dev/chainguard/python:latest"


def test_a_latest_only_rewrite_names_the_dropped_version_in_the_report() -> None:
    chainguard = policy(
        "cg",
        sources=[{"name": "cg", "images": ["cgr.dev/chainguard/**"]}],
        rewrites=[{"catalog": "chainguard", "allowLatestOnly": True}],
    )
    obj = with_namespace(deployment("redis:7.2"))
    [row] = reports.results_for(obj, decide(obj, chainguard), [chainguard])
    assert (row.result, row.dropped_version) == ("warn", "7.2")
    assert "dropping version 7.2" in row.message
    assert row.to_json(0)["properties"]["droppedVersion"] == "7.2"


def test_rows_without_a_suggestion_carry_no_suggestion_property() -> None:
    obj = with_namespace(deployment("ghcr.io/acme/billing:2"))
    [row] = reports.results_for(obj, decide(obj, REWRITE), [REWRITE])
    assert row.result == "fail"
    assert set(row.to_json(0)["properties"]) == {"image", "container", "path"}


def test_a_missing_verdict_or_registry_error_is_an_error_row_not_a_pass() -> None:
    signed = policy(
        "signed",
        sources=[
            {
                "name": "team",
                "images": ["ghcr.io/acme/**"],
                "signatures": {"keyless": [{"issuer": "https://i", "subject": "s"}]},
            }
        ],
    )
    obj = with_namespace(deployment("ghcr.io/acme/api:1"))
    planned = engine.plan_rewrites(workloads.find_images(obj), [signed], apply=False)
    checks = engine.signature_checks(planned, [signed])
    verdicts = {check: engine.SignatureVerdict(False, "registry error: 503") for check in checks}
    [row] = reports.results_for(obj, engine.evaluate(planned, [signed], verdicts))
    assert row.result == "error"


def test_objects_controlled_by_a_scanned_kind_are_skipped() -> None:
    owned = {"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "controller": True}]}}
    assert reports.controlled_by_scanned_kind(owned)
    by_operator = {"metadata": {"ownerReferences": [{"kind": "MyApp", "controller": True}]}}
    assert not reports.controlled_by_scanned_kind(by_operator)
    not_controller = {"metadata": {"ownerReferences": [{"kind": "Deployment"}]}}
    assert not reports.controlled_by_scanned_kind(not_controller)


@pytest.mark.parametrize(
    ("name", "labels", "scanned"),
    [
        ("shop", {}, True),
        ("kube-system", {}, False),
        ("imagegate-system", {}, False),
        ("shop", {"imagegate.dev/ignore": "true"}, False),
    ],
)
def test_namespaces_the_webhook_never_sees_are_not_scanned(
    name: str, labels: dict[str, str], scanned: bool
) -> None:
    assert scan.scanned_namespace(name, labels, "imagegate-system") is scanned


def test_the_report_is_ordered_counted_and_capped() -> None:
    rows = []
    for index in range(reports.MAX_RESULTS + 5):
        obj = with_namespace(deployment(f"ghcr.io/acme/app{index}:1"))
        obj["metadata"]["name"] = f"web-{index:05d}"
        rows += reports.results_for(obj, decide(obj, REWRITE))
    trusted = with_namespace(deployment("cgr.dev/chainguard/nginx:latest"))
    rows += reports.results_for(trusted, decide(trusted, REWRITE))
    body = reports.report("shop", rows, NOW)
    assert body["summary"] == {
        "pass": 1,
        "fail": reports.MAX_RESULTS + 5,
        "warn": 0,
        "error": 0,
        "skip": 0,
    }
    assert len(body["results"]) == reports.MAX_RESULTS
    annotations = body["metadata"]["annotations"]
    assert annotations["imagegate.dev/truncated"] == "6 results not listed"
    assert set(annotations) == {"imagegate.dev/truncated", reports.DIGEST_ANNOTATION}
    names = [r["resources"][0]["name"] for r in body["results"]]
    assert names == sorted(names)
    assert body["results"][0]["timestamp"] == {"seconds": int(NOW.timestamp()), "nanos": 0}
    assert body["results"][0]["severity"] == "high"


def test_a_malformed_object_is_an_error_row() -> None:
    obj = with_namespace(deployment("x"))
    obj["spec"]["template"]["spec"]["containers"] = "junk"
    with pytest.raises(workloads.MalformedWorkloadError) as caught:
        workloads.find_images(obj)
    row = reports.malformed_result(obj, caught.value)
    assert row.result == "error"
    assert "not a list" in row.message


def test_an_untrusted_image_volume_fails_the_report() -> None:
    official = policy("official", sources=[{"name": "o", "images": ["docker.io/library/*"]}])
    obj = with_namespace(deployment("nginx:1.25"))
    obj["spec"]["template"]["spec"]["volumes"] = [
        {"name": "payload", "image": {"reference": "evil.example/payload:1"}}
    ]
    rows = reports.results_for(obj, decide(obj, official))
    assert sorted((r.container, r.result) for r in rows) == [("app", "pass"), ("payload", "fail")]
    fail = next(r for r in rows if r.result == "fail")
    assert fail.path == "/spec/template/spec/volumes/0/image/reference"
    assert fail.message.startswith(
        "image volume 'payload' image 'evil.example/payload:1' denied by policy official"
    )


def test_an_image_id_fails_the_report_where_official_images_are_trusted() -> None:
    official = policy("official", sources=[{"name": "o", "images": ["docker.io/library/*"]}])
    obj = with_namespace(deployment("sha256:" + "ab" * 32))
    [row] = reports.results_for(obj, decide(obj, official))
    assert row.result == "fail"
    assert "is an image ID, not a reference" in row.message


def test_a_namespace_keeps_the_rows_its_report_lists_and_counts_every_one() -> None:
    """A scan of many objects holds at most 2 * MAX_RESULTS rows a namespace, none of which the
    cyclic garbage collector walks (its full passes stop the event loop admission runs on)."""
    held = reports.NamespaceResults()
    every = []
    for index in range(3 * reports.MAX_RESULTS):
        obj = with_namespace(deployment(f"ghcr.io/acme/app{index}:1"))
        obj["metadata"]["name"] = f"web-{index:05d}"
        rows = reports.results_for(obj, decide(obj, REWRITE))
        held.add(rows)
        every += rows
    trusted = with_namespace(deployment("cgr.dev/chainguard/nginx:latest"))
    held.add(reports.results_for(trusted, decide(trusted, REWRITE)))
    every += reports.results_for(trusted, decide(trusted, REWRITE))
    assert len(held.rows) <= 2 * reports.MAX_RESULTS
    for _ in range(2):  # a tuple is untracked in the pass after its inner tuple is
        gc.collect()
    assert not any(gc.is_tracked(row) for row in held.rows)
    assert reports.report("shop", held.listed(), NOW, counts=held.counts) == reports.report(
        "shop", every, NOW
    )


def _stored(body: dict[str, Any], *managers: str) -> reports.StoredReport:
    """`body` as the scan's metadata-only list would show it once stored."""
    metadata = {
        **body["metadata"],
        "resourceVersion": "7",
        "managedFields": [{"manager": manager, "operation": "Update"} for manager in managers],
    }
    return reports.StoredReport.from_metadata(metadata)


def test_a_report_that_would_say_the_same_is_seen_as_such_and_any_change_is_not() -> None:
    """The digest covers every row and the summary but not the time: the same findings an hour
    later are not stored again; a changed message, result or count, or a hand edit, are."""
    objs = [with_namespace(deployment(f"ghcr.io/acme/app{n}:1")) for n in range(3)]
    for n, obj in enumerate(objs):
        obj["metadata"]["name"] = f"web-{n}"
    rows = [row for obj in objs for row in reports.results_for(obj, decide(obj, REWRITE, WARN))]
    first = reports.report("shop", rows, NOW)
    stored = _stored(first, reports.FIELD_MANAGER)
    assert stored.resource_version == "7"
    later = reports.report("shop", rows, NOW + datetime.timedelta(hours=1))
    assert later["results"][0]["timestamp"] != first["results"][0]["timestamp"]
    assert stored.says(later)

    reworded = [rows[0]._replace(message=rows[0].message + "!"), *rows[1:]]
    assert not stored.says(reports.report("shop", reworded, NOW))
    passing = [rows[0]._replace(result="pass"), *rows[1:]]
    assert not stored.says(reports.report("shop", passing, NOW))
    fewer = reports.report("shop", rows[1:], NOW)
    assert not stored.says(fewer)
    more_counted = reports.report("shop", rows, NOW, counts={"fail": len(rows) + 1})
    assert not stored.says(more_counted)

    assert not _stored(first, reports.FIELD_MANAGER, "kubectl-edit").says(later)
    assert not _stored(first, "kubectl-client-side-apply").says(later)
    assert not _stored(first).says(later)
    unsigned = {**first, "metadata": {**first["metadata"], "annotations": {}}}
    assert not _stored(unsigned, reports.FIELD_MANAGER).says(later)


async def test_the_pace_rests_in_proportion_to_the_work_and_not_between_scans() -> None:
    """scan.Pace: at duty 0.25 each slice of work is followed by three times as long a rest;
    the time before `restart()` (waiting for the next scan) is not counted as work."""
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pace = scan.Pace(0.25, clock=lambda: now[0], sleep=sleep)
    now[0] += 50.0  # idle until the scan starts
    pace.restart()
    now[0] += 0.2  # a page read and judged
    await pace.rest()
    now[0] += 0.1  # a report written
    await pace.rest()
    assert slept == pytest.approx([0.6, 0.3])

    flat_out = scan.Pace(1.0, clock=lambda: now[0], sleep=sleep)
    now[0] += 5.0
    await flat_out.rest()
    assert len(slept) == 2  # duty 1: no rest at all


@pytest.mark.parametrize("duty", [0.0, -0.5, 1.5, float("nan")])
def test_a_duty_outside_zero_to_one_is_refused(duty: float) -> None:
    with pytest.raises(ValueError, match="share of the time"):
        scan.Pace(duty)
