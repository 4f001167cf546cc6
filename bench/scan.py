"""/validate latency of a real `imagegate run` while its background scan runs, against idle.

`imagegate run` with one serving process (`--workers 1`, the default) scans in a process of its
own (cluster/scanning.py, docs/design.md §14). This starts the test bed's real etcd +
kube-apiserver on 127.0.0.1, creates WORKLOADS Deployments and Pods (stored, never run: there is
no kubelet) and the twenty ClusterImagePolicies, and runs `imagegate run --policy-reports` as a
process (the webhook is called directly, not registered). A client in a separate process sends
RATE requests/s to its `/validate`, paced on a fixed schedule, for WINDOW seconds; windows
alternate idle, scanning. During a scanning window a policy edit (in a namespace of its own)
follows every finished scan, so the scan process scans again after its debounce. Scans are read
from the operator's log; memory from /proc for the operator and every process below it (zygote,
scan process): PSS and USS from smaps_rollup (PSS counts a page shared by n processes 1/n in
each, so the sum is what the pod's cgroup is charged), and RSS.

    .venv/bin/python bench/scan.py [--workers N] [--scan-nice] [--plane-nice N] [--rounds N]
                                   [--split-cores]

`--split-cores` puts kube-apiserver and etcd on the second core, and imagegate's processes
(serving and scan) and the client on the first: as in a cluster, where the API server runs on
other nodes than the webhook's pod, so that what is left is what the scan process costs the
serving one on the core they share. (The client stands in for the API server calling.)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes import client

sys.path.insert(0, str(Path(__file__).parent))

from common import (
    CLUSTER_CPU,
    NAMESPACE_LABELS,
    POD,
    WEBHOOK_CPU,
    cpu_seconds,
    descendants,
    machine,
    process_name,
    pss_uss_mib,
    review_body,
    threads,
    twenty_policy_documents,
)

from imagegate.cluster import kube, resources
from imagegate.testbed import build, local
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries

WORKLOADS = 5000
NAMESPACES = 50
RATE = 100
WINDOW = 20.0
ROUNDS = 3
REQUEST_TIMEOUT = 10.0
#: Seconds the first scan (at start-up) may take before the rounds begin.
FIRST_SCAN_TIMEOUT = 300.0
#: The namespace of the policy whose edits make the scan run again (it holds no workloads).
TRIGGER_NAMESPACE = "bench-trigger"
POLICY_REPORT_CRD = (
    Path(__file__).resolve().parents[1]
    / "charts"
    / "imagegate"
    / "extra-crds"
    / "wgpolicyk8s.io_policyreports.yaml"
)
#: Half the workloads are judged `fail` (an image no policy trusts), half `pass`.
IMAGES = ("nginx:1.25", "ghcr.io/acme/billing:2")


# -- the client, in its own process ---------------------------------------------------------------


async def paced_client(url: str, cafile: str, seconds: float, rate: int) -> list[float]:
    """Latencies of `rate` requests a second sent on a fixed schedule: a slow answer does not
    delay the next request (no coordinated omission)."""
    context = ssl.create_default_context(cafile=cafile)
    latencies: list[float] = []
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(uid: int) -> None:
            started = time.perf_counter()
            async with session.post(
                url,
                data=review_body(uid, POD),
                ssl=context,
                headers={"Content-Type": "application/json"},
            ) as reply:
                answer = await reply.json()
            latencies.append(time.perf_counter() - started)
            assert answer["response"]["allowed"] is True, answer

        for uid in range(20):  # warm up: connections and TLS sessions
            await one(uid)
        latencies.clear()
        start = time.perf_counter()
        tasks = []
        for n in range(int(seconds * rate)):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return latencies


# -- the server side ------------------------------------------------------------------------------


def create_workloads(api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    names = [f"bench-{n:02d}" for n in range(NAMESPACES)]
    for name in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def create(n: int) -> None:
        namespace = names[n % NAMESPACES]
        spec = json.loads(json.dumps(POD["spec"]))
        spec["containers"][0]["image"] = IMAGES[n % 2]
        if n % 4 < 2:
            core.create_namespaced_pod(
                namespace, {"metadata": {"name": f"pod-{n:05d}"}, "spec": spec}
            )
        else:
            labels = {"app": f"app-{n:05d}"}
            apps.create_namespaced_deployment(
                namespace,
                {
                    "metadata": {"name": f"deploy-{n:05d}"},
                    "spec": {
                        "selector": {"matchLabels": labels},
                        "template": {"metadata": {"labels": labels}, "spec": spec},
                    },
                },
            )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(WORKLOADS)))


def apply_policies(api: client.ApiClient) -> None:
    """The twenty cluster policies, namespace shop as the reviews name it, and the trigger."""
    core = client.CoreV1Api(api)
    for name, labels in (("shop", NAMESPACE_LABELS), (TRIGGER_NAMESPACE, {})):
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
        )
    policies = resources.PolicyResources(api)
    for document in twenty_policy_documents():
        policies.create(None, document)
    policies.create(TRIGGER_NAMESPACE, trigger_policy("enforce"))


def trigger_policy(mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": "trigger", "namespace": TRIGGER_NAMESPACE},
        "spec": {"mode": mode, "sources": [{"name": "any", "images": ["**"]}]},
    }


def edit_trigger(api: client.ApiClient) -> None:
    """A policy change (its mode toggles): the operator tells the scan to run again."""
    policies = resources.PolicyResources(api)
    current = policies.get(TRIGGER_NAMESPACE, "trigger")
    mode = "warn" if current["spec"]["mode"] == "enforce" else "enforce"
    current["spec"] = trigger_policy(mode)["spec"]
    client.CustomObjectsApi(api).replace_namespaced_custom_object(
        "imagegate.dev", "v1alpha1", TRIGGER_NAMESPACE, "imagepolicies", "trigger", current
    )


#: The cluster policy whose edits change every bench namespace's report: it applies to all of
#: them (no namespace selector), and toggling it between warn and enforce turns its rows from
#: warn to fail and back.
CHANGING_POLICY = "policy-00"


def edit_every_report(api: client.ApiClient) -> None:
    """A policy change that every report shows: each scan after it rewrites all 50 reports."""
    objects = client.CustomObjectsApi(api)
    current = objects.get_cluster_custom_object(
        "imagegate.dev", "v1alpha1", "clusterimagepolicies", CHANGING_POLICY
    )
    current["spec"]["mode"] = "enforce" if current["spec"]["mode"] == "warn" else "warn"
    objects.replace_cluster_custom_object(
        "imagegate.dev", "v1alpha1", "clusterimagepolicies", CHANGING_POLICY, current
    )


def reports_stored(api: client.ApiClient) -> int:
    """PolicyReport creates and replaces the API server has served so far (its
    apiserver_request_total): whether a scan wrote its reports, or found them unchanged."""
    method, url, headers, body, post = api.param_serialize(
        method="GET",
        resource_path="/metrics",
        header_params={"Accept": "text/plain"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, headers, body, post)
    response.read()  # type: ignore[no-untyped-call]
    total = 0
    for line in (response.data or b"").decode().splitlines():
        if (
            line.startswith("apiserver_request_total{")
            and 'resource="policyreports"' in line
            and ('verb="PUT"' in line or 'verb="POST"' in line)
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


class OperatorLog:
    """The finished scans in the operator's JSON log (scan.py: "background scan: ... in Ns")."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def scans(self) -> list[tuple[int, float]]:
        found = []
        for line in self.path.read_text(errors="replace").splitlines():
            if '"background scan: ' not in line:
                continue
            message = json.loads(line)["message"]
            objects = int(message.split()[2])
            found.append((objects, float(message.rpartition(" in ")[2].rstrip("s"))))
        return found


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """The operator's scan process (forked by its zygote, or spawned) or spawned workers, not
    the zygote or a resource tracker."""
    found = []
    for each in descendants(pid):
        with contextlib.suppress(OSError):  # exited meanwhile
            forked = process_name(each) == "imagegate-scan"
            if forked or b"spawn_main" in Path(f"/proc/{each}/cmdline").read_bytes():
                found.append(each)
    return found


