"""The background scan in a process of its own, beside the one that serves (design.md §14).

In one process the scan's CPU is admission's CPU: it judges thousands of objects on the event
loop that serves `/validate`, and its page parsing and report building in threads hold the GIL,
so a request arriving meanwhile waits (bench/scan.py measured p99 7-13x idle). So when the
operator serves the webhooks itself (`--workers 1`) it spawns one scan process, fed as workers.py
feeds its workers: the compiled policies and namespace labels as the start argument (a
`workers.Snapshot`), then every change down a pipe, and `("scan",)` when a policy changed. The
scan process runs `PolicyReportScanner` with its own clients and caches, at the lowest CPU
priority (`_yield_to_serving`), and reports each finished scan up the pipe. One that exits is
started again; one whose parent is gone stops (its pipe closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp

from imagegate.cluster import credentials, heap, kube, policies, workers
from imagegate.registry import client as oci
from imagegate.registry import mirrors, pinning
from imagegate.signatures import verifier
from imagegate.signatures.cache import VerdictCache
from imagegate.signatures.material import KubernetesMaterial
from imagegate.trail import logs, scan

logger = logging.getLogger(__name__)

#: Seconds between the scan process's exit and its restart (one that cannot start does not spin).
RESTART_BACKOFF = 1.0
#: Seconds the scan process gets to exit once its pipe is closed, before it is killed.
STOP_TIMEOUT = 2.0
#: Added to the scan process's nice value where SCHED_IDLE is refused: where the pod's CPU is
#: short, serving goes first.
NICE = 10

Message = tuple[Any, ...]


@dataclass(frozen=True)
class ScanSettings:
    """What the scan process builds its clients from (pickled to it: plain values only)."""

    kubeconfig: Path | None
    namespace: str
    interval: float
    insecure_registries: frozenset[str]
    registry_mirrors: mirrors.Mirrors
    stale_digest_ttl: float
    material_ttl: float
    material_stale_for: float
    heap_trim_interval: float = heap.TRIM_INTERVAL
    log_format: str = "text"
    #: The share of the time a scan works (scan.Pace).
    duty: float = scan.DUTY


@dataclass(frozen=True)
class Scanned:
    """One finished scan, as the scan process reports it."""

    pid: int
    objects: int
    seconds: float
    complete: bool


# --- the operator side -----------------------------------------------------------------------


class ScanProcess:
    """The scan process: started, fed the cache's changes, restarted, and stopped on cancel."""

    def __init__(
        self,
        settings: ScanSettings,
        cache: policies.PolicyCache,
        on_scanned: Callable[[Scanned], None] | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.on_scanned = on_scanned
        self._context = multiprocessing.get_context("spawn")  # never fork kopf's threads
        #: What goes down the current process's pipe, in order (sent from a thread: a full pipe
        #: must not block the serving loop).
        self._outbox: asyncio.Queue[Message] | None = None
        self.process: BaseProcess | None = None
        #: Scan processes started again after exiting (tests).
        self.restarts = 0

    def trigger(self) -> None:
        """A policy changed: the scan process scans again soon."""
        self._post(("scan",))

    async def run(self) -> None:
        """Keep one scan process running until cancelled; then stop it."""
        self.cache.observers.append(self._post)
        try:
            while True:
                exitcode = await self._run_one()
                self.restarts += 1
                logger.error(
                    "scan process exited with %s; starting it again in %.0fs",
                    exitcode,
                    RESTART_BACKOFF,
                )
                await asyncio.sleep(RESTART_BACKOFF)
        finally:
            self.cache.observers.remove(self._post)

    def _post(self, message: Message) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    async def _run_one(self) -> int | None:
        """Start a scan process with the cache as it is now, feed it, and wait for its exit."""
        parent_end, child_end = self._context.Pipe()
        # Everything known now goes with the process; later changes follow through the outbox.
        snapshot = workers.Snapshot(self.cache.items(), self.cache.namespaces())
        self._outbox = asyncio.Queue()
        process = self._context.Process(
            target=scan_main,
            args=(self.settings, child_end, snapshot),
            name="imagegate-scan",
            daemon=True,
        )
        process.start()
        child_end.close()
        self.process = process
        logger.info("background scan runs in process %s", process.pid)
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        loop.add_reader(process.sentinel, _settle, exited)
        loop.add_reader(parent_end.fileno(), self._receive, parent_end)
        sending = asyncio.create_task(self._send_all(parent_end, self._outbox))
        try:
            await exited
        finally:
            self._outbox = None
            sending.cancel()
            loop.remove_reader(process.sentinel)
            with contextlib.suppress(ValueError, OSError):  # closed by `_receive` at EOF
                loop.remove_reader(parent_end.fileno())
            parent_end.close()  # the process stops when its pipe closes
            await asyncio.to_thread(process.join, STOP_TIMEOUT)
            if process.exitcode is None:
                process.kill()
                await asyncio.to_thread(process.join)
        return process.exitcode

    @staticmethod
    async def _send_all(pipe: Connection, outbox: asyncio.Queue[Message]) -> None:
        while True:
            message = await outbox.get()
            try:
                await asyncio.to_thread(pipe.send, message)
            except OSError as error:  # it is exiting: the next one starts from a full snapshot
                logger.warning("cannot reach the scan process: %s", error)
                return

    def _receive(self, pipe: Connection) -> None:
        try:
            message = pipe.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(pipe.fileno())
            return
        if message[0] == "scanned" and self.on_scanned is not None:
            self.on_scanned(message[1])


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# --- the scan process ------------------------------------------------------------------------


def scan_main(settings: ScanSettings, pipe: Connection, snapshot: workers.Snapshot) -> None:
    """The scan process: scan until the pipe closes (the operator stops, or is gone)."""
    logs.configure(settings.log_format)
    # A process group's Ctrl-C or SIGTERM is the operator's to handle: it closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _yield_to_serving()
    asyncio.run(_scan(settings, pipe, snapshot))


def _yield_to_serving() -> None:
    """Run the scan only on CPU that serving leaves idle: a SCHED_IDLE thread is preempted as
    soon as a normal one wakes, where at nice 10 a request may wait out the scan's time slice.
    In a pod it ranks the scan against the pod's own processes only (the pod is a cgroup), so
    a busy node does not starve it; a pod whose serving process takes all its CPU does, by
    design. Any process may move itself to SCHED_IDLE, and threads it starts later inherit it;
    where that is refused (not Linux, a seccomp profile) the nice value stays (design.md §14)."""
    os.nice(NICE)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as error:
        logger.warning("scan process stays at nice %d: SCHED_IDLE refused (%s)", NICE, error)


async def _scan(settings: ScanSettings, pipe: Connection, snapshot: workers.Snapshot) -> None:
    api = kube.api_client(settings.kubeconfig)
    cache = workers.restored_cache(snapshot, api)
    async with aiohttp.ClientSession() as session:
        scanner = _scanner(settings, api, cache, session)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(pipe.fileno(), _on_message, pipe, cache, scanner, stopped)
        tasks = [
            asyncio.create_task(scanner.run(settings.interval, _reporter(pipe))),
            asyncio.create_task(heap.run(settings.heap_trim_interval)),
        ]
        gc.freeze()  # start-up's objects out of the collector's passes, as in operator.py
        logger.info("scan process %d started", os.getpid())
        await stopped.wait()
        loop.remove_reader(pipe.fileno())
        for task in tasks:
            task.cancel()


def _scanner(
    settings: ScanSettings,
    api: Any,
    cache: policies.PolicyCache,
    session: aiohttp.ClientSession,
) -> scan.PolicyReportScanner:
    """The scanner as operator.py built it in-process, with this process's clients and caches."""
    registry_client = oci.RegistryClient(
        session, insecure=settings.insecure_registries, mirrors=settings.registry_mirrors
    )
    material = KubernetesMaterial(
        api, ttl=settings.material_ttl, stale_for=settings.material_stale_for
    )
    signatures = verifier.CosignVerifier(
        registry_client,
        VerdictCache(stale_ttl=settings.stale_digest_ttl),
        secrets=material,
        own_namespace=settings.namespace,
        resolver=pinning.CachingResolver(registry_client, stale_ttl=settings.stale_digest_ttl),
    )
    return scan.PolicyReportScanner(
        api,
        cache,
        signatures,
        keychains=credentials.ClusterKeychains(material, settings.namespace),
        own_namespace=settings.namespace,
        pace=scan.Pace(settings.duty),
    )


def _reporter(pipe: Connection) -> Callable[[scan.ScanSummary, float], None]:
    def report(summary: scan.ScanSummary, seconds: float) -> None:
        scanned = Scanned(os.getpid(), summary.objects, seconds, summary.complete)
        with contextlib.suppress(OSError):  # the operator is gone: `_on_message` stops this
            pipe.send(("scanned", scanned))

    return report


def _on_message(
    pipe: Connection,
    cache: policies.PolicyCache,
    scanner: scan.PolicyReportScanner,
    stopped: asyncio.Event,
) -> None:
    try:
        message = pipe.recv()
    except (EOFError, OSError):  # the operator closed the pipe, or is gone
        pipe.close()
        stopped.set()
        return
    if not workers.apply_to_cache(cache, message) and message[0] == "scan":
        scanner.trigger()
