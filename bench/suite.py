"""`bench/run`: imagegate against a floor and sigstore policy-controller, every figure in one run.

Three webhooks answer the same AdmissionReview (peer.py's 3-container Pod pinned by digest, one
policy matching every image, no registry or signature work) over HTTPS on 127.0.0.1:
- imagegate: the real `imagegate run` process against the test bed's kube-apiserver, with a
  ClusterImagePolicy trusting `**`;
- the floor: bench/floor.py, a trivial aiohttp handler answering allowed=true, in its own process;
- policy-controller v0.13.1 (bench/peer.py starts it), a ClusterImagePolicy `static: pass`.

vegeta (loadgen.py) drives them from its own process. Each measurement runs on every side before
the next measurement starts (imagegate, floor, peer, imagegate, ...), and the whole set runs
`--rounds` times, so this machine's drift hits all sides; ratios are taken within a round.
imagegate and the floor are started afresh each round (ready time, RSS at ready).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import loadgen
import peer
from common import review_body
from kubernetes import client

from imagegate.cluster import kube, tls
from imagegate.testbed import build, local, processes
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PACED_RATE = 200
#: From under policy-controller's ~40/s API client limit to past imagegate's saturation.
SWEEP = (25, 50, 100, 200, 500, 1000, 2000)
#: A side stops climbing the sweep once it falls behind: fewer admitted or p99 past this.
SWEEP_GIVE_UP_P99_MS = 1000.0
SATURATION_P99_MS = 50.0
SATURATION_WORKERS = 16
WARM_UP_REQUESTS = 200
POD_CREATES = 300
NAMESPACE = "shop"


@dataclass
class Options:
    rounds: int
    paced_seconds: float
    sweep_seconds: float
    saturation_seconds: float
    peer: bool
    pod_creates: int
    imagegate_args: list[str]


@dataclass
class Round:
    attacks: list[loadgen.Attack] = field(default_factory=list)
    ready_seconds: float = 0.0
    ready_rss: dict[str, float] = field(default_factory=dict)
    pod_create: dict[str, tuple[float, float]] = field(default_factory=dict)

    def find(self, side: str, mode: str, rate: int = 0) -> loadgen.Attack | None:
        for attack in self.attacks:
            if attack.side == side and attack.mode == mode and (not rate or attack.rate == rate):
                return attack
        return None


# -- the servers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path
    ca_pem: bytes


def certificates(directory: Path) -> Certificates:
    ca = tls.CertificateAuthority.create("bench-ca")
    pair = ca.issue("bench", ip_addresses=["127.0.0.1"])
    paths = Certificates(directory / "ca.crt", directory / "tls.crt", directory / "tls.key", b"")
    paths.ca.write_bytes(ca.cert_pem)
    paths.cert.write_bytes(pair.cert_pem)
    paths.key.write_bytes(pair.key_pem)
    return Certificates(paths.ca, paths.cert, paths.key, ca.cert_pem)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as reply:
        return int(reply.status) == 200


def start_until_ready(process: processes.ManagedProcess, ready: Callable[[], bool]) -> float:
    """Start `process`; seconds from just before its start until `ready()` holds (10 ms polls)."""
    started = time.perf_counter()
    process.start()
    process.wait_until(ready, timeout=local.START_TIMEOUT, what="ready", interval=0.01)
    return time.perf_counter() - started


@contextlib.contextmanager
def imagegate_process(
    plane: ControlPlane, certs: Certificates, workdir: Path, extra: Sequence[str]
) -> Iterator[tuple[processes.ManagedProcess, int, float]]:
    """`imagegate run` serving HTTPS on 127.0.0.1: (process, port, seconds start → /readyz 200)."""
    port, health = processes.free_port(), processes.free_port()
    process = processes.ManagedProcess(
        "imagegate run",
        [
            sys.executable,
            "-m",
            "imagegate",
            "run",
            "--kubeconfig",
            str(plane.kubeconfig),
            "--tls-cert",
            str(certs.cert),
            "--tls-key",
            str(certs.key),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--health-port",
            str(health),
            *extra,
        ],
        workdir / "imagegate.log",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        took = start_until_ready(process, lambda: _http_ok(f"http://127.0.0.1:{health}/readyz"))
        yield process, port, took
    finally:
        process.stop()


@contextlib.contextmanager
def floor_process(
    certs: Certificates, workdir: Path
) -> Iterator[tuple[processes.ManagedProcess, int]]:
    port = processes.free_port()
    process = processes.ManagedProcess(
        "floor",
        [sys.executable, str(HERE / "floor.py"), str(certs.cert), str(certs.key), str(port)],
        workdir / "floor.log",
    )
    context = ssl.create_default_context(cafile=str(certs.ca))
    try:
        start_until_ready(process, lambda: _http_ok(f"https://127.0.0.1:{port}/readyz", context))
        yield process, port
    finally:
        process.stop()


def prepare_cluster(api: client.ApiClient) -> None:
    """imagegate's CRDs, one ClusterImagePolicy trusting every image, namespace `shop`."""
    local.install_crds(api)
    client.CustomObjectsApi(api).create_cluster_custom_object(
        "imagegate.dev",
        "v1alpha1",
        "clusterimagepolicies",
        {
            "apiVersion": "imagegate.dev/v1alpha1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": "everything"},
            "spec": {"sources": [{"name": "all", "images": ["**"]}]},
        },
    )
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE))
    )


