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

Then, unless turned off, two phases with images and workloads of the test bed:
- signed (`--no-signed`): a 3-container Pod whose images are pushed to the test bed's OCI
  registry (127.0.0.1, plain HTTP) with crane and signed with a cosign key (legacy `.sig`, no
  log), fresh images each round; imagegate holds a ClusterImagePolicy requiring that key,
  policy-controller one with a `key:` authority holding it. The first review of those images
  (cold), a warm-up, then paced and saturation runs; an image in the registry that is not
  signed must be denied by both.
- scan (`--no-scan`): admission p99 at 100/s on the round's imagegate (idle), then on a second
  `imagegate run` with `--policy-reports` scanning SCAN_WORKLOADS stored Deployments and Pods back
  to back; the window opens after its first scan ends, and the share of the window covered by
  scans is read from its "background scan: N objects" log lines. Then the same again with the
  control plane on a core of its own and everything else on the other (`split_cores`).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import loadgen
import peer
import yaml
from common import CLUSTER_CPU, WEBHOOK_CPU, pin_tree, review_body
from kubernetes import client

from imagegate.cluster import kube, tls
from imagegate.errors import StartError
from imagegate.testbed import build, images, local, processes
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries
from imagegate.testbed.registry import LocalRegistry

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
#: Signed phase: paced under policy-controller's ~40/s API client limit, so both keep up.
SIGNED_RATE = 25
SIGNED_WARM_UP_SECONDS = 2.0
SIGNED_REPOSITORY = "bench"
SIGNED_NAMESPACE = "signed"
#: The signed Pod's containers: (name, repository under SIGNED_REPOSITORY), init container first.
SIGNED_CONTAINERS = (("setup", "busybox"), ("web", "nginx"), ("sidecar", "redis"))
#: Scan phase: the rate and workloads of bench/scan.py, scans back to back.
SCAN_RATE = 100
SCAN_WORKLOADS = 5000
SCAN_NAMESPACES = 50
SCAN_INTERVAL = 1.0
SCAN_TIMEOUT = 300.0
SCAN_LINE = re.compile(r"background scan: (\d+) objects")
POLICY_REPORT_CRD = HERE.parent / "charts/imagegate/extra-crds/wgpolicyk8s.io_policyreports.yaml"


@dataclass
class Options:
    rounds: int
    paced_seconds: float
    sweep_seconds: float
    saturation_seconds: float
    peer: bool
    pod_creates: int
    imagegate_args: list[str]
    signed: bool = True
    signed_seconds: float = 10.0
    scan: bool = True
    scan_workloads: int = SCAN_WORKLOADS
    scan_namespaces: int = SCAN_NAMESPACES
    scan_seconds: float = 20.0


@dataclass
class ScanWindow:
    """The scanning window of a round: what the scanning process logged around it."""

    #: Seconds (monotonic) at which each "background scan: N objects" line was seen, and N.
    scans: list[tuple[float, int]]
    window: tuple[float, float]
    #: Share of the window inside a scan, taking each scan to start SCAN_INTERVAL after the
    #: last one ended (a lower bound if the next starts sooner).
    coverage: float
    #: The same share for the floor's window, right after, during the same scans.
    floor_coverage: float

    @property
    def durations(self) -> list[float]:
        """Seconds each scan after the first took (end to end, less the interval)."""
        ends = [at for at, _ in self.scans]
        return [after - before - SCAN_INTERVAL for before, after in itertools.pairwise(ends)]


@dataclass
class Round:
    attacks: list[loadgen.Attack] = field(default_factory=list)
    ready_seconds: float = 0.0
    ready_rss: dict[str, float] = field(default_factory=dict)
    pod_create: dict[str, tuple[float, float]] = field(default_factory=dict)
    scan: ScanWindow | None = None
    #: The same, with the control plane on a core of its own (`split_cores`).
    split_scan: ScanWindow | None = None

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
    plane: ControlPlane,
    certs: Certificates,
    workdir: Path,
    extra: Sequence[str],
    log_name: str = "imagegate.log",
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
        workdir / log_name,
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


