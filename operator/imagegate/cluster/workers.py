"""Several serving processes per pod (`imagegate run --workers N`, docs/design.md §13).

One event loop saturates one core. With N > 1 the operator process (the parent) keeps kopf, the
policy and namespace watches, certificates, policy status and the scan, and starts N worker
processes that only serve the webhook port (/validate, /mutate, /validate-policy). Every worker
binds the same port with `SO_REUSEPORT`, so the kernel spreads connections over them.

The parent compiles each policy once and sends the compiled policy (it pickles: patterns are
Python `re` objects) and every namespace's labels down each worker's pipe; a worker never
compiles or watches. A worker has its own Kubernetes client for what it reads on demand (keys,
trust roots, pull secrets, a namespace not seen yet), cached as in a single process. Verdicts are
not shared: a digest is verified at most once per worker (N is bounded by the CPUs), see §13.

A worker that exits is started again (logged, `imagegate_worker_restarts_total`); a worker whose
parent is gone stops (its pipe closes). Counts of admissions and policy decisions are sent up
once a second, so the parent's `/metrics` counts every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from imagegate.admission import decisions, server
from imagegate.admission import policies as policyreview
from imagegate.admission import records as audit
from imagegate.admission import reviewers as webhook
from imagegate.cluster import credentials, kube, policies, status
from imagegate.policy import engine
from imagegate.registry import client as oci
from imagegate.registry import pinning
from imagegate.signatures import verifier
from imagegate.signatures.cache import VerdictCache
from imagegate.signatures.material import KubernetesMaterial
from imagegate.trail import events, logs, metrics

logger = logging.getLogger(__name__)

#: The response header naming the worker that answered (tests, and finding a worker's log).
WORKER_HEADER = "X-Imagegate-Worker"
#: Seconds between a worker's exit and its restart (a worker that cannot start does not spin).
RESTART_BACKOFF = 1.0
#: Seconds a worker may take to start serving (importing and binding take 1-3 s on 2 cores).
START_TIMEOUT = 60.0
#: Seconds between a worker's count reports to the parent.
COUNT_INTERVAL = 1.0
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_limit(cpu_max: Path = CPU_MAX) -> int:
    """`--workers auto`: the cgroup's CPU quota rounded up, at most the CPUs this process has."""
    usable = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return usable
    if quota == "max":
        return usable
    return max(1, min(usable, math.ceil(int(quota) / int(period))))


def parse_workers(value: str) -> int:
    """The `--workers` value: a count of at least 1, or `auto`."""
    if value == "auto":
        return cpu_limit()
    count = int(value)
    if count < 1:
        raise ValueError("--workers must be at least 1 (or auto)")
    return count


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker builds its webhooks from (pickled to it: plain values only)."""

    kubeconfig: Path | None
    tls: server.TLSFiles
    host: str
    port: int
    deadline: float
    mutate_budget: float | None
    stale_digest_ttl: float
    log_admits: decisions.AdmitLogging
    namespace: str
    insecure_registries: frozenset[str]
    events: bool
    material_ttl: float
    material_stale_for: float
    log_format: str = "text"


@dataclass(frozen=True)
class Snapshot:
    """The parent's policies and namespace labels when a worker starts."""

    policies: list[tuple[policies.PolicyKey, engine.CompiledPolicy]]
    namespaces: dict[str, dict[str, str]]


# --- the parent side -------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    pipe: Connection
    serving: asyncio.Event


