"""The scan's PolicyReports: one row per judged image (`Result`), and the `wgpolicyk8s.io/v1alpha2`
PolicyReport body for a namespace. Pure: the scanner (scan.py) lists, judges and writes."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from imagegate.admission import records as audit
from imagegate.core import workloads
from imagegate.policy import engine

GROUP, VERSION, PLURAL = "wgpolicyk8s.io", "v1alpha2", "policyreports"
REPORT_NAME = "imagegate"
CATEGORY = "Image provenance"
#: etcd objects are capped at ~1.5 MiB; a report this long is already past reading.
MAX_RESULTS = 1000
#: On a report that lists only MAX_RESULTS of its results: how many it leaves out.
TRUNCATED_ANNOTATION = "imagegate.dev/truncated"
#: What a report says (its summary and rows, timestamps aside) as a SHA-256: a scan that finds
#: the same leaves the stored report alone (design.md §14: storing a 1,000-row report costs the
#: API server about 0.6 CPU-seconds, 50 of them far more than the scan's own work).
DIGEST_ANNOTATION = "imagegate.dev/results-digest"
#: The field manager of the scan's writes: a report whose fields were all last written by it
#: has not been edited by anyone else since.
FIELD_MANAGER = "imagegate-scan"

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
    #: The hardened equivalent a rewrite rule names for the image ("" when none): design.md §10.
    suggestion: str = ""
    #: "rewrite" when the mutating webhook would rewrite the image on its next admission.
    action: str = ""
    #: The version the suggestion drops (a latest-only target), if any.
    dropped_version: str = ""

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
            "properties": self.properties,
        }

    @property
    def properties(self) -> dict[str, str]:
        found = {"image": self.image, "container": self.container, "path": self.path}
        extra = {
            "suggestion": self.suggestion,
            "action": self.action,
            "droppedVersion": self.dropped_version,
        }
        return found | {key: value for key, value in extra.items() if value}


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


def results_for(
    obj: Mapping[str, Any],
    decision: engine.Decision,
    policies: Sequence[engine.CompiledPolicy] = (),
) -> list[Result]:
    """The report rows of one object's decision: a row per (image, policy) judged.

    `policies` are the applicable ones: where an enforce policy's rewrite applies to a stored
    image and the target comes from trusted sources, the mutating webhook would rewrite it on
    its next admission, so its violation is a "warn" that says so, not a "fail" (design.md §10).
    """
    reference = reference_of(obj)
    rows = []
    for image in decision.images:
        container = image.planned.container
        pending = _pending_rewrite(container, policies)

        def row(
            policy: str,
            result: str,
            message: str,
            suggestion: str = "",
            container: workloads.ContainerImage = container,
            pending: engine.PlannedImage | None = pending,
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
                suggestion=pending.final_text if pending else suggestion,
                action="rewrite" if pending else "",
                dropped_version=(pending.dropped_version or "") if pending else "",
            )

        for violation in image.violations:
            message = engine.describe(image, violation)
            enforced = violation.policy.mode is engine.Mode.ENFORCE
            if "registry error" in violation.reason:
                outcome = "error"  # not a verdict on the image: nobody could look
            elif enforced and pending is not None and _admissible(pending, policies):
                outcome, message = "warn", _rewritten_message(pending, violation)
            elif enforced:
                outcome = "fail"
            else:
                outcome = "warn"
            rows.append(
                row(violation.policy.display_name, outcome, message, violation.suggestion or "")
            )
        for policy, source in image.trusted_by:
            if image.planned.rewritten_by is not None and pending is not None:
                # Judged as its Pods will run (mutation scope Pods): they are admitted, but the
                # stored spec still names the original, so the migration is still to be made.
                rows.append(row(policy, "warn", _left_to_pods_message(pending, source)))
            else:
                rows.append(row(policy, "pass", f"{container.image!r} is from source {source}"))
    return rows


def _pending_rewrite(
    container: workloads.ContainerImage, policies: Sequence[engine.CompiledPolicy]
) -> engine.PlannedImage | None:
    """What the mutating webhook would make of the stored image, when it would change it."""
    if not policies:
        return None
    [planned] = engine.plan_rewrites([container], policies, apply=True)
    return planned if planned.rewritten_by and planned.final != planned.original else None


def _admissible(pending: engine.PlannedImage, policies: Sequence[engine.CompiledPolicy]) -> bool:
    """Whether the rewritten image comes from sources every enforce policy trusts (signatures
    are verified at admission: a target that fails is not rewritten, and then denied)."""
    return pending.final is not None and engine.trusted_by_sources(pending.final, policies)


def _rewritten_message(pending: engine.PlannedImage, violation: engine.Violation) -> str:
    dropping = engine.dropping(pending.dropped_version)
    return (
        f"rewritten: {pending.container.where} image {pending.container.image!r} is rewritten to "
        f"{pending.final_text} by policy {pending.rewritten_by} when next admitted"
        + (f", {dropping}" if dropping else "")
        + f" (as stored it is not admitted: {violation.reason})"
    )


def _left_to_pods_message(pending: engine.PlannedImage, source: str) -> str:
    dropping = engine.dropping(pending.dropped_version)
    return (
        f"rewritten: {pending.container.where} image {pending.container.image!r} is rewritten to "
        f"{pending.final_text} by policy {pending.rewritten_by} in every Pod this object makes "
        f"(mutation scope Pods; from source {source})"
        + (f", {dropping}" if dropping else "")
        + "; the stored spec still names the original"
    )


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
        annotations[TRUNCATED_ANNOTATION] = f"{unlisted} results not listed"
    rows = [r.to_json(timestamp) for r in ordered]
    annotations[DIGEST_ANNOTATION] = _digest(summary, rows)
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
        "results": rows,
    }


def _digest(summary: Mapping[str, int], rows: Sequence[Mapping[str, Any]]) -> str:
    """Over the rows as rendered (a change in how a row is written changes it too), without
    their timestamps: a row found again keeps the time it was first found."""
    said = {
        "summary": summary,
        "results": [
            {key: value for key, value in row.items() if key != "timestamp"} for row in rows
        ],
    }
    encoded = json.dumps(said, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True)
class StoredReport:
    """A report as the scan's metadata-only list shows it: enough to replace it, or to see that
    the new one would say the same."""

    resource_version: str
    digest: str
    #: Every field was last written by the scan (FIELD_MANAGER): nobody has edited it since.
    untouched: bool

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> StoredReport:
        managers = {
            entry.get("manager")
            for entry in metadata.get("managedFields") or []
            if isinstance(entry, Mapping)
        }
        annotations = metadata.get("annotations") or {}
        return cls(
            resource_version=str(metadata.get("resourceVersion", "")),
            digest=str(annotations.get(DIGEST_ANNOTATION, "")),
            untouched=managers == {FIELD_MANAGER},
        )

    def says(self, body: Mapping[str, Any]) -> bool:
        """Whether storing `body` would change nothing but timestamps."""
        return self.says_digest(str(body["metadata"]["annotations"][DIGEST_ANNOTATION]))

    def says_digest(self, digest: str) -> bool:
        """Whether storing a report with this digest would change nothing but timestamps."""
        return self.untouched and bool(self.digest) and self.digest == digest
