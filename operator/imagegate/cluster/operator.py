"""The kopf operator: policies and namespaces watched into a cache, the webhooks served beside.

Start-up order is what keeps admission safe: the policies are listed and compiled *before* the
webhook server starts, so the API server can never reach an imagegate that would admit because it
has not read its policies yet (until then the call fails, and `failurePolicy: Fail` denies). What
a policy event does (compile off the event loop, keep or fail closed when invalid, write status)
is policies.py's `PolicyWatch`.

Faults cost log lines, not admission: every background task is supervised (an exception is
logged with the task's name and the task restarts after a backoff); a start-up that fails (the API
server unreachable) is retried every `STARTUP_BACKOFF` seconds on the same health port, and
`/healthz` fails once it has failed `STARTUP_FAILURES_UNHEALTHY` times in a row, so the kubelet
restarts the container.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kopf
from kubernetes import client

from imagegate.admission import decisions, health, server
from imagegate.admission import policies as policyreview
from imagegate.admission import records as audit
from imagegate.admission import reviewers as webhook
from imagegate.cluster import (
    certs,
    credentials,
    heap,
    kube,
    policies,
    resources,
    scanning,
    status,
    workers,
)
from imagegate.policy import model
from imagegate.registry import client as oci
from imagegate.registry import mirrors, pinning, staleness
from imagegate.signatures import material as cluster_material
from imagegate.signatures import verifier
from imagegate.signatures.cache import VerdictCache
from imagegate.signatures.material import KubernetesMaterial
from imagegate.trail import events, metrics, scan

logger = logging.getLogger(__name__)

#: Seconds between start-up attempts (kopf's default, 60 s, leaves a replica down a minute).
STARTUP_BACKOFF = 5.0
#: After this many failed start-ups in a row, /healthz fails (about a minute at STARTUP_BACKOFF).
STARTUP_FAILURES_UNHEALTHY = 12
#: Seconds between a background task's failure and its restart: 1, 2, 5, then every 10.
TASK_BACKOFFS = (1.0, 2.0, 5.0, 10.0)
#: kopf's retries of one API request (its default 1, 1, 2, 3, 5, 8, 13, 21 s kept a watch away for
#: 20 s after an API server restart): never more than 2 s between attempts.
API_ERROR_BACKOFFS = (0.5, 1.0, 2.0, 2.0, 2.0)
#: After a watch's retries are spent, kopf lists and watches again after this many seconds.
WATCH_RECONNECT_BACKOFF = 1.0
#: Connection timeout of kopf's requests and watches; and the server-side watch timeout, so a
#: watch stalled by a middlebox is replaced within a minute.
API_CONNECT_TIMEOUT = 5.0
WATCH_SERVER_TIMEOUT = 60


def _env_seconds(name: str, default: float) -> Callable[[], float]:
    """A config default that an environment variable may override (tests shorten intervals)."""
    return lambda: float(os.environ.get(name, default))


@dataclass(frozen=True)
class SelfManagedCertificates:
    """`--tls-secret`: the operator makes and keeps the serving certificate (certs.py)."""

    secret_name: str
    service_name: str
    webhook_configuration: str
    directory: Path


@dataclass
class OperatorConfig:
    kubeconfig: Path | None
    #: Certificate files (cert-manager, or the local test bed), or certificates made here.
    tls: server.TLSFiles | SelfManagedCertificates
    host: str = "0.0.0.0"  # nosec B104
    port: int = 8443
    deadline: float = server.DEFAULT_DEADLINE
    #: Seconds /mutate may spend pinning; None: `webhook.MUTATE_BUDGET_SHARE` of the deadline.
    mutate_budget: float | None = None
    #: How long a tag's digest and a positive verdict may be served while a registry is down.
    stale_digest_ttl: float = staleness.STALE_TTL
    #: Which plain admissions get a log line (denials, warnings, rewrites always do).
    log_admits: decisions.AdmitLogging = "sampled"
    #: Where imagegate runs: ClusterImagePolicy secretRefs without a namespace read from here.
    namespace: str = field(
        default_factory=lambda: os.environ.get("POD_NAMESPACE", "imagegate-system")
    )
    #: Registries reached over plain HTTP (e.g. a local registry in a test cluster).
    insecure_registries: frozenset[str] = frozenset()
    #: Where registries' content is read from (containerd's hosts.toml; design.md §8).
    registry_mirrors: mirrors.Mirrors = mirrors.NO_MIRRORS
    #: Plain HTTP /healthz, /readyz and /metrics; None: not served (0: any free port).
    health_port: int | None = 8081
    events: bool = True
    policy_reports: bool = False
    scan_interval: float = 300.0
    #: The share of the time a background scan works; it pauses for the rest (scan.Pace).
    scan_duty: float = scan.DUTY
    #: Secrets, ConfigMaps and ServiceAccounts (keys, trust roots, pull secrets): how long a read
    #: is fresh, and how long past that it is still served while the API server is unreachable.
    material_ttl: float = field(
        default_factory=_env_seconds("IMAGEGATE_MATERIAL_TTL", cluster_material.TTL)
    )
    material_stale_for: float = field(
        default_factory=_env_seconds("IMAGEGATE_MATERIAL_STALE_FOR", cluster_material.STALE_FOR)
    )
    #: On SIGTERM: seconds the webhook goes on serving with /readyz failing, so the Service
    #: stops routing here first. The chart's terminationGracePeriodSeconds covers it + deadline.
    drain_delay: float = field(default_factory=_env_seconds("IMAGEGATE_DRAIN_DELAY", 5.0))
    #: Seconds between returns of freed heap to the kernel (heap.py; 0: never).
    heap_trim_interval: float = field(
        default_factory=_env_seconds("IMAGEGATE_HEAP_TRIM_INTERVAL", heap.TRIM_INTERVAL)
    )
    #: Seconds between checks of a self-managed serving certificate (`--tls-secret`).
    certificate_check_interval: float = field(
        default_factory=_env_seconds("IMAGEGATE_CERTIFICATE_CHECK_INTERVAL", certs.CHECK_INTERVAL)
    )
    #: Webhook serving processes (`--workers`); 1: this process serves, as it always did.
    workers: int = 1
    #: Handed to worker processes, which configure their own logging.
    log_format: str = "text"


@dataclass
class _State:
    config: OperatorConfig
    api: client.ApiClient
    #: The policies and namespace labels the webhooks decide with, and the events that fill them.
    watch: policies.PolicyWatch
    metrics: metrics.Metrics = field(default_factory=metrics.Metrics)
    webhook_server: server.WebhookServer | None = None
    #: With `--workers` above 1: the processes that serve the webhooks instead of this one.
    worker_pool: workers.WorkerPool | None = None
    health_server: health.HealthServer | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: Written once more on shutdown, so a rolling update loses no counts or Events.
    flushers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    startup_failures: int = 0
    #: Set on SIGTERM: /readyz fails from then on, so the Service stops sending new connections.
    draining: bool = False
    #: Set once kopf has listed every watched resource and streams their changes: until then
    #: kopf is still starting on this loop (and policy edits would not arrive yet).
    watches_listed: bool = False

    @property
    def cache(self) -> policies.PolicyCache:
        return self.watch.cache

    @property
    def ready(self) -> bool:
        serving = self.webhook_server is not None
        if self.worker_pool is not None:
            serving = self.worker_pool.ready
        return serving and self.watches_listed and not self.draining


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """All handlers, bound to one operator's state (no module globals)."""
    registry = kopf.OperatorRegistry()
    api = kube.api_client(config.kubeconfig)
    state = _State(config, api, policies.PolicyWatch(api, resources.PolicyResources(api)))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        if config.kubeconfig is not None:
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs)

    @kopf.on.startup(registry=registry, backoff=STARTUP_BACKOFF)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.posting.enabled = False  # imagegate writes its own, rate-limited Events
        _bound_reconnects(settings)
        await _attempt_start(state)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await shut_down(state)

    for plural in policies.PLURALS.values():

        @kopf.on.event(model.GROUP, model.VERSION, plural, id=f"watch-{plural}", registry=registry)
        async def policy_event(event: Mapping[str, Any], **_: Any) -> None:
            await state.watch.apply(event)

    _hold_handlers_until_listed(registry)

    @kopf.on.event("", "v1", "namespaces", registry=registry)
    async def namespace_event(event: Mapping[str, Any], **_: Any) -> None:
        # kopf calls this only once every watched resource is listed (see below), and there
        # is always a namespace: the first call means the watches run.
        state.watches_listed = True
        body = event.get("object") or {}
        name = body.get("metadata", {}).get("name")
        if name:
            deleted = event.get("type") == "DELETED"
            state.cache.set_namespace(name, None if deleted else body["metadata"].get("labels", {}))

    return registry


