"""Failed admissions when one of two replicas is stopped (SIGTERM) or killed (SIGKILL) under load.

Imagegate issue #11 ("Deliver"). The test bed's real etcd + kube-apiserver and registry on
127.0.0.1; two `imagegate run` replicas with the same serving certificate behind a TCP balancer
(tests/netproxy.py `RoundRobinBalancer`: connections in turn, a replica whose /readyz fails
leaves the rotation within `CHECK_INTERVAL`, a refused connect goes on to the other replica);
both webhooks registered by URL at the balancer, `failurePolicy: Fail`, `timeoutSeconds: 10`;
an ImagePolicy requiring a cosign key signature, and a key-signed image. A client sends RATE Pod
creations a second (`dryRun=All`, so each one is judged by both webhooks and stored nowhere) to
the kube-apiserver, at most WORKERS at once, on a fixed schedule; latency is from the POST to
its answer, and a machine too busy to keep up shows as fewer per second than RATE. A creation
counts in the phase its answer came in.
Phases: steady load; SIGTERM of replica a, restarted
once it has exited; SIGKILL of replica b, restarted at once. Each phase lasts until the
replica is ready again plus SETTLE seconds. RSS (VmRSS) of each replica idle and under load.

    .venv/bin/python bench/ha.py        # about 2 min; prints and writes bench/results/ha.md
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import re
import signal
import ssl
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
from kubernetes import client

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from common import machine

from imagegate.cluster import kube, resources
from imagegate.cluster import tls as certificates
from imagegate.testbed import bed, local
from netproxy import Backend, RoundRobinBalancer, ThreadedBalancer
from support import key_secret, pod_review, post_review, push_key_signed_image

RATE = 50
WORKERS = 32
STEADY = 20.0
SETTLE = 15.0
CHECK_INTERVAL = 0.5
REQUEST_TIMEOUT = 30.0
NAMESPACE = "ha"
RESULTS = Path(__file__).parent / "results" / "ha.md"


@dataclasses.dataclass(frozen=True)
class Admission:
    scheduled: float
    #: When its POST went out (a worker was free), and when its answer (or error) came.
    sent: float
    answered: float
    #: None: admitted (201); else what the API server (or the connection) said.
    failure: str | None


class Load:
    """RATE dry-run Pod creations a second through the kube-apiserver, on a loop of its own."""

    def __init__(self, configuration: client.Configuration, image: str) -> None:
        self._url = f"{configuration.host}/api/v1/namespaces/{NAMESPACE}/pods?dryRun=All"
        self._context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        assert configuration.cert_file is not None  # the test bed's admin client certificate
        self._context.load_cert_chain(configuration.cert_file, configuration.key_file)
        self._image = image
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.admissions: list[Admission] = []
        self.in_flight = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[Admission]:
        self._stop.set()
        self._thread.join(timeout=REQUEST_TIMEOUT + 10)
        return self.admissions

    async def _run(self) -> None:
        workers = asyncio.Semaphore(WORKERS)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = []
            start = time.monotonic()
            for n in itertools.count():
                if self._stop.is_set():
                    break
                scheduled = start + n / RATE
                await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
                tasks.append(asyncio.create_task(self._create(session, workers, n, scheduled)))
            await asyncio.gather(*tasks)

    async def _create(
        self, session: aiohttp.ClientSession, workers: asyncio.Semaphore, n: int, scheduled: float
    ) -> None:
        pod: dict[str, object] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"load-{n}"},
            "spec": {"containers": [{"name": "app", "image": self._image}]},
        }
        async with workers:
            sent = time.monotonic()
            self.in_flight += 1
            try:
                failure = await self._post(session, pod)
            finally:
                self.in_flight -= 1
        self.admissions.append(Admission(scheduled, sent, time.monotonic(), failure))

    async def _post(self, session: aiohttp.ClientSession, pod: dict[str, object]) -> str | None:
        try:
            async with session.post(self._url, json=pod, ssl=self._context) as reply:
                if reply.status == 201:
                    return None
                body = await reply.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            return f"client: {type(error).__name__} {error}"
        try:
            return f"{reply.status} {json.loads(body)['message']}"
        except (ValueError, KeyError):
            return f"{reply.status} {body[:200]}"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for {pid}")


def answered(replica: local.LocalOperator) -> int:
    """Admission reviews the replica answered since it started (its metrics)."""
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in replica.metrics().splitlines()
        if line.startswith("imagegate_admissions_total{")
    )


def ready(replica: local.LocalOperator) -> bool:
    try:
        with urllib.request.urlopen(replica.health_url + "/readyz", timeout=2) as reply:
            return int(reply.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `condition()` held."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)
    return time.monotonic() - started


def restart(replica: local.LocalOperator) -> float:
    """Start the (exited) replica again on the same ports; seconds until it is ready."""
    replica.process.start()
    return wait_for(lambda: ready(replica), 90, "the restarted replica is ready")


def summarize(failures: list[str]) -> str:
    """Failure messages, counted; ports and names taken out so alike ones group, and the API
    server's common prefix ("Internal error occurred: failed calling webhook") shortened."""
    shortened = (
        re.sub(
            r"Internal error occurred: failed calling webhook \"(\w+)\.imagegate\.dev\": "
            r"failed to call webhook: Post \"[^\"]+\": ",
            r"/\1: ",
            text,
        )
        for text in failures
    )
    counted = collections.Counter(
        re.sub(r"load-\d+", "load-N", re.sub(r"127\.0\.0\.1:\d+", "PORT", text))[:120]
        for text in shortened
    )
    return "; ".join(f"{n} x {text}" for text, n in counted.most_common(3)) or "none"


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def table(admissions: list[Admission], phases: list[tuple[str, float]], end: float) -> str:
    rows = [
        "| phase | admissions | per second | failed | failure messages | p50 | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    bounds = [*(start for _, start in phases[1:]), end]
    for (name, start), stop in zip(phases, bounds, strict=True):
        inside = [a for a in admissions if start <= a.answered < stop]
        failed = [a.failure for a in inside if a.failure is not None]
        ordered = sorted((a.answered - a.sent) * 1000 for a in inside)
        rows.append(
            f"| {name} | {len(inside)} | {len(inside) / (stop - start):.0f} | {len(failed)} | "
            f"{summarize(failed)} | "
            f"{statistics.median(ordered):.0f} ms | {percentile(ordered, 0.99):.0f} ms |"
        )
    return "\n".join(rows)


def failure_offsets(admissions: list[Admission], since: float, until: float) -> str:
    """When the failed creations of a phase were sent, in seconds after its signal."""
    offsets = [
        f"{a.sent - since:+.2f}"
        for a in sorted(admissions, key=lambda a: a.sent)
        if a.failure is not None and since <= a.answered < until
    ]
    return ", ".join(offsets) or "none"


def sees_policy(replica: local.LocalOperator, context: ssl.SSLContext) -> bool:
    """Whether the replica denies an unsigned image (it has the policy)."""
    review = pod_review(NAMESPACE, "docker.io/library/unsigned:1")
    return post_review(replica.url + "/validate", review, context)["allowed"] is False


def measure(testbed: bed.Testbed) -> str:
    assert testbed.control_plane is not None
    assert testbed.registry is not None
    workdir = testbed.workdir / "ha"
    workdir.mkdir()
    kubeconfig = testbed.control_plane.kubeconfig
    api = kube.api_client(kubeconfig)
    local.install_crds(api)
    core = client.CoreV1Api(api)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE, labels={"ha": "on"}))
    )
    registry = testbed.registry.address
    image, _ = push_key_signed_image(
        testbed.tools["crane"], testbed.tools["cosign"], registry, "ha/app", workdir
    )
    key_secret(core, NAMESPACE, (workdir / "cosign.pub").read_text())
    ca = certificates.CertificateAuthority.create("imagegate-ha-ca")
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    (workdir / "tls.crt").write_bytes(pair.cert_pem)
    (workdir / "tls.key").write_bytes(pair.key_pem)
    serving = ["--tls-cert", str(workdir / "tls.crt"), "--tls-key", str(workdir / "tls.key")]

    def replica(name: str) -> contextlib.AbstractContextManager[local.LocalOperator]:
        return local.operator_process(
            kubeconfig, workdir / name, insecure_registries=[registry], certificate_args=serving
        )

    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with replica("a") as a, replica("b") as b:
        backends = [
            Backend(
                "127.0.0.1",
                int(r.url.rsplit(":", 1)[1]),
                r.health_url.removeprefix("http://") + "/readyz",
            )
            for r in (a, b)
        ]
        with ThreadedBalancer(backends, check_interval=CHECK_INTERVAL) as balancer:
            front = dataclasses.replace(a, url=f"https://{balancer.address}", ca_pem=ca.cert_pem)
            selector: dict[str, object] = {"matchLabels": {"ha": "on"}}
            with local.registered_webhooks(api, front, "imagegate-ha", selector, policies=False):
                resources.PolicyResources(api).create(NAMESPACE, signed_policy(registry))
                for r in (a, b):
                    wait_for(functools.partial(sees_policy, r, context), 30, "the policy is there")
                return run_phases(api, image, a, b, balancer)


