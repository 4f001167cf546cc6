"""The decision: which images a workload may run, what to rewrite, what to say. Pure, no I/O.

Two steps, because the second needs facts only I/O can bring (signature verdicts, digests):

1. `plan_rewrites` runs the rewrite rules of every applicable `enforce` policy over each image
   (first matching rule wins) and reports what `warn`/`audit` policies *would* rewrite.
2. `evaluate` checks each final image against every applicable policy (AND across policies, OR
   across a policy's sources, OR across a source's signature authorities) with the verdicts the
   caller gathered, and turns violations into a denial (`enforce`), warnings (`warn`) or records
   (`audit`).

`signature_checks` tells the caller which (image, policy, source) verdicts step 2 will ask for,
so a webhook verifies exactly those and nothing else. A missing verdict is a violation: an image
is never admitted because nobody looked.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from imagegate.core import reference
from imagegate.core.workloads import ContainerImage
from imagegate.policy import catalog as catalogue
from imagegate.policy import glob, model, selectors
from imagegate.policy.glob import CompiledGlob

_T = TypeVar("_T")


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    WARN = "warn"
    AUDIT = "audit"


class MutationScope(enum.StrEnum):
    """Which objects `/mutate` patches (docs/design.md §5.1)."""

    #: Only Pods; controllers are stored as written and judged as their Pods will run.
    PODS = "Pods"
    #: Pods and every kind with a pod template (Deployments, Jobs, ...).
    ALL = "All"


KEEP_TAG = "keep"
#: Images each compiled policy remembers its matching source and rewrite for (design.md §4:
#: every admission asks both of every image under every applicable policy, several times).
MEMO_SIZE = 4096
#: The one kind that runs images itself; every other kind with a pod spec makes Pods from it.
POD_KIND = ("", "Pod")


@dataclass(frozen=True)
class Rewritten:
    """What a rewrite rule makes of an image."""

    image: reference.ImageReference
    #: The original tag when the target could not carry its version (a latest-only catalogue).
    dropped_version: str | None = None


@dataclass(frozen=True)
class CompiledRewrite:
    pattern: CompiledGlob
    registry: str
    repository: str
    #: A fixed tag, or KEEP_TAG to carry the original tag over.
    tag: str

    def apply(self, image: reference.ImageReference) -> Rewritten | None:
        if not self.pattern.matches(image.name):
            return None
        tag = (image.tag or "latest") if self.tag == KEEP_TAG else self.tag
        # The digest named the old image; it means nothing for the new repository.
        return Rewritten(reference.ImageReference(self.registry, self.repository, tag, None))


@dataclass(frozen=True)
class CatalogRewrite:
    """`{catalog: dhi}`: every image the shipped catalogue knows, to its equivalent there."""

    catalog: catalogue.CatalogName
    #: Whether a target that serves only `latest` may drop the image's version.
    allow_latest_only: bool = False

    def apply(self, image: reference.ImageReference) -> Rewritten | None:
        mapped = catalogue.map_image(image, self.catalog)
        if mapped is None:
            return None
        if mapped.dropped_version is not None and not self.allow_latest_only:
            return None  # a silent move from python:3.12 to :latest is what this rule prevents
        return Rewritten(mapped.image, mapped.dropped_version)


RewriteRule = CompiledRewrite | CatalogRewrite


@dataclass(frozen=True)
class CompiledSource:
    name: str
    patterns: tuple[CompiledGlob, ...]
    #: The signature requirement as written in the policy, or None when none is asked for. The
    #: engine never looks inside: the verifier does.
    signatures: model.Signatures | None = None
    #: The in-toto attestations required as well (design.md §9); the verifier judges them.
    attestations: tuple[model.Attestation, ...] = ()
    _any: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_any", glob.compile_any(self.patterns))

    def matches(self, image: reference.ImageReference) -> bool:
        return self._any.fullmatch(image.name) is not None


@dataclass(frozen=True)
class CompiledPolicy:
    name: str
    mode: Mode
    #: None for a ClusterImagePolicy; the namespace of an ImagePolicy (it applies only there).
    namespace: str | None = None
    selector: selectors.LabelSelector = field(default_factory=selectors.LabelSelector)
    pin_digests: bool = True
    mutation_scope: MutationScope = MutationScope.PODS
    sources: tuple[CompiledSource, ...] = ()
    #: Tried in order, first match wins (compile puts from/to rules before catalogue rules).
    rewrites: tuple[RewriteRule, ...] = ()
    #: (namespace as written or None, name) of the policy's registry credential Secrets.
    pull_secrets: tuple[tuple[str | None, str], ...] = ()
    #: The resource's uid, so Events can point at it ("" when compiled from a file).
    uid: str = ""
    #: Why the policy could not be compiled, when it could not (and no good version is known):
    #: then it trusts nothing, rewrites nothing, and every image in its scope is a violation
    #: with this reason. A policy that cannot be read fails closed, never open.
    broken: str | None = None
    #: image name → index of the first source that matches it (-1: none). The policy is
    #: immutable, so the answer never changes; a new version is a new object with an empty memo.
    _source_memo: dict[str, int] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    #: image → what this policy's first matching rewrite makes of it (None: no rule matches).
    _rewrite_memo: dict[reference.ImageReference, Rewritten | None] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    #: Decisions that needed no signature verdict, kept by the first of the applicable
    #: policies (see `memoised_decision`): gone with this object when the policy changes.
    _decision_memo: dict[_DecisionKey, _MemoisedDecision] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    @property
    def display_name(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def rewrite_of(self, image: reference.ImageReference) -> Rewritten | None:
        """The first matching rule's rewrite of `image` (rules in order), memoised."""
        memo = self._rewrite_memo
        if image in memo:
            return memo[image]
        target = next((t for rule in self.rewrites if (t := rule.apply(image)) is not None), None)
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[image] = target
        return target

    def applies_to(self, namespace: str, labels: Mapping[str, str]) -> bool:
        if self.namespace is not None and self.namespace != namespace:
            return False
        return self.selector.matches(labels)