def _hold_handlers_until_listed(registry: kopf.OperatorRegistry) -> None:
    """Index handlers that index nothing (None is not stored), one per watched resource.

    With an index on a resource, kopf holds every other handler until each indexed resource's
    initial listing is over (kopf "indexing"), even an empty one: so the first namespace event
    comes after the policies' and namespaces' lists, and `/readyz` follows it (design.md
    "Memory and start-up").
    """
    watched = [(model.GROUP, model.VERSION, plural) for plural in policies.PLURALS.values()]
    for group, version, plural in [*watched, ("", "v1", "namespaces")]:

        @kopf.on.index(group, version, plural, id=f"listed-{plural}", registry=registry)
        def listed(**_: Any) -> None:
            return None


async def shut_down(state: _State) -> None:
    """SIGTERM (kopf runs this once its watches have stopped): drain, then stop.

    /readyz fails first and the webhook goes on serving for `drain_delay` seconds, so the
    endpoints controller takes this replica out of the Service before it stops listening (no
    preStop hook: the image is distroless, there is no `sleep` to exec). Then no new connections
    are accepted, requests in flight finish (bounded by the deadline), and the process exits.
    """
    state.draining = True
    if state.worker_pool is not None:
        state.worker_pool.drain()
        logger.info("draining: /readyz fails; serving %.1fs more", state.config.drain_delay)
        await asyncio.sleep(state.config.drain_delay)
        await state.worker_pool.stop(timeout=state.config.deadline + 2.0)
        logger.info("webhook workers stopped; requests in flight were answered")
    if state.webhook_server is not None:
        state.webhook_server.drain()
        logger.info("draining: /readyz fails; serving %.1fs more", state.config.drain_delay)
        await asyncio.sleep(state.config.drain_delay)
        await state.webhook_server.stop()  # waits for the requests in flight
        logger.info("webhook server stopped; requests in flight were answered")
    for task in state.tasks:
        task.cancel()
    for flush in state.flushers:
        try:
            await asyncio.wait_for(flush(), timeout=5)
        except Exception as error:  # shutting down: say so, and go on stopping
            logger.warning("final flush failed: %s", error)
    if state.health_server is not None:
        await state.health_server.stop()
    for close in state.closers:
        await close()


