"""What goes wrong in real clusters must cost a log line, not admission."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegate.testbed import build, local, processes
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries

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
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "default",
                "operation": "CREATE",
                "object": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "p"},
                    "spec": {"containers": [{"name": "c", "image": "redis:7"}]},
                },
            },
        }
        request = urllib.request.Request(
            running.url + "/validate",
            data=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"},
        )
        context = ssl.create_default_context(cadata=running.ca_pem.decode())
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            answer = json.loads(reply.read())["response"]
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
