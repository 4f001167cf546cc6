"""What goes wrong in real clusters must cost a log line, not admission."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from imagegate.policy import resources
from imagegate.testbed import build, local, processes
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries
from support import Cluster

from .conftest import PolicyFactory

pytestmark = pytest.mark.controlplane


@pytest.fixture
def bare_cluster(builder: build.Builder, tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane of its own, without imagegate's CRDs."""
    plane = ControlPlane(ControlPlaneBinaries.resolve(builder), tmp_path / "plane")
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def test_without_the_crds_the_operator_starts_says_so_and_admits(
    bare_cluster: ControlPlane, tmp_path: Path
) -> None:
    with local.operator_process(
        bare_cluster.kubeconfig, tmp_path / "operator", extra_args=["--policy-reports"]
    ) as running:
        context = ssl.create_default_context(cadata=running.ca_pem.decode())
        answer = _post(running.url + "/validate", _review("default", "redis:7"), context)
        assert answer["allowed"] is True
        log = processes.tail(running.process.log_path, 200)
        assert "the ClusterImagePolicy CRD is not installed" in log
        assert "the ImagePolicy CRD is not installed" in log
        # The background scan runs at start-up; it needs a moment to find no PolicyReport CRD.
        deadline = time.monotonic() + 30
        while "PolicyReport CRD not installed" not in log and time.monotonic() < deadline:
            time.sleep(0.2)
            log = processes.tail(running.process.log_path, 200)
        assert "PolicyReport CRD not installed" in log


def _review(namespace: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "name": "p",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    }


def _post(url: str, review: dict[str, Any], context: ssl.SSLContext) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(review).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as reply:
        answer: dict[str, Any] = json.loads(reply.read())["response"]
        return answer


def test_a_stopping_operator_writes_its_pending_counts_first(
    cluster: Cluster,
    api: client.ApiClient,
    crds: None,
    namespace: str,
    image_policy: PolicyFactory,
    tmp_path: Path,
) -> None:
    """A rolling update must not lose the denials counted since the last batch write."""
    with local.operator_process(cluster.kubeconfig, tmp_path / "operator") as running:
        image_policy(namespace, "counted", {"sources": [{"name": "cg", "images": ["cgr.dev/**"]}]})
        review = _review(namespace, "redis:7")
        context = ssl.create_default_context(cadata=running.ca_pem.decode())

        def denied() -> bool:
            return _post(running.url + "/validate", review, context)["allowed"] is False

        deadline = time.monotonic() + 30
        while not denied() and time.monotonic() < deadline:
            time.sleep(0.2)  # until this operator has the policy too
        running.process.stop()  # SIGTERM, well before the next batch write
    status = resources.PolicyResources(api).get(namespace, "counted").get("status", {})
    assert status.get("denials", 0) >= 1
    assert status["lastDenial"]["image"] == "redis:7"