def _bound_reconnects(settings: kopf.OperatorSettings) -> None:
    """After an API server outage, watches (policy edits) resume within about 2 s of its return."""
    settings.networking.error_backoffs = API_ERROR_BACKOFFS
    settings.networking.connect_timeout = API_CONNECT_TIMEOUT
    settings.watching.connect_timeout = API_CONNECT_TIMEOUT
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.reconnect_backoff = WATCH_RECONNECT_BACKOFF


async def _attempt_start(state: _State) -> None:
    """One start-up attempt (kopf retries a failed one); what it began is undone on failure."""
    begun = [(kept, len(kept)) for kept in _started_lists(state)]
    try:
        await _start(state)
    except BaseException as error:
        for task in state.tasks[begun[0][1] :]:
            task.cancel()
        for close in state.closers[begun[1][1] :]:
            await close()
        for kept, length in begun:
            del kept[length:]
        if isinstance(error, Exception):
            _count_startup_failure(state)
        raise
    state.startup_failures = 0
    if state.health_server is not None:
        state.health_server.unhealthy = None


def _started_lists(state: _State) -> list[list[Any]]:
    """What `_start` appends to (tasks and closers first)."""
    return [state.tasks, state.closers, state.flushers, state.watch.policy_listeners]


def _count_startup_failure(state: _State) -> None:
    state.startup_failures += 1
    logger.error(
        "start-up failed (%d in a row); retrying in %.0fs", state.startup_failures, STARTUP_BACKOFF
    )
    if state.startup_failures >= STARTUP_FAILURES_UNHEALTHY and state.health_server is not None:
        state.health_server.unhealthy = f"start-up failed {state.startup_failures} times in a row"


