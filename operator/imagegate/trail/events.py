"""Kubernetes Events for the audit trail, on the policy that decided.

Reasons `ImageDenied` / `ImageWarned` / `ImageAudited` / `ImageRewritten`, so `kubectl describe
cip NAME` (or `kubectl get events`) shows what a policy did, to what. Rate-limited twice, so that a
crash-looping controller cannot flood etcd: repeats of one (policy, object, container, image,
reason) within `REPEAT_WINDOW` only raise the Event's `count` (written in batches), and new
Events are capped by a token bucket. An API server that refuses an Event (RBAC, quota) costs a
log line, never an admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from imagegate.admission.records import MANAGED_BY, MAX_MESSAGE, Action, AuditEntry
from imagegate.policy import model
from imagegate.signatures import apiserver

logger = logging.getLogger(__name__)

#: Annotations on imagegate's Events: `imagegate audit` reads them back.
ANNOTATION_PREFIX = "imagegate.dev/"
COMPONENT = "imagegate"
#: Events for ClusterImagePolicies go where Kubernetes puts cluster-scoped objects' Events.
CLUSTER_EVENTS_NAMESPACE = "default"

REPEAT_WINDOW = 600.0
FLUSH_INTERVAL = 10.0
NEW_EVENTS_PER_MINUTE = 60
BURST = 60
MAX_TRACKED = 10_000
MAX_BUMPS_PER_FLUSH = 100


@dataclass
class _Tracked:
    name: str
    namespace: str
    first: float
    count: int
    pending: int = 0
    last_seen: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC)
    )


class EventRecorder:
    """Kubernetes Events on the policies, deduplicated and rate-limited (module docstring)."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._server = apiserver.ApiServer(api)
        self._instance = instance or os.environ.get("POD_NAME") or os.uname().nodename
        self._clock = clock
        self._wall_clock = wall_clock
        self._tracked: OrderedDict[tuple[Any, ...], _Tracked] = OrderedDict()
        self._queue: list[tuple[AuditEntry, _Tracked]] = []
        self._tokens = float(BURST)
        self._refilled = clock()
        self._wake = asyncio.Event()
        self.dropped = 0

    def record(self, entry: AuditEntry) -> None:
        if entry.dry_run:
            return  # the webhooks are declared `sideEffects: NoneOnDryRun`
        key = (
            entry.policy.namespace,
            entry.policy.name,
            entry.action,
            entry.namespace,
            entry.obj,
            entry.kind,
            entry.container,
            entry.image,
            entry.detail,
        )
        now = self._clock()
        tracked = self._tracked.get(key)
        if tracked is not None and now - tracked.first < REPEAT_WINDOW:
            tracked.pending += 1
            tracked.last_seen = self._wall_clock()
            self._tracked.move_to_end(key)
            return
        if not self._take_token(now):
            self.dropped += 1
            return
        # Per replica too: two replicas never write (and overwrite the count of) one Event.
        digest = hashlib.sha256(repr((key, self._instance)).encode()).hexdigest()[:16]
        tracked = _Tracked(
            # Unique per window; policy names may be 253 characters long.
            name=f"{entry.policy.name[:200]}.{digest}.{int(self._wall_clock().timestamp())}",
            namespace=entry.policy.namespace or CLUSTER_EVENTS_NAMESPACE,
            first=now,
            count=0,
            pending=1,
            last_seen=self._wall_clock(),
        )
        self._tracked[key] = tracked
        while len(self._tracked) > MAX_TRACKED:
            self._tracked.popitem(last=False)
        self._queue.append((entry, tracked))
        self._wake.set()  # a new Event is written at once; repeats wait for the interval

    def _take_token(self, now: float) -> bool:
        self._tokens = min(
            float(BURST), self._tokens + (now - self._refilled) * NEW_EVENTS_PER_MINUTE / 60.0
        )
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def run(self, interval: float = FLUSH_INTERVAL) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Create the new Events and raise the counts of repeated ones."""
        queue, self._queue = self._queue, []
        for entry, tracked in queue:
            await self._write(self._create, entry, tracked)
        bumps = [t for t in self._tracked.values() if t.pending and t.count]
        # Bounded too: the rest keep their pending counts for the next flush.
        for tracked in bumps[:MAX_BUMPS_PER_FLUSH]:
            await self._write(self._bump, None, tracked)
        if self.dropped:
            logger.warning(
                "%d audit Events not written: more than %d new Events a minute",
                self.dropped,
                NEW_EVENTS_PER_MINUTE,
            )
            self.dropped = 0

    async def _write(
        self,
        write: Callable[[AuditEntry | None, _Tracked], None],
        entry: AuditEntry | None,
        tracked: _Tracked,
    ) -> None:
        try:
            await asyncio.to_thread(write, entry, tracked)
        except client.ApiException as error:
            # An RBAC refusal or a quota: the trail loses an Event, admission goes on.
            logger.warning(
                "cannot write Event %s/%s: %s (%s)",
                tracked.namespace,
                tracked.name,
                error.reason,
                error.status,
            )
            tracked.pending = 0

    def _create(self, entry: AuditEntry | None, tracked: _Tracked) -> None:
        if entry is None:  # only a tracked entry that was seen is ever created
            raise ValueError("an Event needs the entry it reports")
        pending, tracked.pending = tracked.pending, 0
        timestamp = tracked.last_seen
        policy = entry.policy
        involved = {
            "apiVersion": model.API_VERSION,
            "kind": model.NAMESPACED_KIND if policy.namespace else model.CLUSTER_KIND,
            "name": policy.name,
            "namespace": policy.namespace,
            "uid": policy.uid or None,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": tracked.name,
                "namespace": tracked.namespace,
                "labels": dict(MANAGED_BY),
                "annotations": _annotations(entry),
            },
            "involvedObject": {key: value for key, value in involved.items() if value},
            "reason": entry.action.reason,
            "message": entry.message(),
            "type": "Normal" if entry.action is Action.REWRITTEN else "Warning",
            "count": pending,
            "firstTimestamp": _rfc3339(timestamp),
            "lastTimestamp": _rfc3339(timestamp),
            "source": {"component": COMPONENT},
            "reportingComponent": f"{model.GROUP}/{COMPONENT}",
            "reportingInstance": self._instance[:128],
            "action": "Admission",
        }
        self._server.create(apiserver.core_path(tracked.namespace, "events"), body)
        tracked.count = pending

    def _bump(self, entry: AuditEntry | None, tracked: _Tracked) -> None:
        pending, tracked.pending = tracked.pending, 0
        count = tracked.count + pending
        self._server.merge_patch(
            apiserver.core_path(tracked.namespace, "events", tracked.name),
            {"count": count, "lastTimestamp": _rfc3339(tracked.last_seen)},
        )
        tracked.count = count


def _annotations(entry: AuditEntry) -> dict[str, str]:
    return {
        ANNOTATION_PREFIX + "action": entry.action.value,
        ANNOTATION_PREFIX + "policy": entry.policy.display_name,
        ANNOTATION_PREFIX + "namespace": entry.namespace,
        ANNOTATION_PREFIX + "object": entry.obj,
        ANNOTATION_PREFIX + "container": entry.container,
        ANNOTATION_PREFIX + "image": entry.image,
        ANNOTATION_PREFIX + "detail": entry.detail[:MAX_MESSAGE],
    }


def _rfc3339(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_annotations(annotations: Mapping[str, str] | None) -> dict[str, str]:
    """The fields `_annotations` wrote, without the prefix (for `imagegate audit`)."""
    return {
        key.removeprefix(ANNOTATION_PREFIX): value
        for key, value in (annotations or {}).items()
        if key.startswith(ANNOTATION_PREFIX)
    }
