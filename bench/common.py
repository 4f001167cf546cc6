"""The workload and policies the benchmarks share."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imagegate.admission import builder
from imagegate.policy import engine, model
from imagegate.policy.compile import compile_policy


def review_body(uid: int, pod: dict[str, Any], namespace: str = "shop") -> bytes:
    """The AdmissionReview the API server would send for creating `pod` in `namespace`."""
    return json.dumps(
        builder.review_for(pod, namespace=namespace, uid=f"u-{uid}", username="bench")
    ).encode()


class StaticPolicies:
    """The twenty policies as a webhook PolicySource, for namespace shop's labels."""

    def __init__(self) -> None:
        self._policies = engine.PolicySet(twenty_policies())  # as PolicyCache holds them

    def policies(self) -> Sequence[engine.CompiledPolicy]:
        return self._policies

    async def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return NAMESPACE_LABELS


def machine() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores"


def twenty_policies() -> list[engine.CompiledPolicy]:
    """20 cluster policies: each trusts a few registries, half rewrite, a quarter select."""
    return [
        compile_policy(model.parse_policy_document(document))
        for document in twenty_policy_documents()
    ]


def twenty_policy_documents() -> list[dict[str, Any]]:
    """The twenty ClusterImagePolicy documents, as they would be applied to a cluster."""
    documents = []
    for n in range(20):
        spec: dict[str, Any] = {
            "mode": "enforce" if n % 4 else "warn",
            "sources": [
                {
                    "name": "chainguard",
                    "images": ["cgr.dev/chainguard/**", "docker.io/chainguard/**"],
                },
                {"name": "official", "images": ["docker.io/library/*"]},
                {"name": f"team-{n}", "images": [f"registry{n}.example/**", f"ghcr.io/team{n}/*"]},
            ],
        }
        if n % 2:
            spec["rewrites"] = [
                {"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python"},
                {"from": "docker.io/library/node", "to": "cgr.dev/chainguard/node"},
                {"from": "docker.io/library/golang", "to": "cgr.dev/chainguard/go"},
            ]
        if n % 4 == 3:
            spec["namespaceSelector"] = {
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["prod", "staging"]}
                ]
            }
        documents.append(
            {
                "apiVersion": "imagegate.dev/v1alpha1",
                "kind": "ClusterImagePolicy",
                "metadata": {"name": f"policy-{n:02d}"},
                "spec": spec,
            }
        )
    return documents


POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "initContainers": [{"name": "migrate", "image": "cgr.dev/chainguard/python:latest"}],
        "containers": [
            {"name": "web", "image": "nginx:1.25"},
            {"name": "api", "image": "cgr.dev/chainguard/node:latest@sha256:" + "ab" * 32},
        ],
    },
}
NAMESPACE_LABELS = {"kubernetes.io/metadata.name": "shop", "tier": "prod"}


def descendants(pid: int) -> list[int]:
    """The operator's process tree below it: zygote and scan process, or spawned ones."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # a thread that has exited since
            continue
        for child in children:
            found += [int(child), *descendants(int(child))]
    return found


#: Splitting the cores as in a cluster (suite.split_cores, scan.py --split-cores): the control
#: plane's core, and the webhook's.
CLUSTER_CPU, WEBHOOK_CPU = 1, 0


def threads(pid: int) -> list[int]:
    """The thread ids of a process (none if it has exited): scheduling calls take one thread."""
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except FileNotFoundError:
        return []


def pin_tree(pid: int, cpus: set[int]) -> None:
    """A process, its descendants and all their threads on `cpus` (sched_setaffinity moves one
    thread; threads and processes started later inherit from the thread that starts them)."""
    for process in (pid, *descendants(pid)):
        for thread in threads(process):
            with contextlib.suppress(ProcessLookupError):  # a thread that has exited since
                os.sched_setaffinity(thread, cpus)


def pss_uss_mib(pid: int) -> tuple[float, float]:
    """PSS (shared pages divided among their sharers: what a cgroup's sum comes to) and USS
    (pages only this process maps), from smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return fields["Pss"] / 1024, (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used (/proc/<pid>/stat, fields 14 and 15); OSError
    when it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_name(pid: int) -> str:
    name = Path(f"/proc/{pid}/comm").read_text().strip()
    if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes():
        return "resource-tracker"
    return name