def create_cluster_policy(api: client.ApiClient, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).create_cluster_custom_object(
        "imagegate.dev",
        "v1alpha1",
        "clusterimagepolicies",
        {
            "apiVersion": "imagegate.dev/v1alpha1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": name},
            "spec": spec,
        },
    )


def prepare_cluster(api: client.ApiClient, *, policy_reports: bool) -> None:
    """imagegate's CRDs (and PolicyReport's), one ClusterImagePolicy trusting every image,
    namespace `shop`."""
    local.install_crds(
        api, extra=[yaml.safe_load(POLICY_REPORT_CRD.read_text())] if policy_reports else []
    )
    create_cluster_policy(api, "everything", {"sources": [{"name": "all", "images": ["**"]}]})
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


# -- signed images ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedBed:
    """The test bed's OCI registry, its tools, and the cosign key pair signing the images."""

    registry: str
    crane: Path
    cosign: Path
    key: Path
    public_key: str
    workdir: Path

    @property
    def glob(self) -> str:
        return f"{self.registry}/{SIGNED_REPOSITORY}/**"

    def push(self, repository: str, tag: str, *, sign: bool) -> str:
        """Push a fresh image to `SIGNED_REPOSITORY/repository:tag`; its reference by digest."""
        name = f"{SIGNED_REPOSITORY}/{repository}"
        digest = images.push_random_image(self.crane, self.registry, name, tag, self.workdir)
        pinned = f"{self.registry}/{name}@{digest}"
        if sign:
            # The legacy `.sig` tag: policy-controller v0.13.1 (cosign v2) reads it with a key.
            images.cosign_sign(self.cosign, self.key, pinned, bundle=False)
        return pinned


@contextlib.contextmanager
def signed_bed(builder: build.Builder, workdir: Path) -> Iterator[SignedBed]:
    directory = workdir / "signed"
    directory.mkdir()
    registry = LocalRegistry(builder.ensure(build.REGISTRY), directory)
    registry.start()
    try:
        cosign = builder.ensure(build.COSIGN)
        prefix = images.cosign_key_pair(cosign, directory, "bench")
        yield SignedBed(
            registry.address,
            builder.ensure(build.CRANE),
            cosign,
            prefix.with_suffix(".key"),
            prefix.with_suffix(".pub").read_text(),
            directory,
        )
    finally:
        registry.stop()


def require_key_policy(api: client.ApiClient, bed: SignedBed) -> None:
    """imagegate's ClusterImagePolicy for the registry's images: signed by the bench key.

    imagegate applies every policy selecting a namespace to each image (policy-controller only
    the ones whose glob matches, so its policy needs no selector): this one selects namespace
    SIGNED_NAMESPACE only, so the static reviews in `shop` keep their one policy."""
    selector = {"imagegate.dev/bench": "signed"}
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=SIGNED_NAMESPACE, labels=selector))
    )
    create_cluster_policy(
        api,
        "signed",
        {
            "namespaceSelector": {"matchLabels": selector},
            "sources": [
                {
                    "name": "bench",
                    "images": [bed.glob],
                    "signatures": {
                        "keys": [{"publicKey": bed.public_key}],
                        "requireTransparencyLog": False,
                    },
                }
            ],
        },
    )


def signed_pod(bed: SignedBed, tag: str, *, unsigned: str = "") -> dict[str, object]:
    """peer.py's Pod shape with images pushed and signed now; `unsigned`: that container's
    image is pushed but not signed."""
    image = {name: bed.push(repo, tag, sign=name != unsigned) for name, repo in SIGNED_CONTAINERS}
    first, *rest = SIGNED_CONTAINERS
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "signed", "namespace": SIGNED_NAMESPACE},
        "spec": {
            "initContainers": [{"name": first[0], "image": image[first[0]]}],
            "containers": [{"name": name, "image": image[name]} for name, _ in rest],
        },
    }