def applicable(
    policies: Iterable[CompiledPolicy], namespace: str, labels: Mapping[str, str]
) -> list[CompiledPolicy]:
    """The policies for a namespace, cluster-wide first, each group by name (a stable order).
    From a `PolicySet`, worked out once per namespace and labels."""
    if isinstance(policies, PolicySet):
        return policies.applicable(namespace, labels)
    return _applicable(policies, namespace, labels)


def _applicable(
    policies: Iterable[CompiledPolicy], namespace: str, labels: Mapping[str, str]
) -> list[CompiledPolicy]:
    chosen = [p for p in policies if p.applies_to(namespace, labels)]
    return sorted(chosen, key=lambda p: (p.namespace is not None, p.namespace or "", p.name))


class PolicySet(tuple[CompiledPolicy, ...]):
    """The policies in force, as the cache holds them between two changes (one set per change):
    which of them apply to a namespace is worked out at its first admission, not at every one
    (with twenty policies, matching every selector was a fifth of an admission's CPU)."""

    _memo: dict[str, tuple[dict[str, str], list[CompiledPolicy]]]

    def __new__(cls, policies: Iterable[CompiledPolicy] = ()) -> PolicySet:
        made = super().__new__(cls, policies)
        made._memo = {}
        return made

    def applicable(self, namespace: str, labels: Mapping[str, str]) -> list[CompiledPolicy]:
        """A copy: a caller may change the list it is given."""
        found = self._memo.get(namespace)
        if found is None or found[0] != labels:  # the namespace's labels changed since
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            found = (dict(labels), _applicable(self, namespace, labels))
            self._memo[namespace] = found
        return list(found[1])


# -- which objects are patched (docs/design.md §5.1) -----------------------------------------


def mutates(policy: CompiledPolicy) -> bool:
    """Whether `/mutate` changes anything for this policy: an enforce policy that rewrites or
    pins (warn and audit policies only preview; a broken one neither rewrites nor pins)."""
    return (
        policy.mode is Mode.ENFORCE
        and policy.broken is None
        and (bool(policy.rewrites) or policy.pin_digests)
    )


def patches_kind(group_kind: tuple[str, str], policies: Sequence[CompiledPolicy]) -> bool:
    """Whether `/mutate` may patch an object of this kind under these (applicable) policies.

    Pods always. Any other kind (a controller's pod template) only when every policy that
    mutates says `All`: one policy asking for `Pods` keeps the controller as written, since a
    half-patched Deployment drifts under GitOps all the same, and its Pods get every rewrite
    and pin anyway.
    """
    if group_kind == POD_KIND:
        return True
    return all(p.mutation_scope is MutationScope.ALL for p in policies if mutates(p))


def judged_as_pods(group_kind: tuple[str, str], policies: Sequence[CompiledPolicy]) -> bool:
    """Whether validation judges the images with the rewrites applied: a controller that
    `/mutate` left as written is judged as the Pods it creates will be, once rewritten."""
    return not patches_kind(group_kind, policies)


