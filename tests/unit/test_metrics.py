"""Prometheus metrics: what an admin scrapes, and bounds on what Pod authors can inflate."""

from __future__ import annotations

from imagegate.admission.records import Action, AuditEntry
from imagegate.policy import engine
from imagegate.signatures.cache import VerdictCache
from imagegate.trail import metrics


def sample(text: str, line_start: str) -> float:
    return float(
        next(line for line in text.splitlines() if line.startswith(line_start)).split()[-1]
    )


def test_decisions_admissions_and_cache_lookups_are_exposed() -> None:
    collected = metrics.Metrics()
    policy = engine.CompiledPolicy("hardened", engine.Mode.ENFORCE)
    entry = AuditEntry(Action.DENIED, policy, "team", "Pod/x", "app", "redis:7", "untrusted")
    collected.record(entry)
    collected.record(AuditEntry(**{**entry.__dict__, "dry_run": True}))  # not counted
    collected.admission("validate", "denied")
    cache = VerdictCache()
    cache.hits, cache.misses = 3, 1
    collected.watch_cache(cache)
    collected.verified(0.02)
    text = collected.exposition().decode()
    assert sample(text, 'imagegate_policy_decisions_total{action="denied",policy="hardened"}') == 1
    assert sample(text, 'imagegate_admissions_total{decision="denied",webhook="validate"}') == 1
    assert sample(text, 'imagegate_verdict_cache_lookups_total{result="hit"}') == 3
    assert sample(text, "imagegate_verification_seconds_count") == 1


def test_registry_labels_are_bounded() -> None:
    collected = metrics.Metrics()
    for index in range(metrics.MAX_REGISTRY_LABELS + 25):
        collected.registry_error(f"r{index}.example", "RegistryUnavailable")
    text = collected.exposition().decode()
    registries = {
        line.split('registry="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("imagegate_registry_errors_total{")
    }
    assert len(registries) == metrics.MAX_REGISTRY_LABELS + 1
    assert (
        sample(
            text, 'imagegate_registry_errors_total{error="RegistryUnavailable",registry="other"}'
        )
        == 25
    )