#: The highest PSS each process (by name) was seen with.
PSS_PEAKS: dict[str, float] = {}


def memory(pid: int) -> str:
    parts = []
    total = 0.0
    for each in [pid, *descendants(pid)]:
        try:
            name = "operator" if each == pid else process_name(each)
            pss, uss = pss_uss_mib(each)
            rss = rss_mib(each)
            cpu = cpu_seconds(each)
        except (OSError, KeyError):  # exited meanwhile
            continue
        total += pss
        PSS_PEAKS[name] = max(PSS_PEAKS.get(name, 0.0), pss)
        parts.append(
            f"{name} {each}: PSS {pss:.0f} USS {uss:.0f} RSS {rss:.0f} MiB, CPU {cpu:.1f} s"
        )
    return f"{'; '.join(parts)}; PSS sum {total:.0f} MiB"


def _cpu_or_zero(pid: int) -> float:
    """A process that exited meanwhile (a scan process restarting) counts 0."""
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


class CpuShares:
    """CPU seconds each process spends over a window: the serving process, its scan process,
    kube-apiserver and etcd (what a scan costs the machine, and who pays it)."""

    def __init__(self, operator: int, plane: dict[str, int]) -> None:
        self.operator = operator
        self.plane = plane

    def now(self) -> dict[str, float]:
        found = {"serving": _cpu_or_zero(self.operator)}
        found["scan process"] = sum(_cpu_or_zero(each) for each in children(self.operator))
        for name, pid in self.plane.items():
            found[name] = _cpu_or_zero(pid)
        return found

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> str:
        # The scan process may restart between samples: a negative delta is shown as 0.
        return ", ".join(
            f"{name} {max(0.0, after[name] - before.get(name, 0.0)):.1f}" for name in after
        )


