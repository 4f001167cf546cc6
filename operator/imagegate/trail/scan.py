"""Background scan: what runs today that the policies would deny, as PolicyReports.

Admission only sees what is created or changed after a policy exists. The scan judges every
workload already in the cluster with the same engine calls as `/validate` (so it reaches the
same verdict for an object as stored) and writes one `wgpolicyk8s.io/v1alpha2` PolicyReport named
`imagegate` per namespace, which `kubectl get polr -A`, Policy Reporter and `imagegate audit
--reports` read. It runs every `interval` and soon after a policy changes.

Each image shows up once, on the object an admin edits: objects controlled by another scanned
kind (a Deployment's ReplicaSets and Pods, a CronJob's Jobs) are skipped. Namespaces the webhook
never sees (kube-system, imagegate's own, the opt-out label) are not scanned. Nothing here is on
the admission path: a missing CRD or an RBAC refusal is logged, and scanning goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kubernetes import client

from imagegate.admission import configurations as webhookconfig
from imagegate.admission import records as audit
from imagegate.admission import reviewers as webhook
from imagegate.core import workloads
from imagegate.policy import engine

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "wgpolicyk8s.io", "v1alpha2", "policyreports"
REPORT_NAME = "imagegate"
CATEGORY = "Image provenance"
#: etcd objects are capped at ~1.5 MiB; a report this long is already past reading.
MAX_RESULTS = 1000
DEBOUNCE = 2.0
OBJECT_DEADLINE = 10.0
#: Objects per LIST request: a page is parsed in well under a millisecond per object, and a
#: continue token stays valid for minutes (etcd compaction), far longer than a scan takes.
PAGE_SIZE = 100
#: Objects read between two returns to the event loop, where admission requests wait.
YIELD_EVERY = 1
#: Asks a LIST for PartialObjectMetadataList: each item's metadata, not the object.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"

#: (API group, kind) → (apiVersion, plural) of every kind with a pod spec that is scanned.
SCANNED: Mapping[tuple[str, str], tuple[str, str]] = {
    ("", "Pod"): ("v1", "pods"),
    ("", "ReplicationController"): ("v1", "replicationcontrollers"),
    ("apps", "Deployment"): ("apps/v1", "deployments"),
    ("apps", "StatefulSet"): ("apps/v1", "statefulsets"),
    ("apps", "DaemonSet"): ("apps/v1", "daemonsets"),
    ("apps", "ReplicaSet"): ("apps/v1", "replicasets"),
    ("batch", "Job"): ("batch/v1", "jobs"),
    ("batch", "CronJob"): ("batch/v1", "cronjobs"),
}
_SCANNED_KINDS = {kind for _, kind in SCANNED}


#: The fields of a report row's object reference, in `Result.reference`'s order.
REFERENCE_KEYS = ("apiVersion", "kind", "name", "namespace", "uid")


class Result(NamedTuple):
    """One report row: strings only, so that a scan can hold it as a plain tuple (see
    `NamespaceResults`)."""

    policy: str
    rule: str
    result: str  # pass | fail | warn | error
    message: str
    reference: tuple[str, str, str, str, str]  # REFERENCE_KEYS
    image: str
    container: str
    path: str

    @property
    def resource(self) -> dict[str, str]:
        return dict(zip(REFERENCE_KEYS, self.reference, strict=True))

    def to_json(self, timestamp: int) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "rule": self.rule,
            "result": self.result,
            "message": self.message,
            "severity": {"fail": "high", "error": "high", "warn": "medium"}.get(
                self.result, "info"
            ),
            "category": CATEGORY,
            "source": "imagegate",
            "scored": True,
            "timestamp": {"seconds": timestamp, "nanos": 0},
            "resources": [self.resource],
            "properties": {"image": self.image, "container": self.container, "path": self.path},
        }


# -- pure -----------------------------------------------------------------------------------------


def controlled_by_scanned_kind(obj: Mapping[str, Any]) -> bool:
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(
        isinstance(owner, Mapping)
        and owner.get("controller")
        and owner.get("kind") in _SCANNED_KINDS
        for owner in owners
    )


def object_reference(obj: Mapping[str, Any]) -> dict[str, str]:
    metadata = obj.get("metadata") or {}
    return {
        "apiVersion": str(obj.get("apiVersion", "")),
        "kind": str(obj.get("kind", "")),
        "name": str(metadata.get("name", "")),
        "namespace": str(metadata.get("namespace", "")),
        "uid": str(metadata.get("uid", "")),
    }


def reference_of(obj: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    found = object_reference(obj)
    return (
        found["apiVersion"],
        found["kind"],
        found["name"],
        found["namespace"],
        found["uid"],
    )


def results_for(obj: Mapping[str, Any], decision: engine.Decision) -> list[Result]:
    """The report rows of one object's decision: a row per (image, policy) judged."""
    reference = reference_of(obj)
    rows = []
    for image in decision.images:
        container = image.planned.container

        def row(
            policy: str,
            result: str,
            message: str,
            container: workloads.ContainerImage = container,
        ) -> Result:
            return Result(
                policy=policy,
                rule=container.container_name or container.pointer,
                result=result,
                message=message,
                reference=reference,
                image=container.image,
                container=container.container_name,
                path=container.pointer,
            )

        for violation in image.violations:
            if "registry error" in violation.reason:
                outcome = "error"  # not a verdict on the image: nobody could look
            elif violation.policy.mode is engine.Mode.ENFORCE:
                outcome = "fail"
            else:
                outcome = "warn"
            rows.append(
                row(violation.policy.display_name, outcome, engine.describe(image, violation))
            )
        for policy, source in image.trusted_by:
            rows.append(row(policy, "pass", f"{container.image!r} is from source {source}"))
    return rows