def pod_rewrite_warnings(planned: Sequence[PlannedImage], described: str) -> list[str]:
    """What a controller left as written is told about the rewrites its Pods will get."""
    return [
        f"imagegate: Pods of {described} will run {image.final} instead of "
        f"{image.container.image} (policy {image.rewritten_by}, mutation scope Pods"
        f"{_also(dropping(image.dropped_version))})"
        for image in planned
        if image.rewritten_by is not None
    ]


# -- step 1: rewrites -------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedImage:
    """One container image after the rewrite step."""

    container: ContainerImage
    #: The parsed original, or None when it is not a valid reference.
    original: reference.ImageReference | None
    #: What the workload will run: the rewrite when an enforce policy rewrote it.
    final: reference.ImageReference | None
    rewritten_by: str | None = None
    invalid_reason: str | None = None
    #: Rewrites that warn/audit policies would make: (policy, would-be image).
    previews: tuple[tuple[CompiledPolicy, Rewritten], ...] = ()
    #: The version the applied rewrite dropped (a latest-only catalogue), if any.
    dropped_version: str | None = None

    @property
    def final_text(self) -> str:
        return str(self.final) if self.final is not None else self.container.image


def plan_rewrites(
    images: Sequence[ContainerImage], policies: Sequence[CompiledPolicy], *, apply: bool = True
) -> list[PlannedImage]:
    """Apply the first matching rewrite of the enforce policies to each image (`policies` are
    the applicable ones, in `applicable` order).

    With `apply=False` (validation, after the mutating webhook has had its turn) images stay as
    they are and only the previews of warn/audit policies are computed: a rewrite that did not
    happen must not make validation judge an image the workload will not run.
    """
    planned = []
    for container in images:
        try:
            original = reference.parse(container.image)
        except reference.InvalidReferenceError as error:
            planned.append(PlannedImage(container, None, None, invalid_reason=error.user_message))
            continue
        final, rewritten_by, dropped = original, None, None
        previews = []
        for policy in policies:
            target = policy.rewrite_of(original)  # first matching rule of a policy wins
            if target is None:
                continue
            if policy.mode is Mode.ENFORCE and rewritten_by is None:
                if apply:
                    final, rewritten_by = target.image, policy.display_name
                    dropped = target.dropped_version
            elif policy.mode is not Mode.ENFORCE:
                previews.append((policy, target))
        planned.append(
            PlannedImage(
                container,
                original,
                final,
                rewritten_by,
                previews=tuple(previews),
                dropped_version=dropped,
            )
        )
    return planned


def without_rewrite(image: PlannedImage) -> PlannedImage:
    """The image as written: what `/mutate` keeps when a rewrite's target is not admissible
    (missing, unverified), so validation judges what the workload will really run."""
    return replace(image, final=image.original, rewritten_by=None, dropped_version=None)


def with_final(image: PlannedImage, final: reference.ImageReference) -> PlannedImage:
    return replace(image, final=final)


# -- step 2: validation -----------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureCheck:
    """A verdict `evaluate` needs: does `image` carry a signature `source` accepts?"""

    image: str
    policy: str
    source: str
    #: The source's signature requirement, for the verifier (not part of the identity).
    requirement: model.Signatures | None = field(default=None, compare=False, hash=False)
    #: The namespace of an ImagePolicy (None for a ClusterImagePolicy): it bounds which
    #: Secrets the requirement may read.
    policy_namespace: str | None = field(default=None, compare=False, hash=False)
    #: The source's attestation requirements, for the verifier (not part of the identity).
    attestations: tuple[model.Attestation, ...] = field(default=(), compare=False, hash=False)


@dataclass(frozen=True)
class SignatureVerdict:
    verified: bool
    #: Why not, per authority tried ("no signature found", "wrong identity", ...).
    reason: str = ""
    #: The digest that was verified, for pinning.
    digest: str | None = None
    #: What failed: "signature", or "attestation" when the signatures passed and an
    #: attestation requirement did not.
    failed: str = "signature"


def signature_checks(
    planned: Sequence[PlannedImage], policies: Sequence[CompiledPolicy]
) -> list[SignatureCheck]:
    """The verdicts `evaluate` will need, in a stable order and without duplicates."""
    needed: dict[SignatureCheck, None] = {}
    for image in planned:
        if image.final is None:
            continue
        for policy in policies:
            source = _first_matching_source(policy, image.final)
            if source is not None and (source.signatures is not None or source.attestations):
                check = SignatureCheck(
                    str(image.final),
                    policy.display_name,
                    source.name,
                    source.signatures,
                    policy.namespace,
                    source.attestations,
                )
                needed[check] = None
    return list(needed)


