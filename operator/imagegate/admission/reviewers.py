"""AdmissionReview → engine → AdmissionResponse, for `/mutate` and `/validate`.

The reviewers gather what the pure engine needs (the namespace's labels, signature verdicts,
digests) through the collaborators they are given, and turn its decision into a response. They
hold no state of their own beyond those collaborators, so any number of replicas give the same
answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from imagegate.admission import decisions as decision_log
from imagegate.admission import patches, targets
from imagegate.admission import records as audit
from imagegate.admission import review as admission
from imagegate.core import workloads
from imagegate.policy import engine
from imagegate.registry import staleness
from imagegate.registry.keychain import Keychain

logger = logging.getLogger(__name__)

#: auditAnnotations keys (the API server prefixes them with the webhook's name).
AUDIT_DECISION = "decision"
AUDIT_DETAIL = "detail"
#: `list/name` → the version a rewrite to a latest-only target dropped.
AUDIT_DROPPED = "dropped-versions"
#: The share of the deadline `/mutate` may spend pinning: the rest is `/validate`'s, which the
#: API server calls after it, within the same request.
MUTATE_BUDGET_SHARE = 0.4
#: Seconds before the end of the budget at which a failed lookup counts as out of time.
LATE_MARGIN = 0.05


class PolicySource(Protocol):
    """Where the compiled policies and namespace labels come from (the operator's caches)."""

    def policies(self) -> Sequence[engine.CompiledPolicy]: ...

    async def namespace_labels(self, namespace: str) -> Mapping[str, str]: ...


SignatureVerifier = targets.SignatureVerifier


class KeychainSource(Protocol):
    """Registry credentials for one admission (policy Secrets, imagePullSecrets, account's)."""

    async def keychain(
        self,
        namespace: str,
        pull: workloads.PullContext,
        policies: Sequence[engine.CompiledPolicy],
    ) -> Keychain: ...


DigestResolver = targets.DigestResolver


async def _keychain(
    source: KeychainSource | None,
    obj: Mapping[str, Any] | None,
    namespace: str,
    group_kind: tuple[str, str],
    policies: Sequence[engine.CompiledPolicy],
) -> Keychain | None:
    """Read only when a registry will be asked: most admissions never touch a Secret."""
    if source is None or obj is None:
        return None
    pull = workloads.pull_context(obj, group_kind)
    return await source.keychain(namespace, pull, policies)


class _AdmissionKeychain:
    """The registry credentials of one admission, read at most once and only when a registry
    is asked: target checks and pins share it (reading pull Secrets costs API calls)."""

    def __init__(
        self,
        source: KeychainSource | None,
        request: admission.AdmissionRequest,
        policies: Sequence[engine.CompiledPolicy],
    ) -> None:
        self._source = source
        self._request = request
        self._policies = policies
        self._future: asyncio.Future[Keychain | None] | None = None

    def get(self) -> Awaitable[Keychain | None]:
        if self._future is None:
            request = self._request
            self._future = asyncio.ensure_future(
                _keychain(
                    self._source,
                    request.object,
                    request.namespace,
                    (request.kind.group, request.kind.kind),
                    self._policies,
                )
            )
        # Shielded: a lookup cut off by its budget must not cancel the read the others await.
        return asyncio.shield(self._future)

    async def close(self) -> None:
        """Stop a read still going (the admission is answered without it)."""
        if self._future is not None:
            self._future.cancel()
            await asyncio.gather(self._future, return_exceptions=True)


async def judge(
    images: Sequence[workloads.ContainerImage],
    policies: Sequence[engine.CompiledPolicy],
    *,
    obj: Mapping[str, Any] | None,
    namespace: str,
    group_kind: tuple[str, str],
    verifier: SignatureVerifier | None,
    keychains: KeychainSource | None,
    deadline: float,
) -> engine.Decision:
    """The decision on images as stored: what `/validate` and the background scan both say.

    Signature verdicts are gathered (with the object's pull credentials) only when a policy
    asks for signatures. A controller that `/mutate` leaves as written (mutation scope Pods) is
    judged as its Pods will run: with the rewrites applied (docs/design.md §5.1).
    """
    memoised = engine.memoised_decision(images, policies, group_kind)
    if memoised is not None:
        return memoised
    as_pods = engine.judged_as_pods(group_kind, policies)
    planned = engine.plan_rewrites(images, policies, apply=as_pods)
    checks = engine.signature_checks(planned, policies)
    if not checks:
        # No verdict to gather: the decision is a pure function of images, policies and kind
        # (design.md §4.10), and the next admission of the same images gets it from memory.
        decision = engine.evaluate(planned, policies, {})
        engine.memoise_decision(images, policies, group_kind, decision)
        return decision
    verdicts: Mapping[engine.SignatureCheck, engine.SignatureVerdict] = {}
    if verifier is not None:
        keychain = await _keychain(keychains, obj, namespace, group_kind, policies)
        verdicts = await verifier.verify(checks, deadline, keychain)
    return engine.evaluate(planned, policies, verdicts)


def _images(request: admission.AdmissionRequest) -> list[workloads.ContainerImage] | None:
    """The images to judge, or None when the request has nothing imagegate looks at."""
    if request.operation not in ("CREATE", "UPDATE") or request.object is None:
        return None
    if request.sub_resource not in ("", "ephemeralcontainers"):
        return None  # status, scale, binding, ...: no new images
    group_kind = (request.kind.group, request.kind.kind)
    if request.operation == "UPDATE" and request.old_object is not None:
        # Only new or changed images need a decision: unchanged ones were judged when they were
        # admitted (and the background scan reports them against today's policies). Judging them
        # again would deny a label or finalizer change after a policy is tightened, and pinning
        # them again would restart a Pod's container or roll out a Deployment. oldObject comes
        # from storage, not from the client, so it cannot be used to pass an image off as old.
        return workloads.new_images(request.object, request.old_object, group_kind)
    # CREATE, or an UPDATE without oldObject (the API server always sends one): judge all.
    return workloads.find_images(request.object, group_kind)


async def _scope(
    request: admission.AdmissionRequest, source: PolicySource
) -> tuple[list[workloads.ContainerImage], list[engine.CompiledPolicy]] | None:
    """The images to judge and the policies that apply; None when there is nothing to do.

    Raises `workloads.MalformedWorkloadError` for an object whose pod spec cannot be read.
    """
    images = _images(request)
    if not images:
        return None
    labels = await source.namespace_labels(request.namespace) if request.namespace else {}
    policies = engine.applicable(source.policies(), request.namespace, labels)
    return (images, policies) if policies else None


class Validator:
    """`/validate`: judge the images as they will be stored (after any mutation), or, for a
    controller left as written (mutation scope Pods), as its Pods will run."""

    def __init__(
        self,
        policies: PolicySource,
        verifier: SignatureVerifier | None = None,
        recorders: Sequence[audit.AuditRecorder] = (),
        keychains: KeychainSource | None = None,
        decisions: decision_log.DecisionLog | None = None,
    ):
        self._policies = policies
        self._verifier = verifier
        self._recorders = tuple(recorders)
        self._keychains = keychains
        self._decisions = decisions or decision_log.DecisionLog()

    async def __call__(
        self, review: admission.AdmissionReview, deadline: float
    ) -> admission.AdmissionResponse:
        request = review.request
        try:
            scope = await _scope(request, self._policies)
        except workloads.MalformedWorkloadError as error:
            return admission.deny(request.uid, f"imagegate: {error.user_message}", code=400)
        if scope is None:
            return admission.AdmissionResponse(uid=request.uid, allowed=True)
        images, policies = scope
        with staleness.collecting() as stale:
            decision = await judge(
                images,
                policies,
                obj=request.object,
                namespace=request.namespace,
                group_kind=(request.kind.group, request.kind.kind),
                verifier=self._verifier,
                keychains=self._keychains,
                deadline=deadline,
            )
        described = _describe_object(request)
        _record(
            self._recorders,
            audit.violation_entries(
                decision, request.namespace, described, dry_run=request.dry_run
            ),
        )
        warnings = (
            *_pod_rewrites(request, policies, decision, described),
            *decision.derived("warnings", decision.warnings),
            *staleness.warnings(stale),
        )
        detail, detail_text = decision.derived("audit-detail", lambda: _audit_detail(decision))
        self._decisions.log("validate", request, described, decision.allowed, detail, warnings)
        annotations = decision.derived(
            "audit-annotations",
            lambda: admission.AuditAnnotations(
                {
                    AUDIT_DECISION: "allowed" if decision.allowed else "denied",
                    AUDIT_DETAIL: detail_text,
                }
            ),
        )
        if decision.allowed:
            return admission.AdmissionResponse(
                uid=request.uid,
                allowed=True,
                warnings=warnings,
                audit_annotations=annotations,
            )
        return admission.AdmissionResponse(
            uid=request.uid,
            allowed=False,
            message=decision.denial_message(),
            warnings=warnings,
            audit_annotations=annotations,
        )


class Mutator:
    """`/mutate`: rewrite to hardened equivalents and pin digests; never denies on policy.

    Controllers are patched only under mutation scope All (`_left_to_pods`, design.md §5.1).

    Pinning gets `budget` seconds of the deadline (default `MUTATE_BUDGET_SHARE` of it): a slow
    registry then costs the Pod one short wait here, and `/validate`, which decides, keeps the
    rest of its own deadline. Past the budget the images are admitted unpinned with a warning;
    a registry never makes `/mutate` deny.
    """

    def __init__(
        self,
        policies: PolicySource,
        resolver: DigestResolver | None = None,
        keychains: KeychainSource | None = None,
        recorders: Sequence[audit.AuditRecorder] = (),
        *,
        budget: float | None = None,
        decisions: decision_log.DecisionLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        verifier: SignatureVerifier | None = None,
    ):
        """`verifier`: the one `/validate` uses, so a rewrite target is verified as validation
        will verify it (design.md §5.2); with neither it nor a resolver, targets go unchecked."""
        self._policies = policies
        self._resolver = resolver
        self._targets = targets.TargetChecker(resolver, verifier, clock=clock)
        self._keychains = keychains
        self._recorders = tuple(recorders)
        self._budget = budget
        self._decisions = decisions or decision_log.DecisionLog()
        self._clock = clock

    async def __call__(
        self, review: admission.AdmissionReview, deadline: float
    ) -> admission.AdmissionResponse:
        request = review.request
        try:
            scope = await _scope(request, self._policies)
        except workloads.MalformedWorkloadError:
            # Validation denies it with the reason; mutation has nothing safe to change.
            scope = None
        if scope is None or request.object is None:
            return admission.AdmissionResponse(uid=request.uid, allowed=True)
        images, policies = scope
        if not engine.patches_kind((request.kind.group, request.kind.kind), policies):
            return _left_to_pods(request)
        keychain = _AdmissionKeychain(self._keychains, request, policies)
        try:
            return await self._mutate(request, images, policies, deadline, keychain)
        finally:
            await keychain.close()

    async def _mutate(
        self,
        request: admission.AdmissionRequest,
        images: Sequence[workloads.ContainerImage],
        policies: Sequence[engine.CompiledPolicy],
        deadline: float,
        keychain: _AdmissionKeychain,
    ) -> admission.AdmissionResponse:
        if request.object is None:  # the caller checks; a patch needs an object
            raise ValueError("mutation needs the request's object")
        planned = engine.plan_rewrites(images, policies, apply=True)
        warnings: list[str] = []
        window = self._window(deadline)
        planned, target_digests = await self._check_targets(
            planned, policies, window, keychain, warnings
        )
        warnings += targets.dropped_warnings(planned)
        # Only rewritten (and, below, pinned) images change: normalising `nginx` to
        # `docker.io/library/nginx:latest` would only make GitOps tools report drift.
        finals = {
            p.container.pointer: p.final_text if p.rewritten_by else p.container.image
            for p in planned
        }
        pinning = [p for p in policies if p.pin_digests and p.mode is engine.Mode.ENFORCE]
        for image in planned if pinning else ():
            if (digest := target_digests.get(image.container.pointer)) is not None:
                finals[image.container.pointer] = patches.pinned(image, digest)  # as verified
        if self._resolver is not None and pinning:
            to_pin = [
                image
                for image in planned
                if image.final is not None
                and image.final.digest is None
                and image.container.pointer not in target_digests
                # Validation denies an untrusted image: no registry call for nothing.
                and engine.trusted_by_sources(image.final, policies)
            ]
            if to_pin:
                with staleness.collecting() as stale:
                    digests = await self._pin(to_pin, window, keychain, warnings)
                warnings += staleness.warnings(stale)
                for image, digest in digests:
                    # Keep the tag for readers: `repo:tag@digest` runs exactly `digest`.
                    finals[image.container.pointer] = patches.pinned(image, digest)
        patch = patches.patch(request.object, planned, finals)
        rewritten = patches.originals(planned)
        annotations = {AUDIT_DECISION: "rewritten" if rewritten else "unchanged"}
        # Malformed metadata is validation's to deny; a warning alone is no reason to here.
        described = _describe_object(request) if rewritten else _kind_and_name(request)
        if rewritten:
            annotations[AUDIT_DETAIL] = json.dumps(rewritten, separators=(",", ":"), sort_keys=True)
            if dropped := targets.dropped_versions(planned):
                annotations[AUDIT_DROPPED] = json.dumps(dropped, separators=(",", ":"))
            _record(
                self._recorders,
                audit.rewrite_entries(
                    planned, policies, request.namespace, described, dry_run=request.dry_run
                ),
            )
        if rewritten or warnings:
            self._decisions.log(
                "mutate",
                request,
                described,
                True,
                [
                    {"container": key, "image": image, "outcome": "rewritten"}
                    for key, image in sorted(rewritten.items())
                ],
                warnings,
                rewritten=bool(rewritten),
            )
        return admission.AdmissionResponse(
            uid=request.uid,
            allowed=True,
            patch=tuple(patch),
            warnings=tuple(warnings),
            audit_annotations=annotations,
        )

    def _window(self, deadline: float) -> targets.Window:
        """The budget all of this admission's registry lookups share (targets, then pins).

        The registry client is given it as its deadline, so a Retry-After or a retry that would
        overrun it fails at once; the waits also bound what it does not (reading the pull
        Secrets). No deadline and no budget (tests, tools): no bound.
        """
        now = self._clock()
        budget = self._budget
        if budget is None and deadline:
            budget = _budget_of(deadline - now)
        until = 0.0 if budget is None else now + budget
        if deadline and budget is not None:
            until = min(deadline, until)
        return targets.Window(budget, until)

    async def _check_targets(
        self,
        planned: Sequence[engine.PlannedImage],
        policies: Sequence[engine.CompiledPolicy],
        window: targets.Window,
        keychain: _AdmissionKeychain,
        warnings: list[str],
    ) -> tuple[list[engine.PlannedImage], dict[str, str]]:
        """(the images to patch, each kept rewrite's target digest by pointer); each refused
        rewrite is a warning, and its image stays as written (design.md §5.2)."""
        if not any(image.rewritten_by for image in planned) or not self._targets.enabled:
            return list(planned), {}
        with staleness.collecting() as stale:  # a target served from memory says so too
            checked = await self._targets.check(planned, policies, window, keychain.get)
        warnings += staleness.warnings(stale)
        digests: dict[str, str] = {}
        for before, after in zip(planned, checked, strict=True):
            if after.refusal is not None and before.final is not None:
                logger.info(
                    "not rewriting %s to %s: %s",
                    before.container.image,
                    before.final,
                    after.refusal,
                )
                warnings.append(targets.refusal_warning(before, before.final, after.refusal))
            elif after.digest is not None:
                digests[before.container.pointer] = after.digest
        return [c.image for c in checked], digests

    async def _pin(
        self,
        images: Sequence[engine.PlannedImage],
        window: targets.Window,
        keychain: _AdmissionKeychain,
        warnings: list[str],
    ) -> list[tuple[engine.PlannedImage, str]]:
        """The digests found within the budget, all images at once; each miss is a warning."""
        resolver = self._resolver
        if resolver is None:  # the caller checks; say so rather than pin with nothing
            raise RuntimeError("pinning needs a digest resolver")
        budget, until = window.budget, window.until

        async def pin(image: engine.PlannedImage) -> str:
            if image.final is None:  # the caller passes only images with a final reference
                raise ValueError(f"{image.container.pointer} has no reference to pin")
            return await resolver.resolve(image.final, until, await keychain.get())

        tasks = [asyncio.ensure_future(pin(image)) for image in images]
        timeout = None if budget is None else max(0.0, until - self._clock())
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # The client's deadline and the wait end together: an image failed by the one is as
        # late as an image cut off by the other (the margin: the client gives up a hair early).
        late = bool(pending) or (budget is not None and self._clock() >= until - LATE_MARGIN)
        found: list[tuple[engine.PlannedImage, str]] = []
        for image, task in zip(images, tasks, strict=True):
            if task in pending:
                logger.warning("could not pin %s within %.1fs", image.final, budget)
            elif (error := task.exception()) is not None:  # validation will decide
                logger.warning("could not resolve %s for pinning: %s", image.final, error)
                if not late:
                    warnings.append(f"imagegate: could not pin {image.final}: {error}")
            else:
                found.append((image, task.result()))
        if late and len(found) < len(images):
            warnings.append(f"imagegate: could not pin within {budget:.1f}s; validation decides")
        return found


def _left_to_pods(request: admission.AdmissionRequest) -> admission.AdmissionResponse:
    """A controller under mutation scope Pods: stored as written, so GitOps sees no drift; its
    Pods are rewritten and pinned when they are created (docs/design.md §5.1)."""
    return admission.AdmissionResponse(
        uid=request.uid, allowed=True, audit_annotations={AUDIT_DECISION: "left-to-pods"}
    )


def _pod_rewrites(
    request: admission.AdmissionRequest,
    policies: Sequence[engine.CompiledPolicy],
    decision: engine.Decision,
    described: str,
) -> list[str]:
    """The warnings that tell a controller left as written what its Pods will run instead."""
    if not engine.judged_as_pods((request.kind.group, request.kind.kind), policies):
        return []
    return engine.pod_rewrite_warnings([image.planned for image in decision.images], described)


def _budget_of(remaining: float) -> float:
    return max(0.0, remaining) * MUTATE_BUDGET_SHARE


def _record(recorders: Sequence[audit.AuditRecorder], entries: Sequence[audit.AuditEntry]) -> None:
    for recorder in recorders:
        for entry in entries:
            try:
                recorder.record(entry)
            except Exception:  # the trail must never cost an admission
                logger.exception("audit recorder %s failed", type(recorder).__name__)


def _kind_and_name(request: admission.AdmissionRequest) -> str:
    """`Kind/name` from the request alone (never raises)."""
    return f"{request.kind.kind}/{request.name or '*'}"


def _describe_object(request: admission.AdmissionRequest) -> str:
    """`Kind/name` (or `Kind/generateName*`); `MalformedWorkloadError` names a bad field."""
    metadata = (request.object or {}).get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise workloads.MalformedWorkloadError("/metadata is not an object")
    for field in ("name", "generateName"):
        if not isinstance(metadata.get(field, ""), str):
            raise workloads.MalformedWorkloadError(f"/metadata/{field} is not a string")
    name = request.name or metadata.get("name") or (metadata.get("generateName", "") + "*")
    return f"{request.kind.kind}/{name}"


def _audit_detail(decision: engine.Decision) -> tuple[list[dict[str, Any]], str]:
    """Each image's outcome: (for the decision log, as the audit annotation's JSON)."""
    detail = [
        {
            "kind": image.planned.container.kind,
            "container": image.planned.container.container_name,
            "image": image.planned.container.image,
            "outcome": image.outcome.value,
            "violations": [f"{v.policy.display_name}: {v.reason}" for v in image.violations],
        }
        for image in decision.images
    ]
    return detail, json.dumps(detail, separators=(",", ":"))