def malformed_result(obj: Mapping[str, Any], error: workloads.MalformedWorkloadError) -> Result:
    return error_result(obj, f"cannot read the pod spec: {error.user_message}", rule="pod-spec")


def error_result(obj: Mapping[str, Any], message: str, *, rule: str = "scan") -> Result:
    """One object that could not be judged: a row that says so, never a missing row or a pass."""
    return Result(
        policy="imagegate",
        rule=rule,
        result="error",
        message=message,
        reference=reference_of(obj),
        image="",
        container="",
        path="",
    )


def report_order(result: Result) -> tuple[int, str, str, str, str]:
    """Worst first, then by object: the order a report lists its rows in."""
    return (
        ("error", "fail", "warn", "pass").index(result.result),
        result.reference[1],  # kind
        result.reference[2],  # name
        result.path,
        result.policy,
    )


@dataclass
class NamespaceResults:
    """One namespace's results as its report will show them: every result counted, only the
    MAX_RESULTS that are listed kept, as plain tuples of strings. The cyclic garbage collector
    stops tracking those after its first pass over them (not Result objects, nor any other
    tuple subclass): a full collection walking 100,000 rows stops the event loop for >100 ms."""

    counts: dict[str, int] = field(default_factory=dict)
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, results: Sequence[Result]) -> None:
        for result in results:
            self.counts[result.result] = self.counts.get(result.result, 0) + 1
            self.rows.append(tuple(result))
        if len(self.rows) > 2 * MAX_RESULTS:
            self.rows.sort(key=lambda row: report_order(Result._make(row)))
            del self.rows[MAX_RESULTS:]

    def listed(self) -> list[Result]:
        return [Result._make(row) for row in self.rows]


