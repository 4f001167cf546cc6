"""`imagegate audit`: the audit trail read back, for admins.

Two questions, two sources:
- "what was denied (warned, rewritten), where, why?" from the Events imagegate wrote (events.py),
  within a time window (Kubernetes keeps Events for an hour by default: `--event-ttl`);
- "what is running that would be denied today?" from the PolicyReports of the background scan
  (`--reports`).

Rows are plain data (`TrailRow`, `Violation`), so the table and `-o json` print the same thing.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import pydantic
from kubernetes import client

from imagegate.admission import records as audit
from imagegate.cluster import kube
from imagegate.errors import UsageError
from imagegate.trail import events
from imagegate.trail import reports as policy_reports

_DURATION = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class TrailRow(pydantic.BaseModel):
    """One imagegate Event: an action a policy took, possibly many times."""

    last_seen: datetime.datetime = pydantic.Field(serialization_alias="lastSeen")
    action: str
    count: int
    policy: str
    namespace: str
    object: str
    container: str
    image: str
    detail: str


class Violation(pydantic.BaseModel):
    """One failing (or warning) result of a PolicyReport."""

    namespace: str
    object: str
    result: str
    policy: str
    image: str
    message: str


def parse_duration(text: str) -> datetime.timedelta:
    match = _DURATION.match(text.strip())
    if match is None:
        raise UsageError(f"--since {text!r}: use a number and s, m, h or d (e.g. 30m, 24h)")
    return datetime.timedelta(seconds=int(match[1]) * _SECONDS[match[2]])


def rows_from_events(
    items: Iterable[Any],
    *,
    since: datetime.datetime,
    namespace: str | None = None,
    policy: str | None = None,
) -> list[TrailRow]:
    """imagegate's Events (CoreV1Event objects) in the window, filtered, newest first."""
    rows = []
    for item in items:
        fields = events.read_annotations(item.metadata.annotations if item.metadata else None)
        if "action" not in fields:
            continue
        seen = item.last_timestamp or item.event_time or item.first_timestamp
        if seen is None or seen < since:
            continue
        if namespace is not None and fields.get("namespace") != namespace:
            continue
        if policy is not None and fields.get("policy") != policy:
            continue
        rows.append(
            TrailRow(
                last_seen=seen,
                action=fields["action"],
                count=item.count or 1,
                policy=fields.get("policy", ""),
                namespace=fields.get("namespace", ""),
                object=fields.get("object", ""),
                container=fields.get("container", ""),
                image=fields.get("image", ""),
                detail=fields.get("detail", ""),
            )
        )
    return sorted(rows, key=lambda row: row.last_seen, reverse=True)


def violations_from_reports(
    reports: Iterable[Mapping[str, Any]],
    *,
    namespace: str | None = None,
    policy: str | None = None,
) -> list[Violation]:
    found = []
    for report in reports:
        report_namespace = (report.get("metadata") or {}).get("namespace", "")
        if namespace is not None and report_namespace != namespace:
            continue
        for result in report.get("results") or []:
            if result.get("result") not in ("fail", "warn", "error"):
                continue
            if policy is not None and result.get("policy") != policy:
                continue
            resources = result.get("resources") or [{}]
            found.append(
                Violation(
                    namespace=report_namespace,
                    object=f"{resources[0].get('kind', '')}/{resources[0].get('name', '')}",
                    result=str(result.get("result")),
                    policy=str(result.get("policy", "")),
                    image=str((result.get("properties") or {}).get("image", "")),
                    message=str(result.get("message", "")),
                )
            )
    return found


def run(
    *,
    kubeconfig: Path | None,
    since: str,
    namespace: str | None,
    policy: str | None,
    output: str,
    reports: bool,
    out: TextIO = sys.stdout,
) -> int:
    window_start = datetime.datetime.now(datetime.UTC) - parse_duration(since)
    api = kube.admin_client(kubeconfig)
    listed = client.CoreV1Api(api).list_event_for_all_namespaces(
        label_selector=audit.MANAGED_BY_SELECTOR
    )
    rows = rows_from_events(listed.items, since=window_start, namespace=namespace, policy=policy)
    violations: list[Violation] = []
    if reports:
        found: Any
        try:
            found = client.CustomObjectsApi(api).list_cluster_custom_object(
                policy_reports.GROUP,
                policy_reports.VERSION,
                policy_reports.PLURAL,
                label_selector=audit.MANAGED_BY_SELECTOR,
            )
        except client.ApiException as error:
            if error.status != 404:
                raise
            print("imagegate: no PolicyReport CRD in this cluster", file=sys.stderr)
            found = {}
        violations = violations_from_reports(
            found.get("items", []) if isinstance(found, dict) else [],
            namespace=namespace,
            policy=policy,
        )
    if output == "json":
        document = {
            "since": window_start.isoformat(),
            "events": [row.model_dump(mode="json", by_alias=True) for row in rows],
            **({"violations": [v.model_dump(mode="json") for v in violations]} if reports else {}),
        }
        json.dump(document, out, indent=2)
        out.write("\n")
        return 0
    _table(
        out,
        ["LAST SEEN", "ACTION", "COUNT", "POLICY", "NAMESPACE", "OBJECT", "IMAGE", "DETAIL"],
        [
            [
                row.last_seen.strftime("%Y-%m-%d %H:%M:%S"),
                row.action.upper(),
                str(row.count),
                row.policy,
                row.namespace,
                f"{row.object}[{row.container}]",
                row.image,
                _short(row.detail),
            ]
            for row in rows
        ],
        empty=f"no imagegate Events since {window_start:%Y-%m-%d %H:%M:%S} UTC",
    )
    if reports:
        out.write("\n")
        _table(
            out,
            ["NAMESPACE", "OBJECT", "RESULT", "POLICY", "IMAGE"],
            [[v.namespace, v.object, v.result.upper(), v.policy, v.image] for v in violations],
            empty="no running workload violates a policy (PolicyReports)",
        )
    return 0


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> None:
    if not rows:
        out.write(empty + "\n")
        return
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            + "\n"
        )
