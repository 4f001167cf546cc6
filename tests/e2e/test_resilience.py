"""What goes wrong in real clusters must cost a log line, not admission."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest
from kubernetes import client

from imagegate.cluster import resources
from imagegate.testbed import local, processes
from imagegate.testbed.controlplane import ControlPlane
from support import Cluster, pod_review, post_review

from .conftest import PolicyFactory

pytestmark = pytest.mark.controlplane


def test_without_the_crds_the_operator_starts_says_so_and_admits(
    own_control_plane: ControlPlane, tmp_path: Path
) -> None:
    with local.operator_process(
        own_control_plane.kubeconfig, tmp_path / "operator", extra_args=["--policy-reports"]
    ) as running:
        context = ssl.create_default_context(cadata=running.ca_pem.decode())
        answer = post_review(running.url + "/validate", pod_review("default", "redis:7"), context)
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
        review = pod_review(namespace, "redis:7")
        context = ssl.create_default_context(cadata=running.ca_pem.decode())

        def denied() -> bool:
            return post_review(running.url + "/validate", review, context)["allowed"] is False

        deadline = time.monotonic() + 30
        while not denied() and time.monotonic() < deadline:
            time.sleep(0.2)  # until this operator has the policy too
        running.process.stop()  # SIGTERM, well before the next batch write
    status = resources.PolicyResources(api).get(namespace, "counted").get("status", {})
    assert status.get("denials", 0) >= 1
    assert status["lastDenial"]["image"] == "redis:7"