def trusted_by_sources(image: reference.ImageReference, policies: Sequence[CompiledPolicy]) -> bool:
    """Whether every enforce policy with sources has one that matches (signatures aside).

    The mutating webhook pins only such images: resolving a digest for an image that validation
    will deny anyway is a registry call for nothing (and counts against pull limits).
    """
    return all(
        policy.broken is None and _first_matching_source(policy, image) is not None
        for policy in policies
        if policy.mode is Mode.ENFORCE and (policy.sources or policy.broken is not None)
    )


class Outcome(enum.StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    WARNED = "warned"
    AUDITED = "audited"


@dataclass(frozen=True)
class Violation:
    policy: CompiledPolicy
    reason: str
    suggestion: str | None = None


@dataclass(frozen=True)
class ImageDecision:
    planned: PlannedImage
    #: Policy and source that trusted the image, for each applicable policy that did.
    trusted_by: tuple[tuple[str, str], ...]
    violations: tuple[Violation, ...]
    #: Computed once, here: every reader of the decision (allowed, warnings, log, audit,
    #: metrics) asks, and a cached_property takes a lock on each read (Python 3.11).
    outcome: Outcome = field(init=False, compare=False)
    allowed: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        outcome = _outcome(self.violations)
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "allowed", outcome is not Outcome.DENIED)


def _outcome(violations: Sequence[Violation]) -> Outcome:
    modes = {v.policy.mode for v in violations}
    if Mode.ENFORCE in modes:
        return Outcome.DENIED
    if Mode.WARN in modes:
        return Outcome.WARNED
    if Mode.AUDIT in modes:
        return Outcome.AUDITED
    return Outcome.ALLOWED


@dataclass(frozen=True)
class Decision:
    images: tuple[ImageDecision, ...]
    #: Whether any policy applied at all (a namespace no policy selects is simply admitted).
    policies_applied: tuple[str, ...]
    #: What readers make of the decision (the audit detail, ...), made once per decision: a
    #: memoised decision answers many admissions, which then share these too.
    _derived: dict[str, Any] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    #: Computed once (every reader asks: the answer, the log, the audit trail).
    allowed: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", all(image.allowed for image in self.images))

    def derived(self, name: str, make: Callable[[], _T]) -> _T:
        """`make()`, computed once for this decision under `name`; `make` must read only the
        decision, and its result must not be changed by callers."""
        if name not in self._derived:
            self._derived[name] = make()
        found: _T = self._derived[name]
        return found

    def denial_message(self) -> str:
        lines = [
            describe(image, violation)
            for image in self.images
            for violation in image.violations
            if violation.policy.mode is Mode.ENFORCE
        ]
        return "; ".join(lines)

    def warnings(self) -> list[str]:
        """kubectl-visible warnings: warn-mode violations and previews of warn-mode rewrites."""
        found = [
            describe(image, violation)
            for image in self.images
            for violation in image.violations
            if violation.policy.mode is Mode.WARN
        ]
        for image in self.images:
            for policy, target in image.planned.previews:
                if policy.mode is Mode.WARN:
                    found.append(
                        f"{_where(image.planned.container)}: policy {policy.display_name} would "
                        f"rewrite {image.planned.container.image} to {target.image}"
                        + _also(dropping(target.dropped_version))
                    )
        return found


def evaluate(
    planned: Sequence[PlannedImage],
    policies: Sequence[CompiledPolicy],
    verdicts: Mapping[SignatureCheck, SignatureVerdict],
) -> Decision:
    """Check every final image against every applicable policy (`policies` from `applicable`)."""
    decisions = []
    for image in planned:
        trusted_by: list[tuple[str, str]] = []
        violations: list[Violation] = []
        for policy in policies:
            reason, source = _judge(image, policy, verdicts)
            if reason is None and source is not None:
                trusted_by.append((policy.display_name, source))
            elif reason is not None:
                violations.append(Violation(policy, reason, _suggest(image, policies)))
        decisions.append(ImageDecision(image, tuple(trusted_by), tuple(violations)))
    return Decision(tuple(decisions), tuple(p.display_name for p in policies))


