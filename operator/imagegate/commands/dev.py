"""`imagegate dev`: the local demo on the embedded control plane.

It brings up the test bed (etcd + kube-apiserver + an OCI registry, built from Go modules),
installs the CRDs, runs imagegate's operator, registers the webhooks by URL (as the chart's
`webhook.url` mode does), applies a demo policy, creates a few workloads through the API server
and prints what was admitted, rewritten and denied, and why.

The demo policy asks for no signatures: this machine cannot reach cgr.dev to fetch Chainguard's
(policies/chainguard-only.yaml shows the real thing).
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
import time
from typing import Any

from kubernetes import client, utils

from imagegate.admission import configurations as webhookconfig
from imagegate.cluster import kube, resources
from imagegate.core import workloads
from imagegate.errors import TestbedError
from imagegate.testbed import local
from imagegate.testbed.bed import Testbed

DEMO_NAMESPACE = "imagegate-demo"
DEMO_POLICY: dict[str, Any] = {
    "apiVersion": "imagegate.dev/v1alpha1",
    "kind": "ClusterImagePolicy",
    "metadata": {"name": "demo-hardened-images"},
    "spec": {
        "mode": "enforce",
        "sources": [
            {"name": "chainguard", "images": ["cgr.dev/chainguard/**"]},
            {"name": "internal", "images": ["registry.internal.example/**"]},
        ],
        "rewrites": [
            {"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python"},
            {"from": "docker.io/library/nginx", "to": "cgr.dev/chainguard/nginx"},
            {"from": "docker.io/library/golang", "to": "cgr.dev/chainguard/go"},
        ],
        # The test bed runs no controller-manager, so no Deployment ever makes a Pod: the demo
        # patches the Deployment itself to show its rewrite (the default, Pods, would not).
        "mutation": {"scope": "All"},
    },
}


def _pod(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": name, "image": image}]},
    }


def _deployment(name: str, image: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": image}]},
            },
        },
    }


DEMO_WORKLOADS = [
    _deployment("web", "nginx:1.25"),
    _pod("worker", "python:3.12-slim"),
    _pod("tools", "cgr.dev/chainguard/busybox:latest"),
    _pod("billing", "ghcr.io/acme/billing:2.1"),
    _pod("cache", "redis:7"),
    _pod("internal", "registry.internal.example/team/api:1.0"),
]


def _create(api: client.ApiClient, body: dict[str, Any]) -> tuple[str, str, str]:
    """(image asked for, result, detail) for one demo workload."""
    asked = workloads.find_images(body)[0].image
    try:
        stored = workloads.find_images(kube.create(api, body, DEMO_NAMESPACE))[0].image
    except utils.FailToCreateError as failure:
        error = failure.api_exceptions[0]
        message = json.loads(error.body or "{}").get("message", str(error.reason))
        return asked, "DENIED", str(message).split("denied the request: ", 1)[-1]
    if stored != asked:
        return asked, "REWRITTEN", f"now runs {stored}"
    return asked, "ADMITTED", "from a trusted source"


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("WORKLOAD", "IMAGE", "RESULT", "DETAIL")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = []
    for row in [header, *rows]:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        )
    return "\n".join(lines)


def run(*, once: bool = False) -> int:
    started = time.monotonic()
    print(
        "imagegate dev: building (first run only) and starting the local control plane ...",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Testbed() as bed:
        control_plane, registry = bed.control_plane, bed.registry
        if control_plane is None or registry is None:
            raise TestbedError("the test bed started without a control plane or registry")
        api = kube.api_client(control_plane.kubeconfig)
        local.install_crds(api)
        with local.operator_process(control_plane.kubeconfig, bed.workdir / "operator") as operator:
            selector = webhookconfig.namespace_selector(own_namespace=None)
            with local.registered_webhooks(api, operator, "imagegate", selector):
                policies = resources.PolicyResources(api)
                policies.create(None, DEMO_POLICY)
                _wait_ready(policies, DEMO_POLICY["metadata"]["name"])
                client.CoreV1Api(api).create_namespace(
                    client.V1Namespace(metadata=client.V1ObjectMeta(name=DEMO_NAMESPACE))
                )
                rows = []
                for body in DEMO_WORKLOADS:
                    asked, result, detail = _create(api, body)
                    rows.append(
                        (f"{body['kind']}/{body['metadata']['name']}", asked, result, detail)
                    )
                print(
                    f"\nimagegate dev: ready in {time.monotonic() - started:.1f}s: "
                    f"kube-apiserver {control_plane.version()['gitVersion']} at "
                    f"{control_plane.url}, imagegate at {operator.url}\n"
                    f"policy {DEMO_POLICY['metadata']['name']}: trust cgr.dev/chainguard/** and "
                    "registry.internal.example/**; rewrite python, nginx, golang to Chainguard\n\n"
                    + _table(rows)
                    + "\n\nTry it from another shell:\n"
                    + "".join(f"  export {k}={shlex.quote(v)}\n" for k, v in bed.env().items())
                    + f"  kubectl get clusterimagepolicies\n"
                    f"  kubectl -n {DEMO_NAMESPACE} run test --image=node:22\n"
                    f"  {sys.executable} -m imagegate audit --since 10m   # the audit trail\n",
                    flush=True,
                )
                if once:
                    return 0
                print("Ctrl-C stops everything and removes its files.", flush=True)
                try:
                    while not stop.wait(1.0):
                        pass
                except KeyboardInterrupt:
                    pass
    print("imagegate dev: stopped", file=sys.stderr)
    return 0


def _wait_ready(policies: resources.PolicyResources, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conditions = (policies.get(None, name).get("status") or {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return
        time.sleep(0.1)
    raise TestbedError(f"policy {name} was not Ready within {timeout:.0f}s")
