"""The test bed's control plane is a real Kubernetes API server that calls real webhooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from imagegate.cluster import kube
from imagegate.testbed import processes, versions
from support import Cluster, RecordingWebhook

pytestmark = pytest.mark.controlplane


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"e2e": name}))
    )
    yield name
    core.delete_namespace(name)


def _pod(name: str, labels: dict[str, str] | None = None) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="app", image="cgr.dev/chainguard/static:latest")]
        ),
    )


def test_api_server_reports_the_version_it_was_built_as(cluster: Cluster) -> None:
    if cluster.control_plane is None or os.environ.get("KUBEBUILDER_ASSETS"):
        pytest.skip("the version stamp is only ours when the test bed built kube-apiserver")
    assert cluster.control_plane.version()["gitVersion"] == versions.KUBERNETES


def test_namespace_and_pod_round_trip_through_the_api_server(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, _pod("hello"))
    stored = core.read_namespaced_pod("hello", namespace)
    assert stored.spec.containers[0].image == "cgr.dev/chainguard/static:latest"
    assert stored.metadata.uid
    # No kubelet: the pod is admitted and stored, never scheduled or run.
    assert stored.status.phase == "Pending"
    assert stored.spec.node_name is None


def test_kubectl_talks_to_the_same_api_server(cluster: Cluster, namespace: str) -> None:
    if cluster.control_plane is None or cluster.control_plane.binaries.kubectl is None:
        pytest.skip("kubectl comes with the local test bed")
    kubectl = str(cluster.control_plane.binaries.kubectl)
    out = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "get",
            "namespace",
            namespace,
            "-o",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(out)["metadata"]["labels"]["e2e"] == namespace


def test_a_validating_webhook_on_loopback_is_called_and_can_deny_a_pod(
    api: client.ApiClient, cluster: Cluster, namespace: str
) -> None:
    def decide(request: dict[str, Any]) -> dict[str, Any]:
        labels = request["object"]["metadata"].get("labels", {})
        if labels.get("verdict") == "deny":
            return {"allowed": False, "status": {"code": 403, "message": "no untrusted images"}}
        return {"allowed": True}

    webhook = RecordingWebhook(cluster.webhook_host, decide)
    admission = client.AdmissionregistrationV1Api(api)
    config_name = f"imagegate-e2e-{namespace}"
    admission.create_validating_webhook_configuration(
        client.V1ValidatingWebhookConfiguration(
            metadata=client.V1ObjectMeta(name=config_name),
            webhooks=[
                client.V1ValidatingWebhook(
                    name="deny.e2e.imagegate.dev",
                    client_config=client.AdmissionregistrationV1WebhookClientConfig(
                        url=webhook.url, ca_bundle=webhook.ca_bundle
                    ),
                    rules=[
                        client.V1RuleWithOperations(
                            api_groups=[""],
                            api_versions=["v1"],
                            operations=["CREATE"],
                            resources=["pods"],
                        )
                    ],
                    # Only this test's namespace: never lock the rest of the cluster out.
                    namespace_selector=client.V1LabelSelector(match_labels={"e2e": namespace}),
                    failure_policy="Fail",
                    side_effects="None",
                    admission_review_versions=["v1"],
                    timeout_seconds=5,
                )
            ],
        )
    )
    core = client.CoreV1Api(api)
    try:
        core.create_namespaced_pod(namespace, _pod("allowed", {"verdict": "allow"}))
        with pytest.raises(ApiException) as denied:
            core.create_namespaced_pod(namespace, _pod("denied", {"verdict": "deny"}))
    finally:
        admission.delete_validating_webhook_configuration(config_name)
        webhook.close()

    assert denied.value.status == 403
    message = json.loads(denied.value.body)["message"]
    assert message == (
        'admission webhook "deny.e2e.imagegate.dev" denied the request: no untrusted images'
    )
    seen = [
        (r["kind"]["kind"], r["namespace"], r["object"]["metadata"]["name"])
        for r in webhook.requests
    ]
    assert seen == [("Pod", namespace, "allowed"), ("Pod", namespace, "denied")]
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod("denied", namespace)
    assert missing.value.status == 404
    assert core.read_namespaced_pod("allowed", namespace).metadata.name == "allowed"


def test_imagegate_dev_once_runs_the_whole_demo() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "imagegate", "dev", "--once"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert f"kube-apiserver {versions.KUBERNETES} at https://127.0.0.1:" in out
    rows = {
        line.split()[0]: line.split()[2]
        for line in out.splitlines()
        if line.startswith(("Deployment/", "Pod/"))
    }
    # The rewrites and the pin are verified against the stand-ins' key through the mirror:
    # without it cgr.dev cannot be resolved here and these rows turn DENIED.
    assert rows == {
        "Deployment/web": "REWRITTEN",
        "Pod/worker": "REWRITTEN",
        "Pod/tools": "PINNED",
        "Pod/unsigned": "DENIED",
        "Pod/billing": "DENIED",
        "Pod/cache": "DENIED",
        "Pod/internal": "ADMITTED",
    }
    assert "NOTE: cgr.dev is served by a local stand-in" in out
    assert "now runs cgr.dev/chainguard/nginx:latest@sha256:" in out
    assert "signature verification failed for source chainguard" in out
    assert "keys[0]: no signature found" in out
    assert "ghcr.io/acme/billing is not from a source this policy trusts" in out
    assert "export KUBECONFIG=" in out


def test_testbed_up_is_idempotent_and_down_removes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "IMAGEGATE_TESTBED_HOME": str(tmp_path / "home")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imagegate", "testbed", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    first = run("up")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "# started" in first.stderr
    second = run("up")
    assert second.returncode == 0
    assert "# already running" in second.stderr
    assert first.stdout == second.stdout
    state = json.loads((tmp_path / "home" / "state.json").read_text())
    assert len(state["pids"]) == 3  # registry, etcd, kube-apiserver
    try:
        kubeconfig = Path(state["kubeconfig"])
        core = client.CoreV1Api(kube.api_client(kubeconfig))
        assert "default" in {ns.metadata.name for ns in core.list_namespace().items}
        assert run("env").stdout == first.stdout
    finally:
        down = run("down")
    assert down.returncode == 0
    for pid in state["pids"]:
        assert not processes.alive(pid)
    assert not Path(state["workdir"]).exists()
    assert run("env").returncode == 1
    assert "no test bed is running" in run("env").stderr