def require_admitted(attack: loadgen.Attack) -> loadgen.Attack:
    if attack.admitted == 0:
        raise RuntimeError(
            f"{attack.side} admitted none of {attack.sent} reviews ({attack.errors}): "
            "is it serving the policy?"
        )
    return attack


def require_denied(vegeta: loadgen.Vegeta, side: loadgen.Side) -> None:
    """`side` (sent a Pod with an unsigned image) answers, and denies: the key is checked."""
    attack = vegeta.attack(side, "unsigned", rate=1, seconds=1, settle=False)
    if attack.admitted or not all(e.startswith("HTTP 200") for e in attack.errors):
        raise RuntimeError(
            f"{side.name} did not deny an unsigned image: {attack.admitted} of {attack.sent} "
            f"admitted ({attack.errors})"
        )
    say(f"{side.name:18} denies the Pod with an unsigned image")


def measure_signed(bench: Bench, sides: Sequence[loadgen.Side], number: int, record: Round) -> None:
    """Each side with signed Pods whose images it has never seen: the round's first (`first`),
    a second one (`cold`: a verdict computed afresh, the process warm), then warm-up, paced and
    saturation with that second Pod; then a Pod with one unsigned image, which each must deny."""
    vegeta, options, bed = bench.vegeta, bench.options, bench.signed
    assert bed is not None

    def review(name: str, tag: str, unsigned: str = "") -> Path:
        pod = signed_pod(bed, tag, unsigned=unsigned)
        return vegeta.write_body(f"{name}-{number}", review_body(0, pod, SIGNED_NAMESPACE))

    first, body = review("first", f"f{number}"), review("signed", f"r{number}")
    unsigned = review("unsigned", f"u{number}", unsigned="web")
    signed = [dataclasses.replace(s, name=f"{s.name} signed", body=body) for s in sides]

    def each(mode: str, rate: int, seconds: float, workers: int = 0) -> None:
        for side in signed:
            attack = vegeta.attack(side, mode, rate=rate, seconds=seconds, workers=workers)
            record.attacks.append(require_admitted(attack))
            say(describe(attack))

    for static, side in zip(sides, signed, strict=True):
        vegeta.settle(static)  # policy-controller may still work off the paced run's backlog
        for mode, sent in (("first", first), ("cold", body)):
            one = dataclasses.replace(side, body=sent)
            record.attacks.append(
                require_admitted(vegeta.attack(one, mode, rate=1, seconds=1, settle=False))
            )
            say(describe(record.attacks[-1]))
    each("warm-up", SIGNED_RATE, SIGNED_WARM_UP_SECONDS)
    each("paced", SIGNED_RATE, options.signed_seconds)
    each("saturation", 0, options.saturation_seconds, workers=SATURATION_WORKERS)
    for side in signed:
        require_denied(vegeta, dataclasses.replace(side, body=unsigned))


# -- admission during a background scan ---------------------------------------------------------


def create_scan_workloads(api: client.ApiClient, count: int, namespaces: int) -> None:
    """`count` workloads with peer.py's Pod spec in `namespaces` namespaces, half Pods, half
    Deployments: stored, never run (the test bed has no kubelet nor controller manager)."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    names = [f"scan-{n:02d}" for n in range(namespaces)]
    for name in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    spec = peer.POD["spec"]

    # Plain dicts as bodies (the client serializes them as they are), not client models.
    def create(n: int) -> None:
        namespace = names[n % namespaces]
        if n % 2:
            pod: Any = {"metadata": {"name": f"pod-{n}"}, "spec": spec}
            core.create_namespaced_pod(namespace, pod)
            return
        labels = {"app": f"app-{n}"}
        template = {"metadata": {"labels": labels}, "spec": spec}
        deployment: Any = {
            "metadata": {"name": f"deploy-{n}"},
            "spec": {"selector": {"matchLabels": labels}, "template": template},
        }
        apps.create_namespaced_deployment(namespace, deployment)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))


class ScanLog:
    """Watches a log for "background scan: N objects" lines, noting when each appeared."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.scans: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> ScanLog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _follow(self) -> None:
        offset, partial = 0, ""
        while not self._stop.wait(0.05):
            with contextlib.suppress(FileNotFoundError), self.path.open() as log:
                log.seek(offset)
                text = partial + log.read()
                offset = log.tell()
            *lines, partial = text.split("\n")
            for line in lines:
                if match := SCAN_LINE.search(line):
                    self.scans.append((time.monotonic(), int(match[1])))

    def wait_for(self, count: int, what: str) -> None:
        deadline = time.monotonic() + SCAN_TIMEOUT
        while len(self.scans) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {SCAN_TIMEOUT:.0f} s ({self.path})")
            time.sleep(0.1)


