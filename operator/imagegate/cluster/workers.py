"""Several serving processes per pod (`imagegate run --workers N`, docs/design.md §13).

One event loop saturates one core. With N > 1 the operator process (the parent) keeps kopf, the
policy and namespace watches, certificates, policy status and the scan, and starts N worker
processes that only serve the webhook port (/validate, /mutate, /validate-policy). Every worker
binds the same port with `SO_REUSEPORT`, so the kernel spreads connections over them.

The parent compiles each policy once and sends the compiled policy (it pickles: patterns are
Python `re` objects) and every namespace's labels down each worker's pipe; a worker never
compiles or watches. A worker has its own Kubernetes client for what it reads on demand (keys,
trust roots, pull secrets, a namespace not seen yet), cached as in a single process. A verdict
one worker verifies goes up its pipe and down the others' (`cache.SharedVerdict`), so a digest is
verified once, not once per worker (two workers asked at the same moment may both verify).

A worker that exits is started again (logged, `imagegate_worker_restarts_total`); a worker whose
parent is gone stops (its pipe closes). Counts of admissions and policy decisions are sent up
once a second, with a heartbeat: a worker silent for `silence_timeout` is killed (and so started
again), as is one that does not read what it is sent. The parent never blocks on a pipe: each
worker's messages are written by a thread of its own from a bounded outbox.
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
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
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
from imagegate.signatures.cache import SharedVerdict, UnsharableVerdict, VerdictCache
from imagegate.signatures.material import KubernetesMaterial
from imagegate.trail import events, logs, metrics

logger = logging.getLogger(__name__)

#: The response header naming the worker that answered (tests, and finding a worker's log).
WORKER_HEADER = "X-Imagegate-Worker"
#: Seconds between a worker's exit and its restart (a worker that cannot start does not spin).
RESTART_BACKOFF = 1.0
#: Seconds a worker may take to start serving (importing and binding take 1-3 s on 2 cores).
START_TIMEOUT = 60.0
#: Seconds between a worker's count reports (and heartbeats) to the parent.
COUNT_INTERVAL = 1.0
#: Seconds a serving worker may be silent (no heartbeat) before the parent kills it. Far above
#: the interval: a worker's loop stalls for a GC pass or a busy machine, not for 15 s.
SILENCE_TIMEOUT = 15.0
#: Bytes the parent holds for a worker that does not read its pipe before it kills it. Large: a
#: starting worker reads nothing until it serves, and every namespace's labels may come meanwhile.
OUTBOX_LIMIT = 64 * 1024 * 1024
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


def restored_cache(snapshot: Snapshot, api: Any) -> policies.PolicyCache:
    """A child's policy cache, holding `snapshot` (the parent's feed then keeps it current):
    a worker's, or the scan process's."""
    cache = policies.PolicyCache(api)
    for key, compiled in snapshot.policies:
        cache.set_policy(key, compiled)
    for name, labels in snapshot.namespaces.items():
        cache.set_namespace(name, labels)
    return cache


# --- the parent side -------------------------------------------------------------------------


class _Outbox:
    """What the parent sends one worker, written to its pipe by a thread of its own: a full pipe
    (a worker that hangs or falls behind) blocks that thread, never the parent's loop. Bounded
    in bytes: `put` refuses past `limit`, and the parent kills the worker instead."""

    def __init__(self, pipe: Connection, limit: int, name: str) -> None:
        self._pipe = pipe
        self._limit = limit
        self._queued: deque[memoryview] = deque()
        self._bytes = 0
        self._closed = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._write, name=name, daemon=True)
        self._thread.start()

    def put(self, message: object) -> bool:
        """Queue `message`; False if the worker already has `limit` bytes it has not read."""
        # Pickled here, as `Connection.send` would: the thread sends bytes, never a live object.
        data = ForkingPickler.dumps(message)
        with self._ready:
            if self._bytes + len(data) > self._limit:
                return False
            self._queued.append(data)
            self._bytes += len(data)
            self._ready.notify()
        return True

    def close(self) -> None:
        """Stop after what is queued (or at once, when the pipe breaks)."""
        with self._ready:
            self._closed = True
            self._ready.notify()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _write(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: bool(self._queued) or self._closed)
                if not self._queued:
                    return
                data = self._queued[0]
            try:
                self._pipe.send_bytes(data)
            except (OSError, ValueError):  # the worker is gone (or the pipe closed): `_exited`
                return
            with self._ready:
                self._queued.popleft()
                self._bytes -= len(data)


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    pipe: Connection
    serving: asyncio.Event
    outbox: _Outbox
    #: When the parent last heard from it (monotonic), and why it was killed, if it was.
    heard: float = 0.0
    killed: str | None = None


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
        #: How long a serving worker may be silent, and how much it may leave unread.
        self.silence_timeout = float(
            os.environ.get("IMAGEGATE_WORKER_SILENCE_TIMEOUT", SILENCE_TIMEOUT)
        )
        self.outbox_limit = OUTBOX_LIMIT
        self._watchdog: asyncio.TimerHandle | None = None
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
        self._watch()
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
        outbox = _Outbox(parent_end, self.outbox_limit, f"imagegate-worker-{index}-outbox")
        worker = _Worker(index, process, parent_end, asyncio.Event(), outbox, time.monotonic())
        self._workers[index] = worker
        loop = asyncio.get_running_loop()
        loop.add_reader(parent_end.fileno(), self._receive, worker)
        loop.add_reader(process.sentinel, self._exited, worker)

    def _publish(self, message: tuple[str, Any, Any] | tuple[str]) -> None:
        for worker in self._workers.values():
            self._send(worker, message)

    def _send(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        # Never blocks: a dead worker's thread stops at the broken pipe (`_exited` restarts it
        # with a full snapshot), a worker that cannot keep up is killed (and so restarted).
        if worker.killed is None and not worker.outbox.put(message):
            self._kill(worker, "backlog", f"has {self.outbox_limit} bytes it has not read")

    def _kill(self, worker: _Worker, reason: str, why: str) -> None:
        logger.error(
            "webhook worker %d (pid %s) %s; killing it", worker.index, worker.process.pid, why
        )
        worker.killed = reason
        self.metrics.worker_killed(reason)
        worker.process.kill()  # `_exited` follows at its sentinel

    def _watch(self) -> None:
        """Kill each worker silent for longer than it may be (serving: `silence_timeout`)."""
        now = time.monotonic()
        for worker in self._workers.values():
            bound = self.silence_timeout if worker.serving.is_set() else START_TIMEOUT
            if worker.killed is None and now - worker.heard > bound:
                self._kill(worker, "silent", f"has not been heard from for {bound:.0f}s")
        if not self._stopping:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(COUNT_INTERVAL, self._watch)

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.pipe.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(worker.pipe.fileno())
            return
        worker.heard = time.monotonic()
        kind = message[0]
        if kind == "serving":
            worker.serving.set()
            logger.info("webhook worker %d (pid %s) serving", worker.index, worker.process.pid)
        elif kind == "counts":
            self._add_counts(message[1], message[2])
        elif kind == "verdict" and isinstance(message[1], SharedVerdict):
            self._share(worker, message[1])

    def _share(self, verifier: _Worker, shared: SharedVerdict) -> None:
        """A verdict `verifier` stored, to every other worker (each checks it as it inserts)."""
        for worker in self._workers.values():
            if worker is not verifier:
                self._send(worker, ("verdict", shared))
        self.metrics.verdict_shared()

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
        worker.outbox.close()
        worker.outbox.join(timeout=1.0)  # its peer is gone: a send in progress fails at once
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
        if self._watchdog is not None:
            self._watchdog.cancel()
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
            worker.outbox.close()
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
    cache = restored_cache(snapshot, api)
    counts = _Counts()
    background: list[asyncio.Task[None]] = []
    flushers: list[Callable[[], Awaitable[None]]] = []
    verdicts = VerdictCache(stale_ttl=settings.stale_digest_ttl)
    verdicts.on_stored = _share_verdicts(pipe)
    async with aiohttp.ClientSession() as session:
        app = _build_app(
            settings, api, cache, session, counts, background, flushers, index, verdicts
        )
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
        loop.add_reader(pipe.fileno(), _on_message, pipe, cache, webhook_server, stopped, verdicts)
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


def apply_to_cache(cache: policies.PolicyCache, message: tuple[Any, ...]) -> bool:
    """Apply a "policy" or "namespace" message from the parent to `cache`; whether it was one
    (workers and the scan process take the same feed)."""
    if message[0] == "policy":
        cache.set_policy(message[1], message[2])
    elif message[0] == "namespace":
        cache.set_namespace(message[1], message[2])
    else:
        return False
    return True


def _on_message(
    pipe: Connection,
    cache: policies.PolicyCache,
    webhook_server: server.WebhookServer,
    stopped: asyncio.Event,
    verdicts: VerdictCache | None = None,
) -> None:
    try:
        message = pipe.recv()
    except (EOFError, OSError):  # the parent is gone: nobody feeds policies any more
        logger.error("the operator process is gone; this webhook worker stops")
        pipe.close()
        stopped.set()
        return
    if apply_to_cache(cache, message):
        return
    kind = message[0]
    if kind == "verdict" and verdicts is not None:
        _take_verdict(verdicts, message[1])
    elif kind == "drain":
        webhook_server.drain()
    elif kind == "stop":
        stopped.set()


def _share_verdicts(pipe: Connection) -> Callable[[SharedVerdict], None]:
    """`VerdictCache.on_stored`: each verdict this worker verified, up to the parent."""

    def share(shared: SharedVerdict) -> None:
        try:
            pipe.send(("verdict", shared))
        except OSError:  # the parent is gone: `_on_message` stops this worker
            pass
        except Exception as error:  # a key that does not pickle: the others verify it themselves
            logger.warning("a signature verdict could not be shared: %s", error)

    return share


def _take_verdict(verdicts: VerdictCache, shared: object) -> None:
    """A verdict another worker verified, into this one's cache if it could have stored it."""
    try:
        verdicts.insert(shared)
    except UnsharableVerdict as error:
        logger.warning("a shared signature verdict was refused: %s", error)


async def _report_counts(pipe: Connection, counts: _Counts) -> None:
    """Counts once a second, and a heartbeat: from this loop, so a hung loop falls silent."""
    while True:
        await asyncio.sleep(COUNT_INTERVAL)
        _send_counts(pipe, counts)
        with contextlib.suppress(OSError):
            pipe.send(("tick",))


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
    verdicts: VerdictCache | None = None,
) -> web.Application:
    """The webhooks as operator.py builds them, with this worker's own clients and caches
    (`verdicts`: the verdict cache, shared with the other workers through the parent)."""
    registry_client = oci.RegistryClient(session, insecure=settings.insecure_registries)
    material = KubernetesMaterial(
        api, ttl=settings.material_ttl, stale_for=settings.material_stale_for
    )
    keychains = credentials.ClusterKeychains(material, settings.namespace)
    if verdicts is None:  # (an empty cache is falsy: not `or`)
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