async def sample_peaks(pid: int) -> None:
    """`PSS_PEAKS` kept up to date while the bench runs (once a second)."""
    while True:
        memory(pid)
        await asyncio.sleep(1.0)


async def wait_for_scans(log: OperatorLog, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(log.scans()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no scan {count} within {timeout:.0f}s")
        await asyncio.sleep(0.5)


async def keep_scanning(
    api: client.ApiClient,
    log: OperatorLog,
    stop: asyncio.Event,
    edit: Callable[[client.ApiClient], None],
) -> bool:
    """A policy edit now, and again after every scan that finishes, until `stop`; whether the
    last edit's scan is still to finish."""
    seen = len(log.scans())
    while not stop.is_set():
        await asyncio.to_thread(edit, api)
        while len(log.scans()) <= seen:
            if stop.is_set():
                return True
            await asyncio.sleep(0.5)
        seen = len(log.scans())
    return False


async def window(url: str, cafile: Path) -> list[float]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "client",
        url,
        str(cafile),
        str(WINDOW),
        str(RATE),
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await asyncio.wait_for(child.communicate(), WINDOW + 60)
    if child.returncode != 0:
        raise RuntimeError(f"client exited {child.returncode}")
    latencies: list[float] = json.loads(output)
    return latencies


def figures(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


async def measure(
    api: client.ApiClient,
    operator: local.LocalOperator,
    cafile: Path,
    ratios: dict[str, list[float]],
    rounds: int = ROUNDS,
    plane: dict[str, int] | None = None,
) -> None:
    url = f"{operator.url}/validate"
    log = OperatorLog(operator.process.log_path)
    pid = operator.process.pid or 0
    sampling = asyncio.create_task(sample_peaks(pid))
    shares = CpuShares(pid, plane or {})
    await wait_for_scans(log, 1, FIRST_SCAN_TIMEOUT)
    print(f"first scan: {log.scans()[0][0]} objects in {log.scans()[0][1]:.1f} s; {memory(pid)}")
    for round_ in range(1, rounds + 1):
        before = len(log.scans())
        cpu_start = shares.now()
        idle = figures(await window(url, cafile))
        idle_scans = len(log.scans()) - before
        print(
            f"round {round_}: idle p50 {idle[0]:.2f} ms, p99 {idle[1]:.2f} ms ({idle_scans} "
            f"scans); CPU s {shares.spent(cpu_start, shares.now())}"
        )
        for kind, edit in (
            ("unchanged", edit_trigger),
            ("every report changed", edit_every_report),
        ):
            stop = asyncio.Event()
            cpu_before = shares.now()
            stored_before = await asyncio.to_thread(reports_stored, api)
            scanning = asyncio.create_task(keep_scanning(api, log, stop, edit))
            started = len(log.scans())
            try:
                during = figures(await window(url, cafile))
            finally:
                stop.set()
                pending = await scanning
            cpu_after = shares.now()
            stored = await asyncio.to_thread(reports_stored, api) - stored_before
            scans = ", ".join(f"{s:.1f}" for _, s in log.scans()[started:]) or "none finished"
            ratios.setdefault(kind, []).append(during[1] / idle[1])
            print(
                f"round {round_}, scanning, results {kind}: p50 {during[0]:.2f} ms, p99 "
                f"{during[1]:.2f} ms; p99 ratio {ratios[kind][-1]:.2f}; scans took {scans} s; "
                f"{stored} reports stored; CPU s {shares.spent(cpu_before, cpu_after)}; "
                f"{memory(pid)}"
            )
            # The window's last scan ends before the next window starts.
            await wait_for_scans(log, len(log.scans()) + pending, FIRST_SCAN_TIMEOUT)
    sampling.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1", help="imagegate run --workers")
    parser.add_argument(
        "--scan-nice",
        action="store_true",
        help="an experiment: the scan process at nice 10 under SCHED_OTHER, as before it moved "
        "itself to SCHED_IDLE",
    )
    parser.add_argument(
        "--plane-nice",
        type=int,
        default=0,
        help="an experiment: the test bed's kube-apiserver and etcd at this nice value (in a "
        "cluster they do not share the webhook's cores)",
    )
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="kube-apiserver, etcd and the client on CPU 1, imagegate on CPU 0 (as in a cluster)",
    )
    parser.add_argument(
        "--scan-duty", default="", help="imagegate run --scan-duty (default: its own default)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help="idle/scanning rounds (0: memory at ready and after the first scan only)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        plane = ControlPlane(ControlPlaneBinaries.resolve(build.Builder()), Path(workdir) / "cp")
        if args.split_cores:  # what this process starts inherits its CPUs
            os.sched_setaffinity(0, {CLUSTER_CPU})
        plane.start()
        if args.split_cores:
            os.sched_setaffinity(0, {WEBHOOK_CPU})
        for pid in plane.pids() if args.plane_nice else ():
            os.setpriority(os.PRIO_PROCESS, pid, args.plane_nice)
        try:
            api = kube.api_client(plane.kubeconfig)
            local.install_crds(api, extra=[yaml.safe_load(POLICY_REPORT_CRD.read_text())])
            started = time.perf_counter()
            create_workloads(api)
            apply_policies(api)
            print(f"created {WORKLOADS} workloads in {time.perf_counter() - started:.0f} s")
            extra = ["--policy-reports", "--scan-interval=3600", "--log-format=json"]
            ratios: dict[str, list[float]] = {}
            with local.operator_process(
                plane.kubeconfig,
                Path(workdir) / "operator",
                extra_args=[
                    *extra,
                    f"--workers={args.workers}",
                    *([f"--scan-duty={args.scan_duty}"] if args.scan_duty else []),
                ],
            ) as operator:
                cafile = Path(workdir) / "ca.crt"
                cafile.write_bytes(operator.ca_pem)
                print(f"ready; {memory(operator.process.pid or 0)}")
                if args.scan_nice:  # leaving SCHED_IDLE takes CAP_SYS_NICE: root here
                    for child in children(operator.process.pid or 0):
                        for thread in threads(child):
                            with contextlib.suppress(ProcessLookupError):
                                os.sched_setscheduler(thread, os.SCHED_OTHER, os.sched_param(0))
                plane_pids = dict(zip(("kube-apiserver", "etcd"), plane.pids(), strict=True))
                asyncio.run(measure(api, operator, cafile, ratios, args.rounds, plane_pids))
                print(f"PSS peaks: {PSS_PEAKS}; sum {sum(PSS_PEAKS.values()):.0f} MiB")
        finally:
            plane.stop()
    sched = f" --scan-duty={args.scan_duty}" if args.scan_duty else ""
    sched += " (scan process SCHED_OTHER at nice 10)" if args.scan_nice else ""
    sched += f" (kube-apiserver and etcd at nice {args.plane_nice})" if args.plane_nice else ""
    sched += (
        f" (kube-apiserver and etcd on CPU {CLUSTER_CPU}; imagegate and the client on CPU "
        f"{WEBHOOK_CPU})"
        if args.split_cores
        else ""
    )
    print(
        f"`imagegate run --workers {args.workers}`{sched}: {WORKLOADS} workloads ({NAMESPACES} "
        f"namespaces, half Pods, half Deployments), 20 policies, {RATE} req/s for {WINDOW:.0f} s "
        f"a window; p99 ratios scanning/idle: "
        + "; ".join(f"results {k} {', '.join(f'{r:.2f}' for r in v)}" for k, v in ratios.items())
        + f"; {machine()}"
    )


def client_main(argv: list[str]) -> None:
    url, cafile, seconds, rate = argv
    latencies = asyncio.run(paced_client(url, cafile, float(seconds), int(rate)))
    print(json.dumps(latencies))


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
    else:
        main()