def scan_coverage(ends: Sequence[float], start: float, end: float) -> float:
    """Share of [start, end] inside a scan, scan k running from ends[k-1] + SCAN_INTERVAL to
    ends[k]."""
    covered = sum(
        max(0.0, min(after, end) - max(before + SCAN_INTERVAL, start))
        for before, after in itertools.pairwise(ends)
    )
    return covered / (end - start) if end > start else 0.0


def measure_scan(
    bench: Bench,
    idle: loadgen.Side,
    number: int,
    record: Round,
    floor: loadgen.Side,
    modes: tuple[str, str] = ("scan-idle", "scan"),
) -> ScanWindow:
    """p99 at SCAN_RATE on the round's imagegate, then on an `imagegate run` scanning; and the
    floor's, idle and during the same scans, which tells this machine's contention (the scan
    process, the API server serving its lists, etcd) from what imagegate adds to it. The
    attacks are recorded under `modes` (idle, scanning); the scanning window is returned."""
    vegeta, options, certs, workdir = bench.vegeta, bench.options, bench.certs, bench.workdir
    idle_mode, scan_mode = modes
    for side in (idle, floor):
        record.attacks.append(
            vegeta.attack(side, idle_mode, rate=SCAN_RATE, seconds=options.scan_seconds)
        )
        say(describe(record.attacks[-1]))
    log_name = f"imagegate-{scan_mode}-{number}.log"
    scanning_args = [
        *bench.imagegate_args,
        "--policy-reports",
        "--scan-interval",
        str(SCAN_INTERVAL),
    ]
    with (
        imagegate_process(bench.plane, certs, workdir, scanning_args, log_name) as (
            process,
            port,
            _,
        ),
        ScanLog(workdir / log_name) as log,
    ):
        assert process.pid is not None
        side = loadgen.Side(
            "imagegate scanning", f"https://127.0.0.1:{port}/validate", certs.ca, process.pid
        )
        after_ready(vegeta, side, fresh=True)  # warm-up, while the first scan runs
        log.wait_for(1, "first scan")
        windows = []
        for attacked in (side, floor):
            start = time.monotonic()
            attack = vegeta.attack(
                attacked, scan_mode, rate=SCAN_RATE, seconds=options.scan_seconds, settle=False
            )
            windows.append((start, time.monotonic()))
            record.attacks.append(attack)
            say(describe(attack))
        end = windows[1][1]
        log.wait_for(sum(1 for at, _ in log.scans if at < end) + 1, "scan after the window")
        ends = [at for at, _ in log.scans]
        window = ScanWindow(
            list(log.scans),
            windows[0],
            scan_coverage(ends, *windows[0]),
            scan_coverage(ends, *windows[1]),
        )
    say(
        f"scans of {window.scans[-1][1]} objects, "
        + ", ".join(f"{d:.1f}" for d in window.durations)
        + f" s; {100 * window.coverage:.0f} % of imagegate's window in a scan"
    )
    return window