@dataclass(frozen=True)
class Peer:
    process: processes.ManagedProcess
    side: loadgen.Side


def start_peer(builder: build.Builder, plane: ControlPlane, workdir: Path) -> Peer:
    process, _, _ = peer.start_policy_controller(builder, plane, workdir)
    secret = client.CoreV1Api(kube.api_client(plane.kubeconfig)).read_namespaced_secret(
        "webhook-certs", peer.SYSTEM_NAMESPACE
    )
    ca = workdir / "peer-ca.crt"
    ca.write_bytes(base64.b64decode((secret.data or {})["ca-cert.pem"]))
    name = f"webhook.{peer.SYSTEM_NAMESPACE}.svc"
    assert process.pid is not None
    side = loadgen.Side(
        "policy-controller",
        f"https://{name}:8443/validations",
        ca,
        process.pid,
        connect_to=f"{name}:8443:127.0.0.1:8443",
    )
    return Peer(process, side)


# -- the measurements ---------------------------------------------------------------------------


def after_ready(vegeta: loadgen.Vegeta, side: loadgen.Side, *, fresh: bool) -> loadgen.Attack:
    """The first attack of a round: for a side started for it (`fresh`), right after ready,
    else once it has worked off the last round; it also warms connections and caches up."""
    attack = vegeta.attack(
        side, "after-ready", rate=100, seconds=WARM_UP_REQUESTS / 100, settle=not fresh
    )
    if attack.admitted == 0:
        raise RuntimeError(
            f"{side.name} admitted none of {attack.sent} reviews ({attack.errors}): "
            "is it serving the policy?"
        )
    return attack


def measure_round(
    vegeta: loadgen.Vegeta, sides: Sequence[loadgen.Side], options: Options, record: Round
) -> None:
    def each(mode: str, rate: int, seconds: float, workers: int = 0) -> None:
        for side in sides:
            if mode == "sweep" and gave_up.get(side.name):
                continue
            attack = vegeta.attack(side, mode, rate=rate, seconds=seconds, workers=workers)
            record.attacks.append(attack)
            say(describe(attack))
            if mode == "sweep" and (
                attack.admitted_share < 0.99 or attack.p99 > SWEEP_GIVE_UP_P99_MS
            ):
                gave_up[side.name] = True

    gave_up: dict[str, bool] = {}
    for side in sides:
        record.attacks.append(after_ready(vegeta, side, fresh=side.name != "policy-controller"))
        say(describe(record.attacks[-1]))
    # The paced run last: policy-controller falls behind at 200/s and works off the backlog
    # for minutes after, which `Vegeta.settle` would otherwise wait out before the sweep.
    for rate in SWEEP:
        each("sweep", rate, options.sweep_seconds)
    each("saturation", 0, options.saturation_seconds, workers=SATURATION_WORKERS)
    each("paced", PACED_RATE, options.paced_seconds)