def signed_policy(registry: str) -> dict[str, object]:
    return {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": "signed"},
        "spec": {
            "sources": [
                {
                    "name": "team",
                    "images": [f"{registry}/ha/*"],
                    "signatures": {
                        "keys": [{"secretRef": {"name": "cosign"}}],
                        "requireTransparencyLog": False,
                    },
                }
            ]
        },
    }


def run_phases(
    api: client.ApiClient,
    image: str,
    a: local.LocalOperator,
    b: local.LocalOperator,
    balancer: RoundRobinBalancer,
) -> str:
    replicas = {"a": a, "b": b}
    idle = {name: rss_mib(pid_of(r)) for name, r in replicas.items()}
    load = Load(api.configuration, image)
    load.start()
    phases = [("steady load, both replicas", time.monotonic())]
    loaded = dict.fromkeys(replicas, 0.0)
    while time.monotonic() - phases[0][1] < STEADY:
        for name, replica in replicas.items():
            loaded[name] = max(loaded[name], rss_mib(pid_of(replica)))
        time.sleep(1)
    phases.append(("SIGTERM replica a, restarted when it exited", time.monotonic()))
    notes = [stop_and_restart(a, signal.SIGTERM, load)]
    time.sleep(SETTLE)
    phases.append(("SIGKILL replica b, restarted at once", time.monotonic()))
    notes.append(stop_and_restart(b, signal.SIGKILL, load))
    time.sleep(SETTLE)
    end = time.monotonic()
    admissions = load.stop()
    for (name, start), (_, stop) in zip(phases[1:], [*phases[2:], ("end", end)], strict=True):
        offsets = failure_offsets(admissions, start, stop)
        notes.append(f"{name.split(',')[0]}: failures sent at {offsets} s after the signal")
    counts = ", ".join(f"{x.port}: {x.connections}" for x in balancer.backends)
    notes.append(
        f"balancer: connections per replica port {counts}; "
        f"{balancer.redispatched} refused connects sent on to the other replica"
    )
    rss = ", ".join(
        f"{n} {idle[n]:.0f} MiB idle, {loaded[n]:.0f} MiB at most under load" for n in idle
    )
    notes.append(f"RSS (VmRSS): {rss}")
    return "\n".join([table(admissions, phases, end), "", *(f"- {note}" for note in notes)])