@contextlib.contextmanager
def split_cores(plane: ControlPlane, webhooks: Sequence[int]) -> Iterator[None]:
    """kube-apiserver and etcd on CLUSTER_CPU; the `webhooks` processes, and whatever this
    thread starts meanwhile (vegeta, a scanning imagegate), on WEBHOOK_CPU. As in a cluster,
    where the API server runs on other nodes than the webhook's pod: what is left is what a
    scan process costs the serving one on the core they share. Both cores again after."""
    everything = os.sched_getaffinity(0)
    if len(everything) < 2:
        raise RuntimeError("splitting the cores takes two")
    try:
        for pid in plane.pids():
            pin_tree(pid, {CLUSTER_CPU})
        for pid in webhooks:
            pin_tree(pid, {WEBHOOK_CPU})
        os.sched_setaffinity(0, {WEBHOOK_CPU})
        yield
    finally:
        os.sched_setaffinity(0, everything)
        for pid in (*plane.pids(), *webhooks):
            pin_tree(pid, everything)


@dataclass(frozen=True)
class Bench:
    """What every round shares."""

    vegeta: loadgen.Vegeta
    plane: ControlPlane
    certs: Certificates
    workdir: Path
    options: Options
    peer_side: loadgen.Side | None
    signed: SignedBed | None

    @property
    def imagegate_args(self) -> list[str]:
        registry = ["--insecure-registry", self.signed.registry] if self.signed else []
        return [*self.options.imagegate_args, *registry]


def run_round(bench: Bench, number: int) -> Round:
    record = Round()
    options, certs, plane = bench.options, bench.certs, bench.plane
    with (
        imagegate_process(plane, certs, bench.workdir, bench.imagegate_args) as (ours, port, ready),
        floor_process(certs, bench.workdir) as (floor, floor_port),
    ):
        assert ours.pid is not None
        assert floor.pid is not None
        record.ready_seconds = ready
        record.ready_rss = {"imagegate": loadgen.rss_mib(ours.pid)}
        record.ready_rss["floor"] = loadgen.rss_mib(floor.pid)
        if bench.peer_side is not None:
            record.ready_rss["policy-controller"] = loadgen.rss_mib(bench.peer_side.pid)
        say(f"imagegate ready in {ready:.2f} s; RSS at ready {record.ready_rss}")
        sides = [
            loadgen.Side("imagegate", f"https://127.0.0.1:{port}/validate", certs.ca, ours.pid),
            loadgen.Side("floor", f"https://127.0.0.1:{floor_port}/validate", certs.ca, floor.pid),
        ]
        if bench.peer_side is not None:
            sides.append(bench.peer_side)
        measure_round(bench.vegeta, sides, options, record)
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
        if bench.signed is not None:
            signed_sides = [sides[0], *([bench.peer_side] if bench.peer_side else [])]
            with phase("signed"):
                measure_signed(bench, signed_sides, number, record)
        if options.scan:
            with phase("scan"):
                record.scan = measure_scan(bench, sides[0], number, record, sides[1])
            with (
                phase("scan, the control plane on a core of its own"),
                split_cores(plane, [sides[0].pid, sides[1].pid]),
            ):
                record.split_scan = measure_scan(
                    bench, sides[0], number, record, sides[1], ("split-idle", "split")
                )
    return record


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """A phase that fails (a side admits nothing, a scan never ends) costs its own figures
    only: the round's other measurements are kept."""
    try:
        yield
    except (RuntimeError, StartError, subprocess.CalledProcessError) as error:
        say(f"{name} phase stopped: {error}")


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


def compile_as_the_image_does() -> None:
    """Every module compiled once, before any side starts, as the image ships them.

    The Dockerfile compiles (UV_COMPILE_BYTECODE=1), where a dev venv that `uv sync` made under
    PYTHONDONTWRITEBYTECODE=1 has no bytecode: each start would compile ~570 modules from
    source (1.8-2.0 s of CPU, bench/startup.py `--bytecode as-is`), which no pod pays. The
    venv's packages and imagegate's are compiled in place (`__pycache__`, ignored by git); the
    interpreter's own standard library ships compiled.
    """
    import sysconfig

    import imagegate

    started = time.monotonic()
    packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    ours = (str(Path(imagegate.__file__).parent), str(HERE))
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", *sorted(packages), *ours],
        check=False,  # a file that does not compile (a test fixture) is not a bench failure
        stdout=subprocess.DEVNULL,
    )
    say(f"modules compiled, as the image has them ({time.monotonic() - started:.0f} s)")