def pod_create_latencies(api: client.ApiClient, namespace: str, count: int) -> tuple[float, float]:
    """p50, p99 (ms) of creating peer.py's Pod through the API server with dryRun=All."""
    core = client.CoreV1Api(api)
    body = json.loads(json.dumps(peer.POD))
    body["metadata"] = {"name": "web"}
    latencies = []
    for n in range(count + 20):
        started = time.perf_counter()
        core.create_namespaced_pod(namespace, body, dry_run="All")
        if n >= 20:  # the first ones warm up connections and caches
            latencies.append((time.perf_counter() - started) * 1000)
    return loadgen.percentile(latencies, 50), loadgen.percentile(latencies, 99)


def measure_pod_creates(
    api: client.ApiClient, webhooks: dict[str, str], certs: Certificates, count: int, record: Round
) -> None:
    """dryRun Pod creates with no webhook, then with each of `webhooks` (name → base URL)."""
    gated = {"imagegate.dev/bench": "on"}
    core = client.CoreV1Api(api)
    for namespace, labels in (("bench-plain", {}), ("bench-gated", gated)):
        with contextlib.suppress(client.ApiException):  # made in an earlier round
            core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels=labels))
            )
    record.pod_create["no webhook"] = pod_create_latencies(api, "bench-plain", count)
    for name, url in webhooks.items():
        operator = local.LocalOperator(url, certs.ca_pem, None)  # type: ignore[arg-type]
        with local.registered_webhooks(
            api, operator, f"bench-{name}", {"matchLabels": gated}, policies=False
        ):
            time.sleep(1.0)  # the API server picks up new configurations asynchronously
            record.pod_create[name] = pod_create_latencies(api, "bench-gated", count)
    say(
        "pod create (dryRun) p50/p99 ms: "
        + "; ".join(f"{k} {v[0]:.2f}/{v[1]:.2f}" for k, v in record.pod_create.items())
    )


def run_round(
    vegeta: loadgen.Vegeta,
    plane: ControlPlane,
    certs: Certificates,
    workdir: Path,
    peer_side: loadgen.Side | None,
    options: Options,
) -> Round:
    record = Round()
    with (
        imagegate_process(plane, certs, workdir, options.imagegate_args) as (ours, port, ready),
        floor_process(certs, workdir) as (floor, floor_port),
    ):
        assert ours.pid is not None
        assert floor.pid is not None
        record.ready_seconds = ready
        record.ready_rss = {"imagegate": loadgen.rss_mib(ours.pid)}
        record.ready_rss["floor"] = loadgen.rss_mib(floor.pid)
        if peer_side is not None:
            record.ready_rss["policy-controller"] = loadgen.rss_mib(peer_side.pid)
        say(f"imagegate ready in {ready:.2f} s; RSS at ready {record.ready_rss}")
        sides = [
            loadgen.Side("imagegate", f"https://127.0.0.1:{port}/validate", certs.ca, ours.pid),
            loadgen.Side("floor", f"https://127.0.0.1:{floor_port}/validate", certs.ca, floor.pid),
        ]
        if peer_side is not None:
            sides.append(peer_side)
        measure_round(vegeta, sides, options, record)
        if options.pod_creates:
            measure_pod_creates(
                kube.api_client(plane.kubeconfig),
                {
                    "floor": f"https://127.0.0.1:{floor_port}",
                    "imagegate": f"https://127.0.0.1:{port}",
                },
                certs,
                options.pod_creates,
                record,
            )
    return record


