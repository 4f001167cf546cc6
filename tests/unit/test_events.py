"""The Event recorder's flood protection, before any API call (writing is tested in e2e)."""

from __future__ import annotations

import datetime

from kubernetes import client

from imagegate.admission.records import Action, AuditEntry
from imagegate.policy import engine
from imagegate.trail import events

POLICY = engine.CompiledPolicy("hardened", engine.Mode.ENFORCE)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(obj: str = "Pod/x", *, dry_run: bool = False) -> AuditEntry:
    return AuditEntry(Action.DENIED, POLICY, "team", obj, "app", "redis:7", "untrusted", dry_run)


def recorder(clock: Clock) -> events.EventRecorder:
    return events.EventRecorder(
        client.ApiClient(),
        instance="replica-a",
        clock=clock,
        wall_clock=lambda: datetime.datetime(2026, 11, 23, tzinfo=datetime.UTC),
    )


def test_repeats_within_the_window_make_one_event_with_a_count() -> None:
    clock = Clock()
    events_ = recorder(clock)
    for _ in range(5):
        events_.record(entry())
    assert len(events_._queue) == 1
    [tracked] = events_._tracked.values()
    assert tracked.pending == 5
    clock.now += events.REPEAT_WINDOW + 1
    events_.record(entry())
    assert len(events_._queue) == 2  # a new window: a new Event


def test_new_events_are_capped_by_a_token_bucket_that_refills() -> None:
    clock = Clock()
    events_ = recorder(clock)
    for index in range(events.BURST + 10):
        events_.record(entry(f"Pod/x{index}"))
    assert len(events_._queue) == events.BURST
    assert events_.dropped == 10
    clock.now += 60  # a minute refills NEW_EVENTS_PER_MINUTE tokens
    for index in range(events.NEW_EVENTS_PER_MINUTE):
        events_.record(entry(f"Pod/y{index}"))
    assert len(events_._queue) == events.BURST + events.NEW_EVENTS_PER_MINUTE


def test_dry_runs_are_not_recorded_and_names_are_valid() -> None:
    events_ = recorder(Clock())
    events_.record(entry(dry_run=True))
    assert not events_._queue
    long_policy = engine.CompiledPolicy("p" * 253, engine.Mode.ENFORCE)
    events_.record(
        AuditEntry(Action.WARNED, long_policy, "team", "Pod/x", "app", "redis:7", "untrusted")
    )
    [(_, tracked)] = events_._queue
    assert len(tracked.name) <= 253
    assert tracked.namespace == events.CLUSTER_EVENTS_NAMESPACE
