"""Saturation of /validate with 1 and with 2 webhook worker processes (`--workers`), same run.

The workers are started as `imagegate run --workers N` starts them (cluster/workers.py's
`WorkerPool`, fed the twenty bench policies), without kopf: the parent here only feeds them.
The load is vegeta in its own process (`-rate=0`: as fast as answers come) over HTTPS with
keep-alive from `CONNECTIONS` connections, which the kernel spreads over the workers'
`SO_REUSEPORT` sockets. Rounds alternate 1, 2, 1, 2 so drift on a shared machine hits both.

vegeta is the test bed's build (~/.cache/imagegate/bin/vegeta/<version>/vegeta) or $VEGETA.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import POD, cpu_seconds, machine, review_body, twenty_policies

from imagegate.admission.server import TLSFiles
from imagegate.cluster import kube, policies, tls, workers
from imagegate.trail.metrics import Metrics

SECONDS = 6
CONNECTIONS = 32
ROUNDS = (1, 2, 1, 2)
#: Never contacted: the workers read namespace labels from the parent, and the policies need no
#: keys or pull secrets. The client wants a server address all the same.
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def vegeta() -> str:
    found = os.environ.get("VEGETA") or next(
        iter(sorted(glob.glob(os.path.expanduser("~/.cache/imagegate/bin/vegeta/*/vegeta")))),
        "",
    )
    if not found:
        sys.exit("vegeta not found: build the test bed's tools, or set $VEGETA")
    return found


def attack(binary: str, port: int, folder: Path) -> dict[str, Any]:
    """vegeta at saturation for SECONDS; its JSON report."""
    targets = folder / "targets"
    targets.write_text(f"POST https://127.0.0.1:{port}/validate\n")
    attacked = subprocess.run(
        [
            binary,
            "attack",
            f"-targets={targets}",
            f"-body={folder / 'body.json'}",
            "-header=Content-Type: application/json",
            f"-root-certs={folder / 'ca.pem'}",
            "-rate=0",
            f"-max-workers={CONNECTIONS}",
            f"-workers={CONNECTIONS}",
            f"-max-connections={CONNECTIONS}",
            f"-duration={SECONDS}s",
        ],
        check=True,
        capture_output=True,
    )
    report = subprocess.run(
        [binary, "report", "-type=json"], input=attacked.stdout, check=True, capture_output=True
    )
    result: dict[str, Any] = json.loads(report.stdout)
    return result


async def measure(count: int, settings: workers.WorkerSettings, folder: Path) -> dict[str, Any]:
    cache = policies.PolicyCache(kube.api_client(folder / "kubeconfig"))
    for number, policy in enumerate(twenty_policies()):
        cache.set_policy((None, f"p{number}"), policy)
    cache.set_namespace("shop", {"team": "shop", "env": "prod"})
    pool = workers.WorkerPool(settings, count, cache, Metrics())
    await pool.start()
    try:
        await asyncio.sleep(1.0)  # past start-up work
        before = sum(cpu_seconds(pid) for pid in pool.pids)
        report = await asyncio.to_thread(attack, vegeta(), settings.port, folder)
        spent = sum(cpu_seconds(pid) for pid in pool.pids) - before
        report["cpu_ms_per_request"] = spent * 1000 / max(1, report["requests"])
        report["rss_mib"] = [rss_mib(pid) for pid in pool.pids]
        return report
    finally:
        await pool.stop(timeout=10)


def rss_mib(pid: int) -> float:
    for entry in Path(f"/proc/{pid}/status").read_text().splitlines():
        if entry.startswith("VmRSS:"):
            return int(entry.split()[1]) / 1024
    return 0.0


def line(count: int, report: dict[str, Any]) -> str:
    latencies = report["latencies"]
    return (
        f"{count} worker(s): {report['throughput']:,.0f} req/s, success {report['success']:.3f}, "
        f"p50 {latencies['50th'] / 1e6:.1f} ms, p99 {latencies['99th'] / 1e6:.1f} ms, "
        f"workers' CPU {report['cpu_ms_per_request']:.2f} ms/request, "
        f"RSS per worker after the load {', '.join(f'{m:.0f}' for m in report['rss_mib'])} MiB"
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        ca = tls.CertificateAuthority.create("bench-ca")
        pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
        (folder / "tls.crt").write_bytes(pair.cert_pem)
        (folder / "tls.key").write_bytes(pair.key_pem)
        (folder / "ca.pem").write_bytes(ca.cert_pem)
        (folder / "kubeconfig").write_text(KUBECONFIG)
        (folder / "body.json").write_bytes(review_body(1, POD))
        from imagegate.testbed import processes

        settings = workers.WorkerSettings(
            kubeconfig=folder / "kubeconfig",
            tls=TLSFiles(folder / "tls.crt", folder / "tls.key"),
            host="127.0.0.1",
            port=processes.free_port(),
            deadline=8.0,
            mutate_budget=None,
            stale_digest_ttl=0.0,
            log_admits="sampled",  # the default of `imagegate run`
            namespace="imagegate-system",
            insecure_registries=frozenset(),
            events=False,
            material_ttl=60.0,
            material_stale_for=60.0,
        )
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(
            f"# {machine()}, load average {load}; vegeta -rate=0, {CONNECTIONS} connections, "
            f"{SECONDS}s a round (the machine is shared: compare the ratio, not the rates)"
        )
        by_count: dict[int, list[float]] = {}
        for count in ROUNDS:
            report = await measure(count, settings, folder)
            print(line(count, report), flush=True)
            by_count.setdefault(count, []).append(report["throughput"])
        one, two = statistics.median(by_count[1]), statistics.median(by_count[2])
        print(
            f"saturation, 2 workers / 1 worker: {two / one:.2f}x (medians {two:,.0f} / {one:,.0f})"
        )


if __name__ == "__main__":
    asyncio.run(main())
