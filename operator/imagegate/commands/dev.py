"""`imagegate dev`: the local demo on the embedded control plane.

It brings up the test bed (etcd + kube-apiserver + an OCI registry, built from Go modules),
installs the CRDs, runs imagegate's operator, registers the webhooks by URL (as the chart's
`webhook.url` mode does), applies a demo policy, creates a few workloads through the API server
and prints what was admitted, rewritten and denied, and why.

Offline and honest (design.md §8): cgr.dev is served by local stand-ins. Before the operator
starts, random images are pushed to the test bed's registry under `mirror/cgr.dev/...` and signed
with the real cosign and a key made for this run; the operator reads cgr.dev through that mirror
(`--registry-mirrors`, containerd's hosts.toml), and the demo policy trusts cgr.dev only with that
key's signature. So the rewrites are real verified rewrites with a digest pin, and an unsigned
stand-in is denied. policies/chainguard-only.yaml shows the policy for the real cgr.dev.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, utils

from imagegate.admission import configurations as webhookconfig
from imagegate.cluster import kube, resources
from imagegate.core import workloads
from imagegate.errors import TestbedError
from imagegate.testbed import images, local
from imagegate.testbed.bed import Testbed

DEMO_NAMESPACE = "imagegate-demo"
DEMO_POLICY_NAME = "demo-hardened-images"
#: The upstream hosts the local registry stands in for (through `--registry-mirrors`).
MIRRORED_HOSTS = ("cgr.dev",)
#: Stand-ins signed with the demo key, and one left unsigned (denied: no valid signature).
SIGNED_STAND_INS = (
    "cgr.dev/chainguard/nginx:latest",
    "cgr.dev/chainguard/python:latest",
    "cgr.dev/chainguard/busybox:latest",
)
UNSIGNED_STAND_INS = ("cgr.dev/chainguard/static:latest",)


def demo_policy(public_key: str) -> dict[str, Any]:
    """Trust cgr.dev/chainguard/** signed with `public_key` (the stand-ins' key; offline: no
    transparency log) and registry.internal.example/** as is; rewrite to Chainguard."""
    signatures = {"keys": [{"publicKey": public_key}], "requireTransparencyLog": False}
    return {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": DEMO_POLICY_NAME},
        "spec": {
            "mode": "enforce",
            "sources": [
                {
                    "name": "chainguard",
                    "images": ["cgr.dev/chainguard/**"],
                    "signatures": signatures,
                },
                {"name": "internal", "images": ["registry.internal.example/**"]},
            ],
            "rewrites": [
                {"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python"},
                {"from": "docker.io/library/nginx", "to": "cgr.dev/chainguard/nginx"},
            ],
            # The test bed runs no controller-manager, so no Deployment ever makes a Pod: the
            # demo patches the Deployment itself to show its rewrite (the default, Pods, would
            # not).
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
    _pod("unsigned", "cgr.dev/chainguard/static:latest"),
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
    return asked, *_outcome(asked, stored)


def _outcome(asked: str, stored: str) -> tuple[str, str]:
    """(result, detail) of an admitted image: rewritten, only pinned, or stored as written."""
    name, _, digest = stored.partition("@")
    if name != asked:
        return "REWRITTEN", f"now runs {_short(stored)}, signature verified"
    if digest:
        return "PINNED", f"signature verified, pinned to {_short(stored)}"
    return "ADMITTED", "from a trusted source"


def _short(image: str) -> str:
    """`name@sha256:` and the digest's first 12 hex digits, for the table."""
    name, at, digest = image.partition("@")
    return f"{name}{at}{digest[:19]}…" if at else image


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
        stand_ins, mirror_directory = _serve_stand_ins(bed)
        policy = demo_policy(stand_ins.public_key)
        with local.operator_process(
            control_plane.kubeconfig,
            bed.workdir / "operator",
            extra_args=[f"--registry-mirrors={mirror_directory}"],
        ) as operator:
            selector = webhookconfig.namespace_selector(own_namespace=None)
            with local.registered_webhooks(api, operator, "imagegate", selector):
                policies = resources.PolicyResources(api)
                policies.create(None, policy)
                _wait_ready(policies, DEMO_POLICY_NAME)
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
                    + _summary(registry.address, rows, bed.env()),
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


def _summary(
    registry_address: str, rows: list[tuple[str, str, str, str]], env: dict[str, str]
) -> str:
    """What the demo did and why, and how to go on from another shell."""
    return (
        _stand_in_notice(registry_address)
        + f"policy {DEMO_POLICY_NAME}: trust cgr.dev/chainguard/** signed with the demo key, and "
        "registry.internal.example/**; rewrite python and nginx to Chainguard, pin digests\n\n"
        + _table(rows)
        + "\n\nTry it from another shell:\n"
        + "".join(f"  export {k}={shlex.quote(v)}\n" for k, v in env.items())
        + "  kubectl get clusterimagepolicies\n"
        f"  kubectl -n {DEMO_NAMESPACE} run test --image=node:22\n"
        f"  kubectl -n {DEMO_NAMESPACE} run web2 --image=nginx:1.25   "
        "# rewritten to the cgr.dev stand-in\n"
        f"  {sys.executable} -m imagegate audit --since 10m   # the audit trail\n"
    )


def _serve_stand_ins(bed: Testbed) -> tuple[images.StandIns, Path]:
    """Push and sign the stand-ins in the bed's registry; the mirror directory that serves
    MIRRORED_HOSTS from it."""
    registry = bed.registry
    if registry is None:
        raise TestbedError("the test bed started without a registry")
    workdir = bed.workdir / "stand-ins"
    workdir.mkdir(parents=True, exist_ok=True)
    stand_ins = images.push_stand_ins(
        bed.tools["crane"],
        bed.tools["cosign"],
        registry.address,
        workdir,
        signed=SIGNED_STAND_INS,
        unsigned=UNSIGNED_STAND_INS,
    )
    directory = images.write_mirror_directory(bed.workdir / "certs.d", registry.url, MIRRORED_HOSTS)
    return stand_ins, directory


def _stand_in_notice(registry_address: str) -> str:
    return (
        "NOTE: cgr.dev is served by a local stand-in; nothing comes from Chainguard.\n"
        f"  The test bed's registry at {registry_address} mirrors cgr.dev (--registry-mirrors, "
        "containerd hosts.toml)\n  with random images under the real names: "
        f"{', '.join(SIGNED_STAND_INS)} signed with a key made for this run,\n"
        f"  {', '.join(UNSIGNED_STAND_INS)} unsigned.\n"
    )


def _wait_ready(policies: resources.PolicyResources, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conditions = (policies.get(None, name).get("status") or {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return
        time.sleep(0.1)
    raise TestbedError(f"policy {name} was not Ready within {timeout:.0f}s")
