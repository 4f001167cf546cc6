"""Background scan: what runs today that the policies would deny, as PolicyReports.

Admission only sees what is created or changed after a policy exists. The scan judges every
workload already in the cluster with the same engine calls as `/validate` (so it reaches the
same verdict for an object as stored) and writes one `wgpolicyk8s.io/v1alpha2` PolicyReport named
`imagegate` per namespace, which `kubectl get polr -A`, Policy Reporter and `imagegate audit
--reports` read. It runs every `interval` and soon after a policy changes.

Each image shows up once, on the object an admin edits: objects controlled by another scanned
kind (a Deployment's ReplicaSets and Pods, a CronJob's Jobs) are skipped. Namespaces the webhook
never sees (kube-system, imagegate's own, the opt-out label) are not scanned. Nothing here is on
the admission path: a missing CRD or an RBAC refusal is logged, and scanning goes on. When the
operator process serves the webhooks itself, the scan runs in a process of its own
(cluster/scanning.py, design.md §14), so its CPU never delays an admission. What it costs the
API server is bounded too (§14): a report that would say what the stored one says is not
written again (though each is written at least every `REWRITE_EVERY`); a scan lists nothing,
since the workloads are kept by one LIST and then a WATCH per kind (inventory.py); and the scan
pauses every `inventory.PAGE_SIZE` objects and between writes (`Pace`, `--scan-duty`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from imagegate.admission import configurations as webhookconfig
from imagegate.admission import records as audit
from imagegate.admission import reviewers as webhook
from imagegate.core import workloads
from imagegate.policy import engine
from imagegate.trail import inventory, reports

logger = logging.getLogger(__name__)

DEBOUNCE = 2.0
OBJECT_DEADLINE = 10.0
#: Seconds a scan waits for the inventory's first lists before it scans what there is.
FIRST_LIST_TIMEOUT = 60.0
#: Objects read between two returns to the event loop, where admission requests wait.
YIELD_EVERY = 1
#: The share of the wall clock a scan works by default: it pauses after each page and each
#: report write for the rest (design.md §14).
DUTY = 0.5
#: Seconds a stored report is taken at its word (its digest and field managers) after this
#: scanner last wrote it; then it is written again whatever it says. Whoever may write
#: PolicyReports can forge both, so this bounds a forgery's life (design.md §14) for about one
#: write per report an hour. A scanner that has not written a report yet (a new scan process)
#: writes it on its first scan.
REWRITE_EVERY = 3600.0
#: Asks a LIST for PartialObjectMetadataList: each item's metadata, not the object.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def scanned_namespace(name: str, labels: Mapping[str, str], own_namespace: str) -> bool:
    """Only namespaces the webhooks would be sent (webhookconfig's selector, in Python)."""
    return (
        name not in webhookconfig.ALWAYS_EXCLUDED
        and name != own_namespace
        and webhookconfig.OPT_OUT_LABEL not in labels
    )


class Pace:
    """Keeps a scan to `duty` of the wall clock: after each slice of work (a page read and
    judged, a report written) it pauses in proportion, so that the scan, and the API server it
    keeps busy, leave the node's cores to admission most of the time. The work is timed on the
    wall clock, not the scan's CPU: waiting for the API server is the API server working."""

    def __init__(
        self,
        duty: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < duty <= 1:
            raise ValueError(f"a scan's duty is a share of the time, in (0, 1]: not {duty}")
        self._rest_per_work = 1 / duty - 1
        self._clock = clock
        self._sleep = sleep
        self._since = clock()

    def restart(self) -> None:
        """A new slice of work starts now (time spent waiting between scans is not work)."""
        self._since = self._clock()

    async def rest(self) -> None:
        """End a slice of work: pause for its share of rest, and start the next."""
        if self._rest_per_work:
            await self._sleep((self._clock() - self._since) * self._rest_per_work)
        self._since = self._clock()


# -- I/O ------------------------------------------------------------------------------------------


@dataclass
class ScanSummary:
    objects: int = 0
    written: list[str] = field(default_factory=list)
    #: Namespaces whose stored report already says what this scan found: not written again.
    unchanged: list[str] = field(default_factory=list)
    #: Of those, the namespaces not judged again: nothing their results depend on had changed.
    reused: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    #: False when some kind could not be listed: reports are then written but none deleted.
    complete: bool = True


@dataclass
class _Scope:
    """One namespace's share of a scan: the policies that apply there and the objects to judge."""

    policies: tuple[engine.CompiledPolicy, ...]
    objects: list[dict[str, Any]] = field(default_factory=list)

    def key(self) -> tuple[tuple[str, str], ...]:
        """What the objects were, as the API server versions them."""
        return tuple(
            (str(obj["metadata"].get("uid", "")), str(obj["metadata"].get("resourceVersion", "")))
            for obj in self.objects
        )


@dataclass(frozen=True)
class _Reported:
    """A namespace's last report as this scanner rendered it, and what it was made of."""

    objects: tuple[tuple[str, str], ...]
    policies: tuple[engine.CompiledPolicy, ...]
    counts: Mapping[str, int]
    digest: str

    def still(self, scope: _Scope) -> bool:
        """Whether judging `scope` again must give the same report: the same object versions
        under the very same compiled policies (a changed policy is a new object). Only recorded
        where none of them asks for a signature (`_verdict_free`): without a verdict to gather,
        a decision is a pure function of the images, the policies and the kind (design.md §4
        item 10); a verdict expires."""
        return (
            len(self.policies) == len(scope.policies)
            and all(a is b for a, b in zip(self.policies, scope.policies, strict=True))
            and self.objects == scope.key()
        )


def _verdict_free(policies: Sequence[engine.CompiledPolicy]) -> bool:
    """No source of these policies asks for a signature or an attestation."""
    return not any(
        source.signatures is not None or source.attestations
        for policy in policies
        for source in policy.sources
    )


class PolicyReportScanner:
    def __init__(
        self,
        api: client.ApiClient,
        policies: webhook.PolicySource,
        verifier: webhook.SignatureVerifier | None = None,
        *,
        keychains: webhook.KeychainSource | None = None,
        own_namespace: str = "imagegate-system",
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        pace: Pace | None = None,
        rewrite_every: float = REWRITE_EVERY,
        monotonic: Callable[[], float] = time.monotonic,
        store: inventory.WorkloadInventory | None = None,
    ) -> None:
        self._api = api
        self._inventory = store or inventory.WorkloadInventory(api)
        self._policies = policies
        self._verifier = verifier
        self._keychains = keychains
        self._own_namespace = own_namespace
        self._clock = clock
        self._pace = pace or Pace(DUTY)
        self._rewrite_every = rewrite_every
        self._monotonic = monotonic
        #: When this scanner last wrote each namespace's report (`monotonic`).
        self._written_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._crd_missing = False
        #: Per namespace, the last report written or found unchanged, where it can be reused.
        self._reported: dict[str, _Reported] = {}

    def trigger(self) -> None:
        """A policy changed: scan again soon."""
        self._wake.set()

    async def run(
        self, interval: float, on_scanned: Callable[[ScanSummary, float], None] | None = None
    ) -> None:
        """Scan every `interval` seconds and soon after `trigger()`; `on_scanned` is told of each
        finished scan and the seconds it took (cluster/scanning.py reports them). The inventory
        is watched meanwhile, so that a scan reads no LIST."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._inventory.run(self._pace.rest))
            await self._inventory.wait_listed(FIRST_LIST_TIMEOUT)
            group.create_task(self._scan_every(interval, on_scanned))

    async def _scan_every(
        self, interval: float, on_scanned: Callable[[ScanSummary, float], None] | None
    ) -> None:
        while True:
            try:
                started = time.monotonic()
                summary = await self.scan_once()
                if on_scanned is not None:
                    on_scanned(summary, time.monotonic() - started)
            except Exception:  # never let the scan die: the next cycle may succeed
                logger.exception("background scan failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            if self._wake.is_set():
                await asyncio.sleep(DEBOUNCE)  # `kubectl apply -f dir/`: one scan, not ten
            self._wake.clear()

    async def scan_once(self) -> ScanSummary:
        started = time.monotonic()
        summary = ScanSummary()
        #: Namespaces whose objects could not all be judged: their reports are kept, not deleted.
        keep: set[str] = set()
        self._pace.restart()
        scopes = await self._scopes(summary, keep)
        stored = await self._stored_reports()
        by_namespace: dict[str, reports.NamespaceResults] = {}
        reused: dict[str, _Reported] = {}
        judged = 0
        for namespace, scope in scopes.items():
            summary.objects += len(scope.objects)
            last = self._reported.get(namespace)
            kept = None if stored is None else stored.get(namespace)
            if (
                last is not None
                and kept is not None
                and self._trusts_stored(namespace)
                and kept.says_digest(last.digest)
                and last.still(scope)
            ):
                reused[namespace] = last
                continue
            results = by_namespace.setdefault(namespace, reports.NamespaceResults())
            for obj in scope.objects:
                # judge() holds the loop while it runs: let anything else in between objects.
                await asyncio.sleep(0)
                results.add(await self._judged_rows(obj, namespace, scope.policies))
                judged += 1
                if judged % inventory.PAGE_SIZE == 0:
                    await self._pace.rest()
        reported = dict(reused)
        try:
            if stored is not None:
                await self._write(by_namespace, scopes, summary, keep, stored, reported)
        finally:
            # Only what was written or found unchanged now: a namespace gone is forgotten.
            self._reported = reported
        for namespace, last in reused.items():
            summary.unchanged.append(namespace)
            summary.reused.append(namespace)
            self._add_counts(summary, last.counts)
        for results in by_namespace.values():
            self._add_counts(summary, results.counts)
        logger.info(
            "background scan: %d objects, %s; reports: %d written, %d unchanged (%d not judged "
            "again), %d deleted; in %.1fs",
            summary.objects,
            ", ".join(f"{n} {k}" for k, n in sorted(summary.counts.items())) or "no results",
            len(summary.written),
            len(summary.unchanged),
            len(summary.reused),
            len(summary.deleted),
            time.monotonic() - started,
        )
        return summary

    @staticmethod
    def _add_counts(summary: ScanSummary, counts: Mapping[str, int]) -> None:
        for outcome, count in counts.items():
            summary.counts[outcome] = summary.counts.get(outcome, 0) + count

    async def _scopes(self, summary: ScanSummary, keep: set[str]) -> dict[str, _Scope]:
        """The objects to judge, by namespace, with the policies that apply there: only the
        namespaces the webhooks see, and only objects no scanned kind controls."""
        scopes: dict[str, _Scope] = {}
        skipped: set[str] = set()  # not scanned, or no policy applies
        async for obj in self._objects(summary):
            namespace = obj["metadata"].get("namespace", "")
            if namespace in skipped or namespace in keep:
                continue
            scope = scopes.get(namespace)
            if scope is None:
                try:
                    labels = await self._policies.namespace_labels(namespace)
                except Exception as error:  # e.g. deleted since it was listed: next cycle
                    logger.warning("background scan skips namespace %s: %s", namespace, error)
                    keep.add(namespace)
                    continue
                policies = engine.applicable(self._policies.policies(), namespace, labels)
                if not scanned_namespace(namespace, labels, self._own_namespace) or not policies:
                    skipped.add(namespace)
                    continue
                scope = scopes[namespace] = _Scope(tuple(policies))
            if not reports.controlled_by_scanned_kind(obj):
                scope.objects.append(obj)
        return scopes

    async def _judged_rows(
        self, obj: dict[str, Any], namespace: str, policies: Sequence[engine.CompiledPolicy]
    ) -> list[reports.Result]:
        try:
            return await self._judge(obj, namespace, policies)
        except Exception as error:  # one object must not cost every namespace its reports.report
            logger.warning(
                "background scan cannot judge %s/%s: %r",
                namespace,
                obj["metadata"].get("name", ""),
                error,
            )
            return [reports.error_result(obj, f"could not be judged: {error!r}")]

    async def _judge(
        self, obj: Mapping[str, Any], namespace: str, policies: Sequence[engine.CompiledPolicy]
    ) -> list[reports.Result]:
        group_kind = (str(obj.get("apiVersion", "")).rpartition("/")[0], str(obj.get("kind")))
        try:
            images = workloads.find_images(obj, group_kind)
        except workloads.MalformedWorkloadError as error:
            return [reports.malformed_result(obj, error)]
        # The verifier keeps to the deadline; the timeout is for one that does not, so a hung
        # registry call cannot stall every later object (the webhook has server.py's).
        decision = await asyncio.wait_for(
            webhook.judge(
                images,
                policies,
                obj=obj,
                namespace=namespace,
                group_kind=group_kind,
                verifier=self._verifier,
                keychains=self._keychains,
                deadline=time.monotonic() + OBJECT_DEADLINE,
            ),
            OBJECT_DEADLINE + 1,
        )
        return reports.results_for(obj, decision, policies)

    async def _objects(self, summary: ScanSummary) -> AsyncIterator[dict[str, Any]]:
        """Every scanned object, from the inventory the scanner's `run()` keeps by watching
        (inventory.py); a scan on its own (`scan_once()` with no `run()`) lists them first. A
        kind not known to be current makes the summary incomplete. The scan rests after each
        PAGE_SIZE objects it judges, as after each page it lists."""
        if not self._inventory.running:
            await self._inventory.refresh(self._pace.rest)
        stale = self._inventory.not_current()
        if stale:
            logger.warning("background scan: %s not current", ", ".join(stale))
            summary.complete = False
        for count, obj in enumerate(self._inventory.objects(), 1):
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # where the loop serves anything else, it gets turns
            yield obj
            if count % inventory.PAGE_SIZE == 0:
                await self._pace.rest()

    async def _stored_reports(self) -> dict[str, reports.StoredReport] | None:
        """imagegate's stored reports by namespace; None when they cannot be read (then none is
        written: a missing CRD is said once)."""
        objects = client.CustomObjectsApi(self._api)
        try:
            existing = await asyncio.to_thread(self._report_metadata, objects)
        except client.ApiException as error:
            if error.status == 404:
                if not self._crd_missing:
                    logger.warning(
                        "PolicyReport CRD not installed: install it with the chart's "
                        "policyReports.installCRD=true; background scan results are not written"
                    )
                self._crd_missing = True
                return None
            logger.warning("cannot list PolicyReports: %s (%s)", error.reason, error.status)
            return None
        self._crd_missing = False
        return {
            item["metadata"]["namespace"]: reports.StoredReport.from_metadata(item["metadata"])
            for item in existing.get("items") or []
            if item["metadata"].get("name") == reports.REPORT_NAME
        }

    async def _write(
        self,
        by_namespace: Mapping[str, reports.NamespaceResults],
        scopes: Mapping[str, _Scope],
        summary: ScanSummary,
        keep: set[str],
        stored: Mapping[str, reports.StoredReport],
        reported: dict[str, _Reported],
    ) -> None:
        objects = client.CustomObjectsApi(self._api)
        now = self._clock()
        for namespace, results in sorted(by_namespace.items()):
            try:
                written, digest = await asyncio.to_thread(
                    self._put,
                    objects,
                    namespace,
                    results,
                    now,
                    stored.get(namespace),
                    trusted=self._trusts_stored(namespace),
                )
                if written:
                    summary.written.append(namespace)
                    self._written_at[namespace] = self._monotonic()
                else:
                    summary.unchanged.append(namespace)
                scope = scopes[namespace]
                if _verdict_free(scope.policies) and not results.counts.get("error"):
                    # An error may pass (a deadline, a registry call): judge it again next time.
                    reported[namespace] = _Reported(
                        scope.key(), scope.policies, dict(results.counts), digest
                    )
            except client.ApiException as error:
                # A conflict (another replica wrote it) is fine: the next cycle writes again.
                logger.warning(
                    "cannot write PolicyReport %s/%s: %s (%s)",
                    namespace,
                    reports.REPORT_NAME,
                    error.reason,
                    error.status,
                )
            await self._pace.rest()  # a report is written: the API server's work, mostly
        if not summary.complete:
            # A kind that could not be listed (a 403, a 500) is not a kind with no violations:
            # deleting on a partial view would make reports flap with every transient error.
            logger.warning("background scan incomplete: no PolicyReport is deleted this cycle")
            return
        for namespace in sorted(set(stored) - set(by_namespace) - set(reported) - keep):
            try:
                await asyncio.to_thread(
                    objects.delete_namespaced_custom_object,
                    reports.GROUP,
                    reports.VERSION,
                    namespace,
                    reports.PLURAL,
                    reports.REPORT_NAME,
                )
                summary.deleted.append(namespace)
                self._written_at.pop(namespace, None)
            except client.ApiException as error:
                if error.status != 404:
                    logger.warning(
                        "cannot delete PolicyReport %s/%s: %s",
                        namespace,
                        reports.REPORT_NAME,
                        error.reason,
                    )
            await self._pace.rest()

    def _trusts_stored(self, namespace: str) -> bool:
        """Whether the stored report may be left alone when it says the same (REWRITE_EVERY)."""
        written_at = self._written_at.get(namespace)
        return written_at is not None and self._monotonic() - written_at < self._rewrite_every

    @staticmethod
    def _report_metadata(objects: client.CustomObjectsApi) -> dict[str, Any]:
        """imagegate's PolicyReports, metadata only: whole reports would be up to MAX_RESULTS
        rows each, parsed (holding the GIL) only to read their resourceVersions."""
        response: Any = objects.list_cluster_custom_object(
            reports.GROUP,
            reports.VERSION,
            reports.PLURAL,
            label_selector=audit.MANAGED_BY_SELECTOR,
            _headers={"Accept": METADATA_ONLY},
            _preload_content=False,
        )
        try:
            found: dict[str, Any] = json.loads(response.data)
        finally:
            response.release_conn()
        return found

    @staticmethod
    def _put(
        objects: client.CustomObjectsApi,
        namespace: str,
        results: reports.NamespaceResults,
        now: datetime.datetime,
        stored: reports.StoredReport | None,
        *,
        trusted: bool,
    ) -> tuple[bool, str]:
        """Create or replace one report unless the stored one says the same and is `trusted`:
        whether it was written, and the report's digest. Built here, off the event loop (a
        thousand rows take tens of milliseconds); the stored copy the API server answers with
        is left unread."""
        body = reports.report(namespace, results.listed(), now, counts=results.counts)
        digest = str(body["metadata"]["annotations"][reports.DIGEST_ANNOTATION])
        if trusted and stored is not None and stored.says_digest(digest):
            return False, digest
        response: Any
        if stored is not None:
            body["metadata"]["resourceVersion"] = stored.resource_version
            response = objects.replace_namespaced_custom_object(
                reports.GROUP,
                reports.VERSION,
                namespace,
                reports.PLURAL,
                reports.REPORT_NAME,
                body,
                field_manager=reports.FIELD_MANAGER,
                _preload_content=False,
            )
        else:
            response = objects.create_namespaced_custom_object(
                reports.GROUP,
                reports.VERSION,
                namespace,
                reports.PLURAL,
                body,
                field_manager=reports.FIELD_MANAGER,
                _preload_content=False,
            )
        response.release_conn()
        return True, digest
