"""The audit trail of admissions: one `AuditEntry` per image a policy judged or rewrote.

The webhooks turn each decision into entries and hand them to recorders (Kubernetes Events,
status counters, metrics). Pure: recorders do the I/O, and never block or fail admission.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from imagegate.core import workloads
from imagegate.policy import engine

MAX_MESSAGE = 1024
#: The label on everything imagegate writes (Events, PolicyReports, its certificate Secret),
#: and the selector that lists those objects back.
MANAGED_BY = {"app.kubernetes.io/managed-by": "imagegate"}
MANAGED_BY_SELECTOR = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())


class Action(enum.StrEnum):
    DENIED = "denied"
    WARNED = "warned"
    AUDITED = "audited"
    REWRITTEN = "rewritten"

    @property
    def reason(self) -> str:
        return "Image" + self.value.capitalize()


_ACTION_OF_OUTCOME = {
    engine.Mode.ENFORCE: Action.DENIED,
    engine.Mode.WARN: Action.WARNED,
    engine.Mode.AUDIT: Action.AUDITED,
}


@dataclass(frozen=True)
class AuditEntry:
    """One image judged (or rewritten) by one policy, in one admission."""

    action: Action
    policy: engine.CompiledPolicy
    namespace: str
    #: "Kind/name" of the object admitted (a Deployment, not its future Pods).
    obj: str
    #: The container's name (or the image volume's: see `kind`).
    container: str
    image: str
    #: Why (a violation's reason) or what instead (the rewrite target).
    detail: str
    dry_run: bool = False
    #: Which pod spec list the image is in (`workloads.ContainerImage.kind`).
    kind: str = "containers"

    def message(self) -> str:
        where = f"{self.obj} in {self.namespace}" if self.namespace else self.obj
        what = f"{workloads.describe(self.kind, self.container)} image {self.image!r}"
        if self.action is Action.REWRITTEN:
            text = f"rewrote {what} of {where} to {self.detail}"
        else:
            text = f"{self.action.value} {what} of {where}: {self.detail}"
        return text[:MAX_MESSAGE]


class AuditRecorder(Protocol):
    """Told of every entry, dry-run ones included (recorders with side effects skip those).

    Called on the admission path: must return at once (queue, and write later).
    """

    def record(self, entry: AuditEntry) -> None: ...


def violation_entries(
    decision: engine.Decision, namespace: str, obj: str, *, dry_run: bool
) -> list[AuditEntry]:
    return [
        AuditEntry(
            _ACTION_OF_OUTCOME[violation.policy.mode],
            violation.policy,
            namespace,
            obj,
            image.planned.container.container_name,
            image.planned.container.image,
            violation.reason,
            dry_run,
            image.planned.container.kind,
        )
        for image in decision.images
        for violation in image.violations
    ]


def rewrite_entries(
    planned: Sequence[engine.PlannedImage],
    policies: Sequence[engine.CompiledPolicy],
    namespace: str,
    obj: str,
    *,
    dry_run: bool,
) -> list[AuditEntry]:
    by_name = {policy.display_name: policy for policy in policies}
    return [
        AuditEntry(
            Action.REWRITTEN,
            by_name[image.rewritten_by],
            namespace,
            obj,
            image.container.container_name,
            image.container.image,
            _target(image),
            dry_run,
            image.container.kind,
        )
        for image in planned
        if image.rewritten_by is not None and image.rewritten_by in by_name
    ]


def _target(image: engine.PlannedImage) -> str:
    """The rewrite target, and the version it dropped if any (the Event says so)."""
    dropped = engine.dropping(image.dropped_version)
    return f"{image.final_text}, {dropped}" if dropped else image.final_text