def run(options: Options) -> list[Round]:
    builder = build.Builder()
    vegeta_binary = builder.ensure(build.VEGETA)
    if options.peer:
        started = time.monotonic()
        builder.ensure(build.POLICY_CONTROLLER)
        say(f"policy-controller ready to run ({time.monotonic() - started:.0f} s to build/find)")
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imagegate-bench-")))
        certs = certificates(workdir)
        vegeta = loadgen.Vegeta(vegeta_binary, workdir, review_body(0, peer.POD))
        compile_as_the_image_does()
        plane = ControlPlane(ControlPlaneBinaries.resolve(builder), workdir / "plane")
        plane.start()
        stack.callback(plane.stop)
        api = kube.api_client(plane.kubeconfig)
        prepare_cluster(api, policy_reports=options.scan)
        peer_run = start_peer(builder, plane, workdir) if options.peer else None
        if peer_run is not None:
            stack.callback(peer_run.process.stop)
        bed = stack.enter_context(signed_bed(builder, workdir)) if options.signed else None
        if bed is not None:
            require_key_policy(api, bed)
            if options.peer:
                peer.apply_key_policy(builder, plane, workdir, bed.glob, bed.public_key)
        if options.scan:
            started = time.monotonic()
            create_scan_workloads(api, options.scan_workloads, options.scan_namespaces)
            say(
                f"created {options.scan_workloads} workloads in {options.scan_namespaces} "
                f"namespaces in {time.monotonic() - started:.0f} s"
            )
        bench = Bench(
            vegeta, plane, certs, workdir, options, peer_run.side if peer_run else None, bed
        )
        return run_rounds(bench)
    raise AssertionError("unreachable")  # ExitStack does not swallow exceptions


def run_rounds(bench: Bench) -> list[Round]:
    rounds: list[Round] = []
    for number in range(1, bench.options.rounds + 1):
        say(f"-- round {number} of {bench.options.rounds}")
        try:
            rounds.append(run_round(bench, number))
        except (RuntimeError, subprocess.CalledProcessError) as error:
            # Keep the rounds already measured: the report says how many ran.
            say(f"round {number} stopped: {error}")
            break
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
    parser.add_argument(
        "--no-signed", dest="signed", action="store_false", help="skip the signed-image phase"
    )
    parser.add_argument("--signed-seconds", type=float, default=10.0, help="signed paced run")
    parser.add_argument(
        "--no-scan", dest="scan", action="store_false", help="skip the background-scan phase"
    )
    parser.add_argument("--scan-workloads", type=int, default=SCAN_WORKLOADS)
    parser.add_argument("--scan-namespaces", type=int, default=SCAN_NAMESPACES)
    parser.add_argument("--scan-seconds", type=float, default=20.0, help="each scan window")
    parser.add_argument("--quick", action="store_true", help="1 round, short windows (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.paced_seconds, args.sweep_seconds = 1, 5.0, 2.0
        args.saturation_seconds, args.pod_creates = 3.0, min(args.pod_creates, 50)
        args.signed_seconds, args.scan_seconds = 4.0, 5.0
        args.scan_workloads = min(args.scan_workloads, 500)
    return Options(
        rounds=args.rounds,
        paced_seconds=args.paced_seconds,
        sweep_seconds=args.sweep_seconds,
        saturation_seconds=args.saturation_seconds,
        peer=args.peer,
        pod_creates=args.pod_creates,
        imagegate_args=shlex.split(args.imagegate_args),
        signed=args.signed,
        signed_seconds=args.signed_seconds,
        scan=args.scan,
        scan_workloads=args.scan_workloads,
        scan_namespaces=args.scan_namespaces,
        scan_seconds=args.scan_seconds,
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