async def _start(state: _State) -> None:
    """Probes first (alive, not ready), then policies, certificates, and only then the webhook."""
    config = state.config
    # Once per process: a retried start-up reuses the port it already holds.
    if config.health_port is not None and state.health_server is None:
        state.health_server = health.HealthServer(
            ready=lambda: state.ready,
            metrics=state.metrics.exposition,
            metrics_type=metrics.CONTENT_TYPE,
            host=config.host,
            port=config.health_port,
        )
        await state.health_server.start()
        logger.info("serving /healthz, /readyz and /metrics on port %d", state.health_server.port)
    await state.watch.load()
    tls_files = await _certificates(state)

    session = aiohttp.ClientSession()
    state.closers.append(session.close)
    registry_client = oci.RegistryClient(
        session,
        insecure=config.insecure_registries,
        on_error=state.metrics.registry_error,
        mirrors=config.registry_mirrors,
    )
    material = KubernetesMaterial(
        state.api, ttl=config.material_ttl, stale_for=config.material_stale_for
    )
    keychains = credentials.ClusterKeychains(material, config.namespace)
    verdicts = VerdictCache(stale_ttl=config.stale_digest_ttl, on_stale=state.metrics.stale_verdict)
    # One tag cache for both webhooks: what /mutate pinned, /validate verifies without asking.
    resolver = pinning.CachingResolver(
        registry_client, stale_ttl=config.stale_digest_ttl, on_stale=state.metrics.stale_digest
    )
    decision_log = decisions.DecisionLog(config.log_admits)
    _background(state, "heap trim", lambda: heap.run(config.heap_trim_interval))
    _background(state, "admission count", decision_log.run)
    state.metrics.watch_cache(verdicts)
    counter = status.DenialCounter(state.api)
    recorders: list[audit.AuditRecorder] = [counter, state.metrics]
    _background(state, "denial counter", counter.run)
    state.flushers.append(counter.flush)
    if config.events:
        event_recorder = events.EventRecorder(state.api)
        recorders.append(event_recorder)
        _background(state, "event recorder", event_recorder.run)
        state.flushers.append(event_recorder.flush)
    signatures = verifier.CosignVerifier(
        registry_client,
        verdicts,
        secrets=material,
        own_namespace=config.namespace,
        observe_seconds=state.metrics.verified,
        resolver=resolver,
    )
    if config.policy_reports and config.workers > 1:
        # This process serves no webhook: the scan's CPU delays no admission here.
        scanner = scan.PolicyReportScanner(
            state.api,
            state.cache,
            signatures,
            keychains=keychains,
            own_namespace=config.namespace,
            pace=scan.Pace(config.scan_duty),
        )
        state.watch.policy_listeners.append(scanner.trigger)
        _background(state, "policy report scan", lambda: scanner.run(config.scan_interval))
    elif config.policy_reports:
        scan_process = scanning.ScanProcess(_scan_settings(config), state.cache)
        state.watch.policy_listeners.append(scan_process.trigger)
        _background(state, "policy report scan", scan_process.run)
    if config.workers > 1:
        await _start_workers(state, tls_files)
        return
    app = server.build_app(
        validate=webhook.Validator(
            state.cache,
            signatures,
            recorders=recorders,
            keychains=keychains,
            decisions=decision_log,
        ),
        mutate=webhook.Mutator(
            state.cache,
            resolver,
            keychains,
            recorders,
            budget=config.mutate_budget,
            decisions=decision_log,
            verifier=signatures,
        ),
        validate_policy=policyreview.PolicyReviewer(),
        deadline=config.deadline,
        observe=lambda name, response: state.metrics.admission(name, server.outcome(response)),
    )
    webhook_server = server.WebhookServer(
        app,
        tls_files,
        host=config.host,
        port=config.port,
        shutdown_timeout=config.deadline + 1.0,
    )
    await webhook_server.start()
    state.webhook_server = webhook_server
    logger.info(
        "serving /mutate, /validate and /validate-policy on %s:%d", config.host, webhook_server.port
    )
    # What start-up made (the kubernetes client's and pydantic's ~160,000 objects) lives as long
    # as the process: out of the collector's reach, a full pass no longer walks it (80-130 ms a
    # pass on 2 cores, several per background scan; bench/scan.py measures the difference).
    gc.freeze()