def pid_of(replica: local.LocalOperator) -> int:
    pid = replica.process.pid
    assert pid is not None  # started
    return pid


def stop_and_restart(replica: local.LocalOperator, how: signal.Signals, load: Load) -> str:
    """Send `how`, wait until the replica has exited, start it again; what happened, as a note."""
    reviews, in_flight = answered(replica), load.in_flight
    os.kill(pid_of(replica), how)
    exited = wait_for(lambda: replica.process.exit_code() is not None, 60, f"exit on {how.name}")
    code = replica.process.exit_code()
    back = restart(replica)
    return (
        f"{how.name}: the replica had answered {reviews} reviews, {in_flight} creations were in "
        f"flight (both replicas); it exited {code} after {exited:.1f} s, was ready again "
        f"{back:.1f} s after its restart"
    )


def main() -> None:
    with bed.Testbed() as testbed:
        report = measure(testbed)
    text = (
        f"{report}\n\n{RATE} dry-run Pod creations/s (at most {WORKERS} at once), "
        f"key-signed image, failurePolicy Fail, timeout 10 s, "
        f"balancer checks /readyz every {CHECK_INTERVAL} s; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; {machine()}\n"
    )
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(f"# bench/ha.py\n\n{text}")


if __name__ == "__main__":
    main()
