"""Prometheus metrics, served on `/metrics` of the health port.

Each operator owns its own `CollectorRegistry` (no process-wide globals), so tests and several
operators in one process never share counts. Names follow Prometheus conventions: `_total` for
counters, seconds for durations.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from imagegate.admission import records as audit
from imagegate.signatures.cache import VerdictCache

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Verification runs from ~2 ms (a key, warm connection) to the deadline (8 s by default).
#: Distinct registry label values kept; the rest are counted as "other".
MAX_REGISTRY_LABELS = 50
VERIFICATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """An `audit.AuditRecorder`, and the counters the server, verifier and registry feed."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._registries: set[str] = set()
        self._admission_counts: dict[tuple[str, str], Counter] = {}
        self.admissions = Counter(
            "imagegate_admissions",
            "Admission reviews answered, by webhook and decision.",
            ["webhook", "decision"],
            registry=self.registry,
        )
        self.policy_decisions = Counter(
            "imagegate_policy_decisions",
            "Images a policy denied, warned about, audited or rewrote.",
            ["policy", "action"],
            registry=self.registry,
        )
        self.verification_seconds = Histogram(
            "imagegate_verification_seconds",
            "Time to verify one image digest's signatures (cache misses only).",
            buckets=VERIFICATION_BUCKETS,
            registry=self.registry,
        )
        self.registry_errors = Counter(
            "imagegate_registry_errors",
            "Registry requests that failed, by registry and error.",
            ["registry", "error"],
            registry=self.registry,
        )
        self.stale_digests = Counter(
            "imagegate_stale_digests",
            "Tags answered with their last verified digest because the registry was unreachable.",
            ["registry"],
            registry=self.registry,
        )
        self.stale_verdicts = Counter(
            "imagegate_stale_verdicts",
            "Positive signature verdicts served past their TTL because the registry was "
            "unreachable.",
            ["registry"],
            registry=self.registry,
        )

        self.worker_restarts = Counter(
            "imagegate_worker_restarts",
            "Webhook worker processes started again after exiting (--workers).",
            registry=self.registry,
        )
        self.worker_kills = Counter(
            "imagegate_worker_kills",
            "Webhook workers the operator process killed (--workers), by reason: silent (no "
            "heartbeat) or backlog (not reading what it is sent).",
            ["reason"],
            registry=self.registry,
        )
        self.shared_verdicts = Counter(
            "imagegate_worker_shared_verdicts",
            "Signature verdicts one webhook worker verified and the operator sent to the others.",
            registry=self.registry,
        )

    def record(self, entry: audit.AuditEntry) -> None:
        if not entry.dry_run:
            self.policy_decisions.labels(entry.policy.display_name, entry.action.value).inc()

    def admission(self, webhook: str, decision: str) -> None:
        # Children by label, kept: `labels()` takes a lock and builds a key on every call, and
        # both labels have a handful of values (webhook names, `server.outcome`).
        child = self._admission_counts.get((webhook, decision))
        if child is None:
            child = self._admission_counts[(webhook, decision)] = self.admissions.labels(
                webhook, decision
            )
        child.inc()

    def worker_restart(self) -> None:
        self.worker_restarts.inc()

    def worker_killed(self, reason: str) -> None:
        self.worker_kills.labels(reason).inc()

    def verdict_shared(self) -> None:
        self.shared_verdicts.inc()

    def verified(self, seconds: float) -> None:
        self.verification_seconds.observe(seconds)

    def registry_error(self, registry: str, error: str) -> None:
        self.registry_errors.labels(self._registry_label(registry), error).inc()

    def stale_digest(self, registry: str) -> None:
        self.stale_digests.labels(self._registry_label(registry)).inc()

    def stale_verdict(self, registry: str) -> None:
        self.stale_verdicts.labels(self._registry_label(registry)).inc()

    def _registry_label(self, registry: str) -> str:
        # Registry names come from whoever writes a Pod: bound the label's values.
        if registry not in self._registries:
            if len(self._registries) >= MAX_REGISTRY_LABELS:
                return "other"
            self._registries.add(registry)
        return registry

    def watch_cache(self, cache: VerdictCache) -> None:
        self.registry.register(_CacheCollector(cache))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector(Collector):
    """Reads the verdict cache's own counters at scrape time (no hook on the hot path)."""

    def __init__(self, cache: VerdictCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "imagegate_verdict_cache_lookups",
            "Signature verdict lookups, by result (hit includes joining one in flight).",
            labels=["result"],
        )
        lookups.add_metric(["hit"], self._cache.hits)
        lookups.add_metric(["miss"], self._cache.misses)
        yield lookups