def report(
    namespace: str,
    results: Sequence[Result],
    now: datetime.datetime,
    *,
    counts: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The PolicyReport body for one namespace; the summary counts every result, listed or not
    (`counts` when only some of the results are given)."""
    ordered = sorted(results, key=report_order)[:MAX_RESULTS]
    summary = {key: 0 for key in ("pass", "fail", "warn", "error", "skip")}
    if counts is None:
        for result in results:
            summary[result.result] += 1
    else:
        summary.update(counts)
    timestamp = int(now.timestamp())
    annotations = {}
    unlisted = sum(summary.values()) - len(ordered)
    if unlisted > 0:
        annotations["imagegate.dev/truncated"] = f"{unlisted} results not listed"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PolicyReport",
        "metadata": {
            "name": REPORT_NAME,
            "namespace": namespace,
            "labels": dict(audit.MANAGED_BY),
            "annotations": annotations,
        },
        "summary": summary,
        "results": [r.to_json(timestamp) for r in ordered],
    }


def scanned_namespace(name: str, labels: Mapping[str, str], own_namespace: str) -> bool:
    """Only namespaces the webhooks would be sent (webhookconfig's selector, in Python)."""
    return (
        name not in webhookconfig.ALWAYS_EXCLUDED
        and name != own_namespace
        and webhookconfig.OPT_OUT_LABEL not in labels
    )


# -- I/O ------------------------------------------------------------------------------------------


@dataclass
class ScanSummary:
    objects: int = 0
    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    #: False when some kind could not be listed: reports are then written but none deleted.
    complete: bool = True


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
    ) -> None:
        self._api = api
        self._policies = policies
        self._verifier = verifier
        self._keychains = keychains
        self._own_namespace = own_namespace
        self._clock = clock
        self._wake = asyncio.Event()
        self._crd_missing = False

    def trigger(self) -> None:
        """A policy changed: scan again soon."""
        self._wake.set()

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.scan_once()
            except Exception:  # never let the scan die: the next cycle may succeed
                logger.exception("background scan failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            if self._wake.is_set():
                await asyncio.sleep(DEBOUNCE)  # `kubectl apply -f dir/`: one scan, not ten
            self._wake.clear()

    async def scan_once(self) -> ScanSummary:
        summary = ScanSummary()
        by_namespace: dict[str, NamespaceResults] = {}
        #: Namespaces whose objects could not all be judged: their reports are kept, not deleted.
        keep: set[str] = set()
        read = 0
        async for obj in self._objects(summary):
            if read % YIELD_EVERY == 0:
                # judge() holds the loop while it runs: let admission in between objects.
                await asyncio.sleep(0)
            read += 1
            await self._scan_object(obj, summary, by_namespace, keep)
        await self._write(by_namespace, summary, keep)
        for results in by_namespace.values():
            for outcome, count in results.counts.items():
                summary.counts[outcome] = summary.counts.get(outcome, 0) + count
        logger.info(
            "background scan: %d objects, %s",
            summary.objects,
            ", ".join(f"{n} {k}" for k, n in sorted(summary.counts.items())) or "no results",
        )
        return summary

    async def _scan_object(
        self,
        obj: dict[str, Any],
        summary: ScanSummary,
        by_namespace: dict[str, NamespaceResults],
        keep: set[str],
    ) -> None:
        namespace = obj["metadata"].get("namespace", "")
        try:
            labels = await self._policies.namespace_labels(namespace)
        except Exception as error:  # e.g. deleted since the list: judge it next cycle
            logger.warning("background scan skips namespace %s: %s", namespace, error)
            keep.add(namespace)
            return
        if not scanned_namespace(namespace, labels, self._own_namespace):
            return
        if controlled_by_scanned_kind(obj):
            return
        policies = engine.applicable(self._policies.policies(), namespace, labels)
        if not policies:
            return
        summary.objects += 1
        try:
            rows = await self._judge(obj, namespace, policies)
        except Exception as error:  # one object must not cost every namespace its report
            logger.warning(
                "background scan cannot judge %s/%s: %r",
                namespace,
                obj["metadata"].get("name", ""),
                error,
            )
            rows = [error_result(obj, f"could not be judged: {error!r}")]
        by_namespace.setdefault(namespace, NamespaceResults()).add(rows)

    async def _judge(
        self, obj: Mapping[str, Any], namespace: str, policies: Sequence[engine.CompiledPolicy]
    ) -> list[Result]:
        group_kind = (str(obj.get("apiVersion", "")).rpartition("/")[0], str(obj.get("kind")))
        try:
            images = workloads.find_images(obj, group_kind)
        except workloads.MalformedWorkloadError as error:
            return [malformed_result(obj, error)]
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
        return results_for(obj, decision)

    async def _objects(self, summary: ScanSummary) -> AsyncIterator[dict[str, Any]]:
        """Every scanned object as raw JSON, with apiVersion and kind set (lists omit them),
        PAGE_SIZE at a time: never a whole kind as client models, which holds the GIL for
        seconds. A kind that cannot be listed, whole or in part, makes the summary incomplete."""
        for (_, kind), (api_version, plural) in SCANNED.items():
            continue_from = ""  # the list's `continue` token; "" asks for the first page
            while True:
                try:
                    page = await asyncio.to_thread(self._fetch_page, plural, continue_from)
                except client.ApiException as error:
                    logger.warning(
                        "background scan cannot list %s: %s (%s)",
                        plural,
                        error.reason,
                        error.status,
                    )
                    summary.complete = False
                    break
                for item in page.get("items") or []:
                    yield {**item, "apiVersion": api_version, "kind": kind}
                continue_from = (page.get("metadata") or {}).get("continue") or ""
                if not continue_from:
                    break

    def _fetch_page(self, plural: str, token: str) -> dict[str, Any]:
        core, apps, batch = (
            client.CoreV1Api(self._api),
            client.AppsV1Api(self._api),
            client.BatchV1Api(self._api),
        )
        lister: Callable[..., Any] = {
            "pods": core.list_pod_for_all_namespaces,
            "replicationcontrollers": core.list_replication_controller_for_all_namespaces,
            "deployments": apps.list_deployment_for_all_namespaces,
            "statefulsets": apps.list_stateful_set_for_all_namespaces,
            "daemonsets": apps.list_daemon_set_for_all_namespaces,
            "replicasets": apps.list_replica_set_for_all_namespaces,
            "jobs": batch.list_job_for_all_namespaces,
            "cronjobs": batch.list_cron_job_for_all_namespaces,
        }[plural]
        arguments: dict[str, Any] = {"limit": PAGE_SIZE, "_preload_content": False}
        if token:
            arguments["_continue"] = token
        response = lister(**arguments)
        try:
            page: dict[str, Any] = json.loads(response.data)
        finally:
            response.release_conn()
        return page

    async def _write(
        self, by_namespace: Mapping[str, NamespaceResults], summary: ScanSummary, keep: set[str]
    ) -> None:
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
                return
            logger.warning("cannot list PolicyReports: %s (%s)", error.reason, error.status)
            return
        self._crd_missing = False
        versions = {
            item["metadata"]["namespace"]: item["metadata"].get("resourceVersion")
            for item in existing.get("items") or []
            if item["metadata"].get("name") == REPORT_NAME
        }
        now = self._clock()
        for namespace, results in sorted(by_namespace.items()):
            try:
                await asyncio.to_thread(
                    self._put, objects, namespace, results, now, versions.get(namespace)
                )
                summary.written.append(namespace)
            except client.ApiException as error:
                # A conflict (another replica wrote it) is fine: the next cycle writes again.
                logger.warning(
                    "cannot write PolicyReport %s/%s: %s (%s)",
                    namespace,
                    REPORT_NAME,
                    error.reason,
                    error.status,
                )
        if not summary.complete:
            # A kind that could not be listed (a 403, a 500) is not a kind with no violations:
            # deleting on a partial view would make reports flap with every transient error.
            logger.warning("background scan incomplete: no PolicyReport is deleted this cycle")
            return
        for namespace in sorted(set(versions) - set(by_namespace) - keep):
            try:
                await asyncio.to_thread(
                    objects.delete_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    REPORT_NAME,
                )
                summary.deleted.append(namespace)
            except client.ApiException as error:
                if error.status != 404:
                    logger.warning(
                        "cannot delete PolicyReport %s/%s: %s", namespace, REPORT_NAME, error.reason
                    )

    @staticmethod
    def _report_metadata(objects: client.CustomObjectsApi) -> dict[str, Any]:
        """imagegate's PolicyReports, metadata only: whole reports would be up to MAX_RESULTS
        rows each, parsed (holding the GIL) only to read their resourceVersions."""
        response: Any = objects.list_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
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
        results: NamespaceResults,
        now: datetime.datetime,
        version: str | None,
    ) -> None:
        """Create or replace one report, built here (off the event loop: a thousand rows take
        tens of milliseconds), and leave the stored copy the API server answers with unread."""
        body = report(namespace, results.listed(), now, counts=results.counts)
        response: Any
        if version is not None:
            body["metadata"]["resourceVersion"] = version
            response = objects.replace_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, REPORT_NAME, body, _preload_content=False
            )
        else:
            response = objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body, _preload_content=False
            )
        response.release_conn()