def _scan_settings(config: OperatorConfig) -> scanning.ScanSettings:
    """`--workers 1`: the scan runs in a process of its own beside this one (design.md §14)."""
    return scanning.ScanSettings(
        kubeconfig=config.kubeconfig,
        namespace=config.namespace,
        interval=config.scan_interval,
        insecure_registries=config.insecure_registries,
        registry_mirrors=config.registry_mirrors,
        stale_digest_ttl=config.stale_digest_ttl,
        material_ttl=config.material_ttl,
        material_stale_for=config.material_stale_for,
        heap_trim_interval=config.heap_trim_interval,
        log_format=config.log_format,
        duty=config.scan_duty,
    )


async def _start_workers(state: _State, tls_files: server.TLSFiles) -> None:
    """`--workers N`: N processes serve the webhooks, fed this one's policies (workers.py)."""
    config = state.config
    settings = workers.WorkerSettings(
        kubeconfig=config.kubeconfig,
        tls=tls_files,
        host=config.host,
        port=config.port,
        deadline=config.deadline,
        mutate_budget=config.mutate_budget,
        stale_digest_ttl=config.stale_digest_ttl,
        log_admits=config.log_admits,
        namespace=config.namespace,
        insecure_registries=config.insecure_registries,
        events=config.events,
        material_ttl=config.material_ttl,
        material_stale_for=config.material_stale_for,
        log_format=config.log_format,
    )
    pool = workers.WorkerPool(settings, config.workers, state.cache, state.metrics)
    # A start-up that fails later (or times out waiting for them) stops them again.
    state.closers.append(lambda: pool.stop(timeout=config.deadline + 2.0))
    await pool.start()
    state.worker_pool = pool
    gc.freeze()  # as in `_start`


async def _certificates(state: _State) -> server.TLSFiles:
    config = state.config
    if isinstance(config.tls, server.TLSFiles):
        return config.tls
    managed = certs.SelfManagedTLS(
        state.api,
        namespace=config.namespace,
        secret_name=config.tls.secret_name,
        service_name=config.tls.service_name,
        webhook_configuration=config.tls.webhook_configuration,
        directory=config.tls.directory,
        # A rotation followed by `run` is served at once, not at the server's next look.
        on_files_changed=lambda: _reload_certificates(state),
    )
    await asyncio.to_thread(managed.ensure)
    try:
        await asyncio.to_thread(managed.patch_ca_bundles, managed.bundle())
    except client.ApiException as error:
        # The chart may be mid-install: the periodic check patches it a moment later.
        logger.warning("cannot set the webhooks' caBundle yet: %s (%s)", error.reason, error.status)
    _background(state, "certificate upkeep", lambda: managed.run(config.certificate_check_interval))
    return managed.files


def _reload_certificates(state: _State) -> None:
    if state.webhook_server is not None:
        state.webhook_server.reload_certificates()


def _background(state: _State, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    state.tasks.append(asyncio.create_task(supervised(name, work), name=name))


async def supervised(
    name: str,
    work: Callable[[], Coroutine[Any, Any, None]],
    backoffs: Sequence[float] = TASK_BACKOFFS,
) -> None:
    """Run `work()` until it returns; when it raises, log that with `name` and run it again.

    A task that dies silently is worse than one that crashes the process: certificates stop
    renewing, counts stop being written, and nothing says so.
    """
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            # A task that ran for a while before failing starts its backoff over.
            failures = 1 if time.monotonic() - started > backoffs[-1] * 6 else failures + 1
            delay = backoffs[min(failures, len(backoffs)) - 1]
            logger.exception("background task %r failed; restarting it in %.0fs", name, delay)
        await asyncio.sleep(delay)


def run(config: OperatorConfig) -> None:
    if config.kubeconfig is not None:
        # kopf's kubeconfig login reads the path from the environment only.
        os.environ["KUBECONFIG"] = str(config.kubeconfig)
    kopf.run(registry=build_registry(config), standalone=True, clusterwide=True)