def _judge(
    image: PlannedImage,
    policy: CompiledPolicy,
    verdicts: Mapping[SignatureCheck, SignatureVerdict],
) -> tuple[str | None, str | None]:
    """(violation reason or None, trusting source or None) for one image under one policy."""
    if policy.broken is not None:
        return policy.broken, None
    if image.final is None:
        return f"invalid image reference: {image.invalid_reason}", None
    if not policy.sources:
        return None, None  # a rewrite-only policy trusts nothing and forbids nothing
    source = _first_matching_source(policy, image.final)
    if source is None:
        return f"{image.final.name} is not from a source this policy trusts", None
    if source.signatures is None and not source.attestations:
        return None, source.name
    check = SignatureCheck(str(image.final), policy.display_name, source.name)
    verdict = verdicts.get(check)
    if verdict is None:
        return f"signature of {image.final} was not verified", None
    if not verdict.verified:
        return (
            f"{verdict.failed} verification failed for source {source.name}: {verdict.reason}",
            None,
        )
    return None, source.name


# -- memoised decisions (docs/design.md §4.10) -------------------------------------------------

#: (group and kind, images, ids of the applicable policies after the first).
_DecisionKey = tuple[tuple[str, str], tuple[ContainerImage, ...], tuple[int, ...]]


@dataclass(frozen=True)
class _MemoisedDecision:
    #: The policies whose ids are in the key: held, so no other object can take their ids
    #: while the entry lives.
    others: tuple[CompiledPolicy, ...]
    decision: Decision


def memoised_decision(
    images: Sequence[ContainerImage],
    policies: Sequence[CompiledPolicy],
    group_kind: tuple[str, str],
) -> Decision | None:
    """The decision `memoise_decision` kept for exactly these images, policies and kind."""
    if not policies:
        return None
    entry = policies[0]._decision_memo.get(_decision_key(images, policies, group_kind))
    return None if entry is None else entry.decision


def memoise_decision(
    images: Sequence[ContainerImage],
    policies: Sequence[CompiledPolicy],
    group_kind: tuple[str, str],
    decision: Decision,
) -> None:
    """Keep `decision` for these inputs. Only a decision that needed no signature verdict (no
    `signature_checks`) may be kept: it is then a pure function of them, where a verdict
    expires, and a denial must never be served from memory (design.md §4.8)."""
    if not policies:
        return
    memo = policies[0]._decision_memo
    if len(memo) >= MEMO_SIZE:
        memo.clear()  # as the other memos: hostile variety costs a rebuild, never memory
    memo[_decision_key(images, policies, group_kind)] = _MemoisedDecision(
        tuple(policies[1:]), decision
    )


def _decision_key(
    images: Sequence[ContainerImage],
    policies: Sequence[CompiledPolicy],
    group_kind: tuple[str, str],
) -> _DecisionKey:
    return (group_kind, tuple(images), tuple(id(p) for p in policies[1:]))


def _first_matching_source(
    policy: CompiledPolicy, image: reference.ImageReference
) -> CompiledSource | None:
    memo = policy._source_memo
    index = memo.get(image.name)
    if index is None:
        index = next((n for n, s in enumerate(policy.sources) if s.matches(image)), -1)
        if len(memo) >= MEMO_SIZE:
            memo.clear()  # hostile names cost a rebuild, never unbounded memory
        memo[image.name] = index
    return None if index < 0 else policy.sources[index]


def _suggest(image: PlannedImage, policies: Sequence[CompiledPolicy]) -> str | None:
    """A hardened equivalent that some rewrite rule knows for the image, if any."""
    if image.final is None:
        return None
    for policy in policies:
        for rule in policy.rewrites:
            target = rule.apply(image.final)
            if target is not None and target.image != image.final:
                return str(target.image)
    return None


def _where(container: ContainerImage) -> str:
    return container.where


def dropping(version: str | None) -> str:
    """What a rewrite to a latest-only target lost, for the texts that report it ("" if none)."""
    if version is None:
        return ""
    return f"dropping version {version}, as the target serves only latest"


def _also(clause: str) -> str:
    return f", {clause}" if clause else ""


def describe(image: ImageDecision, violation: Violation) -> str:
    """The sentence a denial, warning or report says about one violation."""
    verb = "denied" if violation.policy.mode is Mode.ENFORCE else "would be denied"
    planned = image.planned
    rewritten = ""
    if planned.rewritten_by:
        rewritten = f" (rewritten to {planned.final}{_also(dropping(planned.dropped_version))})"
    text = (
        f"{_where(planned.container)} image {planned.container.image!r}{rewritten} "
        f"{verb} by policy {violation.policy.display_name}: {violation.reason}"
    )
    if violation.suggestion:
        text += f" (use {violation.suggestion} instead)"
    return text
