"""/validate latency while the background scan runs, against idle, in the same process and run.

The operator serves admission and runs `PolicyReportScanner` on one event loop, so a scan that
holds the loop (or the GIL) delays every admission behind it. This starts the test bed's real
etcd + kube-apiserver on 127.0.0.1, creates WORKLOADS Deployments and Pods (stored, never run:
there is no kubelet), and serves `/validate` over HTTPS with the real reviewers. A client in a
separate process (so its own timing is not delayed by the server's loop) sends RATE requests/s,
paced on a fixed schedule, for WINDOW seconds; windows alternate idle, scanning, idle, scanning.
During a scanning window the scanner scans again as soon as a scan ends. A last round runs
after `gc.freeze()`, as an operator would after starting up.

    .venv/bin/python bench/scan.py
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from kubernetes import client

sys.path.insert(0, str(Path(__file__).parent))

from common import POD, StaticPolicies, machine, review_body

from imagegate.admission import reviewers as webhook
from imagegate.admission.server import TLSFiles, WebhookServer, build_app
from imagegate.cluster import kube, tls
from imagegate.testbed import build, local
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries
from imagegate.trail import scan

WORKLOADS = 5000
NAMESPACES = 50
RATE = 100
WINDOW = 20.0
ROUNDS = 2
REQUEST_TIMEOUT = 10.0
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


async def scan_repeatedly(scanner: scan.PolicyReportScanner, durations: list[float]) -> None:
    while True:
        started = time.perf_counter()
        summary = await scanner.scan_once()
        durations.append(time.perf_counter() - started)
        assert summary.complete, summary
        assert summary.objects == WORKLOADS, summary


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


async def measure(api: client.ApiClient, directory: Path) -> None:
    ca = tls.CertificateAuthority.create("bench-ca")
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    files = TLSFiles(directory / "tls.crt", directory / "tls.key")
    files.cert.write_bytes(pair.cert_pem)
    files.key.write_bytes(pair.key_pem)
    cafile = directory / "ca.crt"
    cafile.write_bytes(ca.cert_pem)
    source = StaticPolicies()
    app = build_app(validate=webhook.Validator(source), mutate=webhook.Mutator(source))
    server = WebhookServer(app, files, host="127.0.0.1", port=0)
    await server.start()
    url = f"https://127.0.0.1:{server.port}/validate"
    scanner = scan.PolicyReportScanner(api, StaticPolicies())
    try:
        for round_ in range(1, ROUNDS + 2):
            frozen = round_ > ROUNDS
            if frozen:
                # What the operator would get from gc.freeze() once started: the collector's
                # full passes (which stop the loop) skip the ~160,000 objects of the imports.
                gc.freeze()
            idle = figures(await window(url, cafile))
            durations: list[float] = []
            scanning = asyncio.create_task(scan_repeatedly(scanner, durations))
            try:
                during = figures(await window(url, cafile))
            finally:
                scanning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scanning
            scans = ", ".join(f"{d:.1f}" for d in durations) or "none finished"
            print(
                f"round {round_}{' (gc.freeze())' if frozen else ''}: "
                f"idle p50 {idle[0]:.2f} ms, p99 {idle[1]:.2f} ms; "
                f"scanning p50 {during[0]:.2f} ms, p99 {during[1]:.2f} ms; "
                f"p99 ratio {during[1] / idle[1]:.2f}; scans took {scans} s"
            )
    finally:
        await server.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        plane = ControlPlane(ControlPlaneBinaries.resolve(build.Builder()), Path(workdir) / "cp")
        plane.start()
        try:
            api = kube.api_client(plane.kubeconfig)
            local.install_crds(api, extra=[yaml.safe_load(POLICY_REPORT_CRD.read_text())])
            started = time.perf_counter()
            create_workloads(api)
            print(f"created {WORKLOADS} workloads in {time.perf_counter() - started:.0f} s")
            asyncio.run(measure(api, Path(workdir)))
        finally:
            plane.stop()
    print(
        f"{WORKLOADS} workloads ({NAMESPACES} namespaces, half Pods, half Deployments), 20 "
        f"policies, {RATE} req/s for {WINDOW:.0f} s a window; {machine()}"
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