class WorkerPool:
    """The parent's N serving processes: started, fed, restarted, drained and stopped."""

    def __init__(
        self,
        settings: WorkerSettings,
        count: int,
        cache: policies.PolicyCache,
        parent_metrics: metrics.Metrics,
    ) -> None:
        self.settings = settings
        self.count = count
        self.cache = cache
        self.metrics = parent_metrics
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._context = multiprocessing.get_context("spawn")  # never fork kopf's threads
        #: Workers started again after exiting (tests; also `imagegate_worker_restarts_total`).
        self.restarts = 0
        cache.observers.append(self._publish)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers.values() if w.process.pid is not None]

    @property
    def ready(self) -> bool:
        """At least one worker serves (with `SO_REUSEPORT` the others' sockets are closed)."""
        return not self._stopping and any(w.serving.is_set() for w in self._workers.values())

    async def start(self) -> None:
        """Start every worker and wait until each serves (start-up fails if one cannot)."""
        for index in range(self.count):
            self._spawn(index)
        async with asyncio.timeout(START_TIMEOUT):
            # By index: a worker that died starting is replaced by a new one to wait for.
            while not all(worker.serving.is_set() for worker in self._workers.values()):
                await asyncio.sleep(0.05)
        logger.info("%d webhook workers serving on port %d", self.count, self.settings.port)

    def _spawn(self, index: int) -> None:
        parent_end, child_end = self._context.Pipe()
        # Everything the parent knows now goes with the process (it serves only once it has
        # applied it); later changes follow down the pipe, in order, through `_publish`.
        snapshot = Snapshot(self.cache.items(), self.cache.namespaces())
        process = self._context.Process(
            target=worker_main,
            args=(self.settings, index, child_end, snapshot),
            name=f"imagegate-worker-{index}",
            daemon=True,
        )
        process.start()
        child_end.close()
        worker = _Worker(index, process, parent_end, asyncio.Event())
        self._workers[index] = worker
        loop = asyncio.get_running_loop()
        loop.add_reader(parent_end.fileno(), self._receive, worker)
        loop.add_reader(process.sentinel, self._exited, worker)

    def _publish(self, message: tuple[str, Any, Any] | tuple[str]) -> None:
        for worker in self._workers.values():
            self._send(worker, message)

    def _send(self, worker: _Worker, message: tuple[str, Any, Any] | tuple[str]) -> None:
        try:
            worker.pipe.send(message)
        except OSError as error:  # it is exiting: `_exited` restarts it with a full snapshot
            logger.warning("cannot reach webhook worker %d: %s", worker.index, error)

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.pipe.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(worker.pipe.fileno())
            return
        kind = message[0]
        if kind == "serving":
            worker.serving.set()
            logger.info("webhook worker %d (pid %s) serving", worker.index, worker.process.pid)
        elif kind == "counts":
            self._add_counts(message[1], message[2])

    def _add_counts(
        self, admissions: Mapping[tuple[str, str], int], decided: Mapping[tuple[str, str], int]
    ) -> None:
        for (name, outcome), count in admissions.items():
            self.metrics.admissions.labels(name, outcome).inc(count)
        for (policy, action), count in decided.items():
            self.metrics.policy_decisions.labels(policy, action).inc(count)

    def _exited(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.process.sentinel)
        worker.process.join(timeout=1.0)  # reaped, so its exit code is known
        if not worker.pipe.closed:
            loop.remove_reader(worker.pipe.fileno())
            worker.pipe.close()
        worker.serving.clear()
        if self._stopping:
            return
        logger.error(
            "webhook worker %d (pid %s) exited with %s; starting it again in %.0fs",
            worker.index,
            worker.process.pid,
            worker.process.exitcode,
            RESTART_BACKOFF,
        )
        self.restarts += 1
        self.metrics.worker_restart()
        loop.call_later(RESTART_BACKOFF, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        if not self._stopping:
            self._spawn(index)

    def drain(self) -> None:
        """Every worker's responses close their connections from now on (SIGTERM, first step)."""
        self._publish(("drain",))

    async def stop(self, timeout: float) -> None:
        """Each worker stops accepting, answers what is in flight, and exits; stragglers are
        killed after `timeout` seconds."""
        self._stopping = True
        if self._publish in self.cache.observers:
            self.cache.observers.remove(self._publish)
        self._publish(("stop",))
        deadline = time.monotonic() + timeout  # they stop together: one wait for all
        for worker in list(self._workers.values()):
            left = max(0.0, deadline - time.monotonic())
            await asyncio.to_thread(worker.process.join, left)
            if worker.process.exitcode is None:
                logger.error("webhook worker %d did not stop in %.0fs", worker.index, timeout)
                worker.process.kill()
        self._workers.clear()


# --- the worker side -------------------------------------------------------------------------


class _Counts:
    """Admissions and policy decisions counted here, sent to the parent's `Metrics`."""

    def __init__(self) -> None:
        self.admissions: Counter[tuple[str, str]] = Counter()
        self.decisions: Counter[tuple[str, str]] = Counter()

    def record(self, entry: audit.AuditEntry) -> None:  # an `audit.AuditRecorder`
        if not entry.dry_run:
            self.decisions[entry.policy.display_name, entry.action.value] += 1

    def admission(self, name: str, response: Any) -> None:
        self.admissions[name, server.outcome(response)] += 1

    def take(self) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        taken = dict(self.admissions), dict(self.decisions)
        self.admissions.clear()
        self.decisions.clear()
        return taken


def worker_main(settings: WorkerSettings, index: int, pipe: Connection, snapshot: Snapshot) -> None:
    """A worker process: serve the webhooks until the parent says stop (or is gone)."""
    logs.configure(settings.log_format)
    # Ctrl-C and a group's SIGTERM reach workers too: the parent drains them first (/readyz
    # fails, they go on serving), then tells them to stop. Alone, a worker stops when the pipe
    # closes (the parent is gone) or at SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncio.run(_serve(settings, index, pipe, snapshot))


async def _serve(
    settings: WorkerSettings, index: int, pipe: Connection, snapshot: Snapshot
) -> None:
    api = kube.api_client(settings.kubeconfig)
    cache = policies.PolicyCache(api)
    for key, compiled in snapshot.policies:
        cache.set_policy(key, compiled)
    for name, labels in snapshot.namespaces.items():
        cache.set_namespace(name, labels)
    counts = _Counts()
    background: list[asyncio.Task[None]] = []
    flushers: list[Callable[[], Awaitable[None]]] = []
    async with aiohttp.ClientSession() as session:
        app = _build_app(settings, api, cache, session, counts, background, flushers, index)
        app.on_response_prepare.append(_name_worker(f"{index}/{os.getpid()}"))
        webhook_server = server.WebhookServer(
            app,
            settings.tls,
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.deadline + 1.0,
            reuse_port=True,
        )
        await webhook_server.start()
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(pipe.fileno(), _on_message, pipe, cache, webhook_server, stopped)
        background.append(asyncio.create_task(_report_counts(pipe, counts)))
        pipe.send(("serving", os.getpid()))
        gc.freeze()  # start-up's objects out of the collector's passes, as in operator.py
        await stopped.wait()
        loop.remove_reader(pipe.fileno())
        await webhook_server.stop()  # answers what is in flight
        for task in background:
            task.cancel()
        for flush in flushers:  # the last denial counts and Events
            try:
                await asyncio.wait_for(flush(), timeout=5)
            except Exception as error:  # stopping: say so, and go on
                logger.warning("final flush failed: %s", error)
        if not pipe.closed:
            _send_counts(pipe, counts)


def _on_message(
    pipe: Connection,
    cache: policies.PolicyCache,
    webhook_server: server.WebhookServer,
    stopped: asyncio.Event,
) -> None:
    try:
        message = pipe.recv()
    except (EOFError, OSError):  # the parent is gone: nobody feeds policies any more
        logger.error("the operator process is gone; this webhook worker stops")
        pipe.close()
        stopped.set()
        return
    kind = message[0]
    if kind == "policy":
        cache.set_policy(message[1], message[2])
    elif kind == "namespace":
        cache.set_namespace(message[1], message[2])
    elif kind == "drain":
        webhook_server.drain()
    elif kind == "stop":
        stopped.set()


async def _report_counts(pipe: Connection, counts: _Counts) -> None:
    while True:
        await asyncio.sleep(COUNT_INTERVAL)
        _send_counts(pipe, counts)


def _send_counts(pipe: Connection, counts: _Counts) -> None:
    admissions, decided = counts.take()
    if admissions or decided:
        with contextlib.suppress(OSError):  # the parent is gone: `_on_message` stops this worker
            pipe.send(("counts", admissions, decided))


def _name_worker(name: str) -> Any:
    async def prepare(_: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = name

    return prepare


def _build_app(
    settings: WorkerSettings,
    api: Any,
    cache: policies.PolicyCache,
    session: aiohttp.ClientSession,
    counts: _Counts,
    background: list[asyncio.Task[None]],
    flushers: list[Callable[[], Awaitable[None]]],
    index: int,
) -> web.Application:
    """The webhooks as operator.py builds them, with this worker's own clients and caches."""
    registry_client = oci.RegistryClient(session, insecure=settings.insecure_registries)
    material = KubernetesMaterial(
        api, ttl=settings.material_ttl, stale_for=settings.material_stale_for
    )
    keychains = credentials.ClusterKeychains(material, settings.namespace)
    verdicts = VerdictCache(stale_ttl=settings.stale_digest_ttl)
    resolver = pinning.CachingResolver(registry_client, stale_ttl=settings.stale_digest_ttl)
    decision_log = decisions.DecisionLog(settings.log_admits)
    # Denial counts add to what the status holds (conflicts retried), as replicas' do.
    counter = status.DenialCounter(api)
    recorders: list[audit.AuditRecorder] = [counter, counts]
    background += [
        asyncio.create_task(decision_log.run()),
        asyncio.create_task(counter.run()),
    ]
    flushers.append(counter.flush)
    if settings.events:
        # Per worker: Event names hash the instance, and two workers must not write the same one.
        pod = os.environ.get("POD_NAME") or os.uname().nodename
        event_recorder = events.EventRecorder(api, instance=f"{pod}-worker-{index}")
        recorders.append(event_recorder)
        background.append(asyncio.create_task(event_recorder.run()))
        flushers.append(event_recorder.flush)
    signatures = verifier.CosignVerifier(
        registry_client,
        verdicts,
        secrets=material,
        own_namespace=settings.namespace,
        resolver=resolver,
    )
    return server.build_app(
        validate=webhook.Validator(
            cache, signatures, recorders=recorders, keychains=keychains, decisions=decision_log
        ),
        mutate=webhook.Mutator(
            cache,
            resolver,
            keychains,
            recorders,
            budget=settings.mutate_budget,
            decisions=decision_log,
        ),
        validate_policy=policyreview.PolicyReviewer(),
        deadline=settings.deadline,
        observe=counts.admission,
    )