def describe(attack: loadgen.Attack) -> str:
    rate = f"{attack.rate}/s" if attack.rate else "max"
    return (
        f"{attack.side:18} {attack.mode:10} {rate:>7}: p50 {attack.p50:7.2f} ms, "
        f"p99 {attack.p99:8.2f} ms, {attack.throughput:7.0f} admitted/s, "
        f"{100 * attack.admitted_share:5.1f} % admitted, {attack.cpu_ms_per_request:.3f} CPU-ms/req"
        + (
            f" (after {attack.settled_seconds:.0f} s settling)"
            if attack.settled_seconds > 3
            else ""
        )
        + (f"; failures: {'; '.join(attack.errors)}" if attack.errors else "")
    )


def say(line: str) -> None:
    print(line, flush=True)


# -- the whole run ------------------------------------------------------------------------------


def run(options: Options) -> list[Round]:
    builder = build.Builder()
    vegeta_binary = builder.ensure(build.VEGETA)
    if options.peer:
        started = time.monotonic()
        builder.ensure(build.POLICY_CONTROLLER)
        say(f"policy-controller ready to run ({time.monotonic() - started:.0f} s to build/find)")
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as directory:
        workdir = Path(directory)
        certs = certificates(workdir)
        vegeta = loadgen.Vegeta(vegeta_binary, workdir, review_body(0, peer.POD))
        plane = ControlPlane(ControlPlaneBinaries.resolve(builder), workdir / "plane")
        plane.start()
        try:
            prepare_cluster(kube.api_client(plane.kubeconfig))
            peer_run = start_peer(builder, plane, workdir) if options.peer else None
            try:
                for number in range(1, options.rounds + 1):
                    say(f"-- round {number} of {options.rounds}")
                    try:
                        rounds.append(
                            run_round(
                                vegeta,
                                plane,
                                certs,
                                workdir,
                                peer_run.side if peer_run else None,
                                options,
                            )
                        )
                    except (RuntimeError, subprocess.CalledProcessError) as error:
                        # Keep the rounds already measured: the report says how many ran.
                        say(f"round {number} stopped: {error}")
                        break
            finally:
                if peer_run is not None:
                    peer_run.process.stop()
        finally:
            plane.stop()
    return rounds


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--paced-seconds", type=float, default=20.0)
    parser.add_argument("--sweep-seconds", type=float, default=8.0)
    parser.add_argument("--saturation-seconds", type=float, default=10.0)
    parser.add_argument(
        "--no-peer", dest="peer", action="store_false", help="skip policy-controller"
    )
    parser.add_argument(
        "--pod-creates", type=int, default=POD_CREATES, help="dryRun Pod creates (0: skip)"
    )
    parser.add_argument(
        "--imagegate-args",
        default="",
        help="extra arguments for `imagegate run`, one shell-quoted string (e.g. '--workers 2')",
    )
    parser.add_argument("--quick", action="store_true", help="1 round, short windows (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.paced_seconds, args.sweep_seconds = 1, 5.0, 2.0
        args.saturation_seconds, args.pod_creates = 3.0, min(args.pod_creates, 50)
    return Options(
        rounds=args.rounds,
        paced_seconds=args.paced_seconds,
        sweep_seconds=args.sweep_seconds,
        saturation_seconds=args.saturation_seconds,
        peer=args.peer,
        pod_creates=args.pod_creates,
        imagegate_args=shlex.split(args.imagegate_args),
    )


def main(argv: Sequence[str]) -> None:
    import report

    options = parse_options(argv)
    load_before = os.getloadavg()
    started = time.time()
    rounds = run(options)
    RESULTS.mkdir(exist_ok=True)
    text = report.markdown(rounds, options, load_before, os.getloadavg(), started)
    (RESULTS / "run.md").write_text(text)
    report.plot(rounds, RESULTS / "latency.png")
    print(text)
    print(f"wrote {RESULTS / 'run.md'} and {RESULTS / 'latency.png'}")


if __name__ == "__main__":
    main(sys.argv[1:])
