"""Denial counts in policy status: counted in memory, written back in batches.

Every replica counts the denials it made and adds them to `status.denials` with a
read-modify-write guarded by `resourceVersion`, so replicas never overwrite each other's counts
(a conflict is retried with the fresh value). Batching keeps a crash-looping workload from turning
into a write to etcd per admission. Status is for admins: admission never waits for it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client

from imagegate.admission import records as audit
from imagegate.cluster import resources
from imagegate.policy import engine

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 5.0
CONFLICT_RETRIES = 5
PolicyKey = tuple[str | None, str]


@dataclass
class _Pending:
    count: int
    last: dict[str, str]


class DenialCounter:
    """An `audit.AuditRecorder` of enforce denials, flushed to the policies' status."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._policies = resources.PolicyResources(api)
        self._clock = clock
        self._pending: dict[PolicyKey, _Pending] = {}

    def record(self, entry: audit.AuditEntry) -> None:
        if entry.action is audit.Action.DENIED and not entry.dry_run:
            self.denied(entry.policy, entry.namespace, entry.obj, entry.image)

    def denied(self, policy: engine.CompiledPolicy, namespace: str, obj: str, image: str) -> None:
        last = {
            "time": self._clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "namespace": namespace,
            "object": obj,
            "image": image,
        }
        key = (policy.namespace, policy.name)
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = _Pending(1, last)
        else:
            pending.count += 1
            pending.last = last

    async def run(self, interval: float = FLUSH_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for key, batch in pending.items():
            try:
                await asyncio.to_thread(self._add, key, batch)
            except client.ApiException as error:
                if error.status == 404:
                    continue  # the policy was deleted: its counts go with it
                logger.warning(
                    "cannot record %d denials for %s: %s", batch.count, key, error.reason
                )
                self._merge_back(key, batch)

    def _merge_back(self, key: PolicyKey, batch: _Pending) -> None:
        newer = self._pending.get(key)
        if newer is None:
            self._pending[key] = batch
        else:
            newer.count += batch.count

    def _add(self, key: PolicyKey, batch: _Pending) -> None:
        namespace, name = key
        for _ in range(CONFLICT_RETRIES):
            current = self._policies.get(namespace, name)
            status = current.get("status") or {}
            body = {
                "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "status": {
                    "denials": int(status.get("denials", 0)) + batch.count,
                    "lastDenial": batch.last,
                },
            }
            try:
                self._policies.patch_status(namespace, name, body)
                return
            except client.ApiException as error:
                if error.status != 409:
                    raise
        logger.warning("gave up recording denials for %s after %d conflicts", key, CONFLICT_RETRIES)
