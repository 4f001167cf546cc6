"""The audit trail through the real API server: Events, metrics, decision logs, `imagegate audit`.

Every denial and rewrite must be answerable afterwards: which policy, which namespace, workload,
container and image, and why. Dry-run requests leave no trace (`sideEffects: NoneOnDryRun`).
"""

from __future__ import annotations

import datetime
import io
import json
import re
import time
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from imagegate.admission.records import Action, AuditEntry
from imagegate.commands import audit as trail
from imagegate.policy import engine
from imagegate.testbed import local
from imagegate.trail import events
from support import Cluster

from .conftest import Hardened, PolicyFactory
from .test_admission import CHAINGUARD, pod_body

pytestmark = pytest.mark.controlplane


def wait_for_events(
    api: client.ApiClient, namespace: str, reason: str, count: int = 1
) -> list[Any]:
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [e for e in core.list_namespaced_event(namespace).items if e.reason == reason]
        if len(found) >= count:
            return found
        time.sleep(0.2)
    pytest.fail(f"no {reason} Event in {namespace} within 30s")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_denial_becomes_an_event_on_the_policy_a_metric_a_log_line_and_an_audit_row(
    api: client.ApiClient,
    cluster: Cluster,
    operator: local.LocalOperator,
    gated_namespace: str,
    image_policy: PolicyFactory,
) -> None:
    policy = image_policy(gated_namespace, "hardened", {"sources": [CHAINGUARD]})
    display = f"{gated_namespace}/hardened"
    before = metric(operator.metrics(), "imagegate_policy_decisions_total", policy=display)
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException):
        core.create_namespaced_pod(gated_namespace, pod_body("billing", "ghcr.io/acme/billing:2"))

    [event] = wait_for_events(api, gated_namespace, "ImageDenied")
    assert event.type == "Warning"
    assert event.involved_object.kind == "ImagePolicy"
    assert event.involved_object.name == "hardened"
    assert event.involved_object.uid == policy["metadata"]["uid"]
    assert event.message == (
        f"denied container 'app' image 'ghcr.io/acme/billing:2' of Pod/billing in "
        f"{gated_namespace}: ghcr.io/acme/billing is not from a source this policy trusts"
    )
    assert events.read_annotations(event.metadata.annotations)["container"] == "app"

    exposition = operator.metrics()
    assert (
        metric(exposition, "imagegate_policy_decisions_total", policy=display, action="denied")
        == before + 1
    )
    assert (
        metric(exposition, "imagegate_admissions_total", webhook="validate", decision="denied") >= 1
    )

    decisions = [
        json.loads(line)["decision"]
        for line in operator.process.log_path.read_text().splitlines()
        if line.startswith("{") and '"decision"' in line
    ]
    [logged] = [
        d for d in decisions if d["namespace"] == gated_namespace and d["object"] == "Pod/billing"
    ]
    assert logged["allowed"] is False
    assert logged["images"][0]["image"] == "ghcr.io/acme/billing:2"

    out = io.StringIO()
    trail.run(
        kubeconfig=cluster.kubeconfig,
        since="10m",
        namespace=gated_namespace,
        policy=None,
        output="json",
        reports=False,
        out=out,
    )
    [row] = json.loads(out.getvalue())["events"]
    assert (row["action"], row["policy"], row["object"], row["image"], row["count"]) == (
        "denied",
        display,
        "Pod/billing",
        "ghcr.io/acme/billing:2",
        1,
    )


def test_repeats_raise_the_count_of_one_event_and_rewrites_are_recorded(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    hardened_python: Hardened,
) -> None:
    image_policy(
        gated_namespace,
        "rewrites",
        {"sources": [CHAINGUARD, hardened_python.source], "rewrites": [hardened_python.rewrite]},
    )
    core = client.CoreV1Api(api)
    for _ in range(3):
        with pytest.raises(ApiException):
            core.create_namespaced_pod(gated_namespace, pod_body("crash", "redis:7"))
    core.create_namespaced_pod(gated_namespace, pod_body("worker", "python:3.12"))

    [rewritten] = wait_for_events(api, gated_namespace, "ImageRewritten")
    assert rewritten.type == "Normal"
    assert f"to {hardened_python.image}" in rewritten.message
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        [denied] = wait_for_events(api, gated_namespace, "ImageDenied")
        if denied.count == 3:
            break
        time.sleep(0.5)
    assert denied.count == 3  # one Event, three denials (repeats flushed in batches)


def test_dry_run_requests_leave_no_event(
    api: client.ApiClient, gated_namespace: str, image_policy: PolicyFactory
) -> None:
    image_policy(gated_namespace, "quiet", {"sources": [CHAINGUARD]})
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException):
        core.create_namespaced_pod(gated_namespace, pod_body("dry", "redis:7"), dry_run="All")
    with pytest.raises(ApiException):
        core.create_namespaced_pod(gated_namespace, pod_body("real", "redis:8"))
    found = wait_for_events(api, gated_namespace, "ImageDenied")
    assert [e.metadata.annotations["imagegate.dev/object"] for e in found] == ["Pod/real"]


async def test_events_refused_by_rbac_cost_a_log_line_not_an_exception(
    api: client.ApiClient, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A ServiceAccount without RBAC for Events: the recorder logs the refusal and goes on."""
    core = client.CoreV1Api(api)
    namespace = "default"
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="no-events"))
    )
    try:
        token = core.create_namespaced_service_account_token(
            "no-events", namespace, client.AuthenticationV1TokenRequest(spec={"audiences": []})
        ).status.token
        configuration = client.Configuration()
        configuration.host = api.configuration.host
        configuration.ssl_ca_cert = api.configuration.ssl_ca_cert
        configuration.api_key = {"authorization": f"Bearer {token}"}
        recorder = events.EventRecorder(client.ApiClient(configuration))
        recorder.record(
            AuditEntry(
                Action.DENIED,
                engine.CompiledPolicy("p", engine.Mode.ENFORCE),
                "team",
                "Pod/x",
                "app",
                "redis:7",
                "not trusted",
            )
        )
        await recorder.flush()
        assert any("cannot write Event" in r.getMessage() for r in caplog.records)
        assert "Forbidden" in caplog.text
    finally:
        core.delete_namespaced_service_account("no-events", namespace)


def test_audit_rejects_a_bad_window() -> None:
    with pytest.raises(trail.UsageError, match="use a number and s, m, h or d"):
        trail.parse_duration("yesterday")
    assert trail.parse_duration("90m") == datetime.timedelta(minutes=90)
