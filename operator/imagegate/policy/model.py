"""The ClusterImagePolicy / ImagePolicy resources (imagegate.dev/v1alpha1), as pydantic models.

These models are the single source of truth: the CRD schema in charts/ is generated from them
(policy/crd.py), the operator parses live resources with them, and `imagegate check` parses policy
files with them. Every model is frozen and refuses unknown fields, so a typo is an error, never a
silently ignored line. Field docstrings become the CRD's descriptions (what `kubectl explain`
shows).

What is checked where:

- here, always: everything (globs, regular expressions, PEM keys, label syntax, unique names;
  the field types and their checks are in policy/fields.py);
- in the CRD schema as well, so that `kubectl apply` refuses early: types, enums, lengths,
  patterns, and CEL rules (`x-kubernetes-validations`, declared next to the check they mirror)
  for fields that conflict. What only Python can check (a regular expression that does not
  compile, a PEM block that is not a key) is refused at apply time by the policy webhook
  (policyreview.py); one that slips past it fails closed in the operator, which says so in the
  policy's Ready condition.

A bad policy raises `PolicyError`, whose message names the field (policy/problems.py writes it):
`ClusterImagePolicy p: spec.sources[0].images[1]: glob 'X' has uppercase letters; ...`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic

from imagegate.core import expressions
from imagegate.errors import ImagegateError
from imagegate.policy import problems
from imagegate.policy.fields import (
    DataKey,
    DnsLabel,
    Glob,
    Identity,
    LabelKey,
    LabelKeyName,
    LabelValue,
    ObjectName,
    PublicKeyPem,
    RegExp,
    Repository,
    Tag,
)
from imagegate.policy.problems import Problem

GROUP = "imagegate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_KIND = "ClusterImagePolicy"
NAMESPACED_KIND = "ImagePolicy"
KINDS = (CLUSTER_KIND, NAMESPACED_KIND)

Mode = Literal["enforce", "warn", "audit"]
MutationScope = Literal["Pods", "All"]


class PolicyError(ImagegateError):
    """A policy that cannot be used; the message names the field (`spec.sources[0].images[1]`)."""


def _rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL rules for the CRD (`x-kubernetes-validations`), each with the message kubectl shows."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in rules]}


def _size(field: str) -> str:
    """CEL: the size of an optional list, 0 when it is absent."""
    return f"(has(self.{field}) ? size(self.{field}) : 0)"


class Spec(pydantic.BaseModel):
    """The base of every model the CRD is made from: frozen, strict about unknown fields, and
    documented by its attribute docstrings (crd.py makes them the CRD's descriptions; pydantic's
    `use_attribute_docstrings` would read this file's source at every start: design.md §11)."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# --- namespaceSelector ------------------------------------------------------------------------


class LabelSelectorRequirement(Spec):
    """A label requirement (metav1.LabelSelectorRequirement)."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_rules(
            (
                f"self.operator in ['In', 'NotIn'] ? {_size('values')} > 0 "
                f": {_size('values')} == 0",
                "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
            )
        )
    )

    key: LabelKey
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: tuple[LabelValue, ...] = pydantic.Field((), max_length=64)
    """Label values: non-empty for In and NotIn, empty for Exists and DoesNotExist."""

    @pydantic.model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise Problem(f"values must be non-empty for operator {self.operator}", at=("values",))
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise Problem(f"values must be empty for operator {self.operator}", at=("values",))
        return self


class LabelSelector(Spec):
    """Which namespaces the policy applies in (metav1.LabelSelector); `{}` or omitted selects
    every namespace the webhook sees. The requirements are ANDed."""

    match_labels: dict[LabelKeyName, LabelValue] = pydantic.Field(
        default_factory=dict, alias="matchLabels"
    )
    """Labels the namespace must have, with these values."""
    match_expressions: tuple[LabelSelectorRequirement, ...] = pydantic.Field(
        (), alias="matchExpressions", max_length=32
    )
    """Label requirements the namespace must meet."""

    def __hash__(self) -> int:  # frozen, but a dict field is not hashable on its own
        return hash((tuple(sorted(self.match_labels.items())), self.match_expressions))


# --- signatures -------------------------------------------------------------------------------


class KeylessAuthority(Spec):
    """A keyless (Fulcio certificate) identity that may sign: an issuer and a subject, each
    given exactly or as a regular expression that must match the whole value."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_rules(
            (
                "has(self.issuer) != has(self.issuerRegExp)",
                "set exactly one of issuer and issuerRegExp",
            ),
            (
                "has(self.subject) != has(self.subjectRegExp)",
                "set exactly one of subject and subjectRegExp",
            ),
        )
    )

    issuer: Identity | None = None
    """The OIDC issuer, exactly (https://token.actions.githubusercontent.com)."""
    issuer_regexp: RegExp | None = pydantic.Field(None, alias="issuerRegExp")
    """The OIDC issuer as a regular expression (Python syntax), matched against the whole value."""
    subject: Identity | None = None
    """The certificate subject (SAN), exactly: a workflow URL with its ref, or an email."""
    subject_regexp: RegExp | None = pydantic.Field(None, alias="subjectRegExp")
    """The subject as a regular expression (Python syntax), matched against the whole value."""

    @pydantic.model_validator(mode="after")
    def _one_of_each(self) -> KeylessAuthority:
        for exact, pattern, name in (
            (self.issuer, self.issuer_regexp, "issuer"),
            (self.subject, self.subject_regexp, "subject"),
        ):
            if exact is not None and pattern is not None:
                raise Problem(f"set exactly one of {name} and {name}RegExp, not both")
            if exact is None and pattern is None:
                raise Problem(f"set exactly one of {name} and {name}RegExp")
        return self


class SecretKeyRef(Spec):
    """A key in a Secret."""

    name: ObjectName
    """The Secret's name."""
    namespace: DnsLabel | None = None
    """The Secret's namespace: by default the ImagePolicy's own, or imagegate's namespace for a
    ClusterImagePolicy."""
    key: DataKey = "cosign.pub"
    """The key in the Secret's data (`cosign generate-key-pair k8s://...` writes cosign.pub)."""


class KeyAuthority(Spec):
    """A public key that may sign (ECDSA P-256/P-384/P-521, RSA of 2048 to 4096 bits, or
    Ed25519): inline PEM, or from a Secret."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_rules(
            (
                "has(self.publicKey) != has(self.secretRef)",
                "set exactly one of publicKey and secretRef",
            )
        )
    )

    public_key: PublicKeyPem | None = pydantic.Field(None, alias="publicKey")
    """The PEM public key (-----BEGIN PUBLIC KEY-----), as `cosign public-key` prints it."""
    secret_ref: SecretKeyRef | None = pydantic.Field(None, alias="secretRef")
    """A Secret that holds the PEM public key."""

    @pydantic.model_validator(mode="after")
    def _one_key(self) -> KeyAuthority:
        if self.public_key is not None and self.secret_ref is not None:
            raise Problem("set exactly one of publicKey and secretRef, not both")
        if self.public_key is None and self.secret_ref is None:
            raise Problem("set exactly one of publicKey and secretRef")
        return self


class PullSecretRef(Spec):
    """A Secret of type kubernetes.io/dockerconfigjson (or dockercfg) with registry credentials."""

    name: ObjectName
    """The Secret's name."""
    namespace: DnsLabel | None = None
    """The Secret's namespace: by default the ImagePolicy's own, or imagegate's namespace for a
    ClusterImagePolicy."""


class ConfigMapRef(Spec):
    """A key in a ConfigMap."""

    name: ObjectName
    """The ConfigMap's name."""
    namespace: DnsLabel | None = None
    """The ConfigMap's namespace: by default the ImagePolicy's own, or imagegate's namespace for
    a ClusterImagePolicy."""
    key: DataKey = "trusted_root.json"
    """The key in the ConfigMap's data."""


class TrustRoot(Spec):
    """A Sigstore trusted root (trusted_root.json) for keyless signatures, instead of the
    public-good instance's that imagegate ships (used offline either way)."""

    config_map_ref: ConfigMapRef = pydantic.Field(alias="configMapRef")
    """The ConfigMap that holds trusted_root.json."""


class Signatures(Spec):
    """Signatures an image from this source must carry: at least one authority (keyless
    identities and keys together) must verify."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_rules(
            (
                f"{_size('keyless')} + {_size('keys')} > 0",
                "name at least one authority under keyless or keys",
            )
        )
    )

    keyless: tuple[KeylessAuthority, ...] = pydantic.Field((), max_length=16)
    """Keyless identities (Fulcio certificates); any one of them may sign."""
    keys: tuple[KeyAuthority, ...] = pydantic.Field((), max_length=16)
    """Public keys; any one of them may sign."""
    trust_root: TrustRoot | None = pydantic.Field(None, alias="trustRoot")
    """The trusted root for keyless signatures; default: Sigstore's public-good instance."""
    require_transparency_log: pydantic.StrictBool = pydantic.Field(
        True, alias="requireTransparencyLog"
    )
    """Require a transparency-log (Rekor) inclusion proof with each signature."""

    @pydantic.model_validator(mode="after")
    def _some_authority(self) -> Signatures:
        if not self.keyless and not self.keys:
            raise Problem("name at least one authority under keyless or keys")
        return self


# --- attestations (design.md §9) -------------------------------------------------------------

#: cosign's `--type` short names and the predicate types they stand for (as `cosign attest`
#: writes them: `slsaprovenance` is SLSA v0.2, as in cosign).
PREDICATE_SHORT_NAMES = {
    "slsaprovenance": "https://slsa.dev/provenance/v0.2",
    "slsaprovenance02": "https://slsa.dev/provenance/v0.2",
    "slsaprovenance1": "https://slsa.dev/provenance/v1",
    "spdx": "https://spdx.dev/Document",
    "spdxjson": "https://spdx.dev/Document",
    "cyclonedx": "https://cyclonedx.org/bom",
    "vuln": "https://cosign.sigstore.dev/attestation/vuln/v1",
    "openvex": "https://openvex.dev/ns",
}
PROVENANCE_TYPES = ("https://slsa.dev/provenance/v0.2", "https://slsa.dev/provenance/v1")
SBOM_TYPES = ("https://spdx.dev/Document", "https://cyclonedx.org/bom")
VULN_TYPE = "https://cosign.sigstore.dev/attestation/vuln/v1"
OPENVEX_TYPE = "https://openvex.dev/ns"
#: A cosign signature's own statement: a signature, never an attestation.
SIGNATURE_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")

PredicateType = Annotated[
    str,
    pydantic.StringConstraints(
        min_length=1, max_length=512, pattern=r"^([a-z0-9]+|https?://[^\s]+)$"
    ),
]
Severity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]


def _check_cel(value: str) -> str:
    try:
        return expressions.check(value)
    except expressions.ExpressionError as error:
        raise Problem(error.user_message) from None


CelExpression = Annotated[
    str,
    pydantic.StringConstraints(min_length=1, max_length=expressions.MAX_LENGTH),
    pydantic.AfterValidator(_check_cel),
]


class ProvenanceConditions(Spec):
    """What a SLSA provenance (v0.2 or v1) must say; each value exactly, or as an RE2 regular
    expression matched against the whole value."""

    builder_id: Identity | None = pydantic.Field(None, alias="builderId")
    """The builder's id (v0.2 builder.id, v1 runDetails.builder.id), exactly."""
    builder_id_regexp: RegExp | None = pydantic.Field(None, alias="builderIdRegExp")
    """The builder's id as a regular expression."""
    source_repository: Identity | None = pydantic.Field(None, alias="sourceRepository")
    """The source repository (v0.2 invocation.configSource.uri, v1 the workflow's repository or
    the first resolved dependency), without `git+` and `@ref`, exactly."""
    source_repository_regexp: RegExp | None = pydantic.Field(None, alias="sourceRepositoryRegExp")
    """The source repository as a regular expression."""
    ref: Identity | None = None
    """The source ref (`refs/heads/main`), exactly."""
    ref_regexp: RegExp | None = pydantic.Field(None, alias="refRegExp")
    """The source ref as a regular expression."""
    build_type: Identity | None = pydantic.Field(None, alias="buildType")
    """The build type (v0.2 buildType, v1 buildDefinition.buildType), exactly."""
    build_type_regexp: RegExp | None = pydantic.Field(None, alias="buildTypeRegExp")
    """The build type as a regular expression."""

    @pydantic.model_validator(mode="after")
    def _one_of_each(self) -> ProvenanceConditions:
        for name in ("builderId", "sourceRepository", "ref", "buildType"):
            exact, pattern = self.exact_and_pattern(name)
            if exact is not None and pattern is not None:
                raise Problem(f"set at most one of {name} and {name}RegExp")
        return self

    def exact_and_pattern(self, name: str) -> tuple[str | None, str | None]:
        """(exact value, regular expression) the policy gives for a field named as in YAML."""
        fields = {
            "builderId": (self.builder_id, self.builder_id_regexp),
            "sourceRepository": (self.source_repository, self.source_repository_regexp),
            "ref": (self.ref, self.ref_regexp),
            "buildType": (self.build_type, self.build_type_regexp),
        }
        return fields[name]


class Attestation(Spec):
    """An in-toto attestation an image from this source must carry: signed by one of the
    authorities, bound to the image's digest, and meeting the conditions given."""

    predicate_type: PredicateType = pydantic.Field(alias="predicateType")
    """The predicate type: a URI, or one of cosign's short names (slsaprovenance = SLSA v0.2,
    slsaprovenance1, spdx, cyclonedx, vuln, openvex)."""
    authorities: Signatures | None = None
    """Who may sign it; omitted: the source's signature authorities."""
    provenance: ProvenanceConditions | None = None
    """For SLSA provenance: what it must say."""
    max_age_days: int | None = pydantic.Field(None, alias="maxAgeDays", ge=1, le=3650)
    """For SBOMs (SPDX created, CycloneDX metadata.timestamp) and vulnerability scans
    (scanFinishedOn): not older than this many days."""
    fail_on_severity: Severity | None = pydantic.Field(None, alias="failOnSeverity")
    """For vulnerability scans: deny a finding at or above this severity, unless a signed OpenVEX
    attestation of the image says not_affected."""
    cel: CelExpression | None = None
    """For anything else: a CEL expression over `predicate` (the attestation's predicate) that
    must be true, e.g. `predicate.invocation.environment.arch == "amd64"`."""

    @property
    def predicate_uri(self) -> str:
        return PREDICATE_SHORT_NAMES.get(self.predicate_type, self.predicate_type)

    @pydantic.model_validator(mode="after")
    def _conditions_fit_type(self) -> Attestation:
        uri = self.predicate_uri
        if "://" not in uri:
            names = ", ".join(PREDICATE_SHORT_NAMES)
            raise Problem(f"unknown predicate type {uri!r}: a URI or one of {names}")
        if uri == SIGNATURE_PREDICATE:
            raise Problem("a cosign signature is not an attestation: use signatures")
        if self.provenance is not None and uri not in PROVENANCE_TYPES:
            raise Problem("provenance applies only to SLSA provenance", at=("provenance",))
        if self.max_age_days is not None and uri not in (*SBOM_TYPES, VULN_TYPE):
            raise Problem("maxAgeDays applies only to SBOMs and vuln scans", at=("maxAgeDays",))
        if self.fail_on_severity is not None and uri != VULN_TYPE:
            raise Problem("failOnSeverity applies only to vuln scans", at=("failOnSeverity",))
        return self


# --- the policy -------------------------------------------------------------------------------


class Source(Spec):
    """Images that are trusted when they match one of the globs and pass the signature check."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.attestations) || has(self.signatures) || "
                "self.attestations.all(a, has(a.authorities))",
                "an attestation without authorities needs signatures for the source",
            )
        )
    )

    name: DnsLabel
    """The source's name, unique within the policy (it appears in decisions and messages)."""
    images: tuple[Glob, ...] = pydantic.Field(min_length=1, max_length=128)
    """Globs over the normalised registry/repository (no tag or digest): `*` matches within one
    path segment, `**` is a whole segment that matches one or more segments."""
    signatures: Signatures | None = None
    """Signatures to require; omitted: matching the globs is enough."""
    attestations: tuple[Attestation, ...] = pydantic.Field((), max_length=16)
    """In-toto attestations to require (all of them), each by predicate type (design.md §9)."""

    @pydantic.model_validator(mode="after")
    def _attestations_have_authorities(self) -> Source:
        for index, attestation in enumerate(self.attestations):
            if attestation.authorities is None and self.signatures is None:
                raise Problem(
                    "name authorities, or signatures for the source, to verify it with",
                    at=("attestations", index, "authorities"),
                )
        return self


class Rewrite(Spec):
    """Rewrite matching images (the mutating webhook, before validation): to a repository named
    here (`from`, `to`, `tag`), or to the hardened equivalent in imagegate's catalogue
    (`catalog`; `imagegate catalog` lists it). Rules with `from` come first, so they override
    the catalogue's entries."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_rules(
            (
                "has(self.catalog) ? !has(self.from) && !has(self.to) "
                ": has(self.from) && has(self.to)",
                "set either from and to, or catalog",
            ),
            (
                "has(self.catalog) || !has(self.allowLatestOnly)",
                "allowLatestOnly applies only with catalog",
            ),
            (
                "!has(self.catalog) || !has(self.tag) || self.tag == 'latest'",
                "tag applies only with from and to: the catalogue maps tags itself",
            ),
        )
    )

    from_: Glob | None = pydantic.Field(None, alias="from")
    """A glob over the normalised registry/repository of the original image."""
    to: Repository | None = None
    """The repository to use instead, normalised and without tag or digest
    (cgr.dev/chainguard/python)."""
    # With `catalog` the API server still defaults it to `latest`, which is accepted and unused.
    tag: Tag = "latest"
    """With from and to: the tag to use, a fixed tag or `keep` to carry the original tag over."""
    catalog: Literal["chainguard", "dhi"] | None = None
    """Rewrite every image the catalogue knows to its equivalent in this catalogue: dhi keeps
    the version (`python:3.12-slim` to `dhi.io/python:3.12`); chainguard's free images have only
    `latest`, so the version is dropped, which needs allowLatestOnly."""
    allow_latest_only: pydantic.StrictBool | None = pydantic.Field(None, alias="allowLatestOnly")
    """With catalog: also rewrite to targets that serve only `latest`, dropping the version
    (the warning says which). Without it such images are rewritten only when their tag is
    latest."""

    @pydantic.model_validator(mode="after")
    def _one_kind(self) -> Rewrite:
        explicit = self.from_ is not None or self.to is not None
        if self.catalog is not None:
            if explicit:
                raise Problem("set either from and to, or catalog, not both")
            if self.tag != "latest":
                raise Problem(
                    "tag applies only with from and to: the catalogue maps tags itself",
                    at=("tag",),
                )
            return self
        if self.from_ is None and self.to is None:
            raise Problem("set either from and to, or catalog")
        if self.from_ is None or self.to is None:
            missing = "from" if self.from_ is None else "to"
            raise Problem("required field is missing (or set catalog instead)", at=(missing,))
        if self.allow_latest_only is not None:
            raise Problem("allowLatestOnly applies only with catalog", at=("allowLatestOnly",))
        return self


class Mutation(Spec):
    """Which objects the mutating webhook patches (docs/design.md §5.1)."""

    scope: MutationScope = "Pods"
    """Pods: only Pods are rewritten and pinned; controllers (Deployments, Jobs, ...) are stored
    as written, validated as their Pods will run, and warned with the rewrite, so GitOps tools
    (Argo CD, Flux) see no drift. All: controllers' pod templates are patched too."""


class PolicySpec(Spec):
    """Which images may run in the selected namespaces, and what to rewrite. Policies are ANDed,
    sources are ORed."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=_rules(
            (
                f"{_size('sources')} + {_size('rewrites')} > 0",
                "a policy needs sources, rewrites, or both",
            )
        )
    )

    mode: Mode = "enforce"
    """enforce: deny a violation; warn: admit with a warning; audit: admit and only record."""
    namespace_selector: LabelSelector = pydantic.Field(
        default_factory=lambda: LabelSelector.model_validate({}), alias="namespaceSelector"
    )
    """Namespaces the policy applies in; omitted: every namespace the webhook sees."""
    pin_digests: pydantic.StrictBool = pydantic.Field(True, alias="pinDigests")
    """Pin each admitted tag to the digest that was resolved and verified."""
    mutation: Mutation = pydantic.Field(default_factory=lambda: Mutation.model_validate({}))
    """What rewrites and pins are written into: Pods only (default), or controllers too."""
    # Bounded, so that the API server can cost the CEL rules that walk them.
    sources: tuple[Source, ...] = pydantic.Field(
        (),
        max_length=64,
        json_schema_extra=_rules(
            (
                "self.all(a, self.exists_one(b, b.name == a.name))",
                "source names must be unique",
            )
        ),
    )
    """Trusted sources: an image is admitted when it matches a source and passes its checks."""
    rewrites: tuple[Rewrite, ...] = pydantic.Field((), max_length=512)
    """Rewrite rules, tried in order: the first that matches applies."""
    pull_secrets: tuple[PullSecretRef, ...] = pydantic.Field((), alias="pullSecrets", max_length=16)
    """Registry credentials imagegate uses to read images and signatures of this policy's
    sources, tried before the Pod's imagePullSecrets and its ServiceAccount's."""

    @pydantic.model_validator(mode="after")
    def _sane(self) -> PolicySpec:
        first: dict[str, int] = {}
        for index, source in enumerate(self.sources):
            if source.name in first:
                raise Problem(
                    f"source names must be unique: {source.name!r} is also "
                    f"sources[{first[source.name]}]",
                    at=("sources", index, "name"),
                )
            first[source.name] = index
        if not self.sources and not self.rewrites:
            raise Problem("a policy needs sources, rewrites, or both")
        return self


# --- whole resources --------------------------------------------------------------------------


class Metadata(pydantic.BaseModel):
    """The parts of ObjectMeta imagegate reads; the API server owns the rest."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    name: str = pydantic.Field(min_length=1)
    namespace: str | None = None
    generation: int | None = None


class PolicyDocument(pydantic.BaseModel):
    """A whole ClusterImagePolicy or ImagePolicy, as a file or the API server holds it.

    `status` is accepted and not parsed: it is the operator's, and must never make a policy
    invalid (`PolicyStatus` is its model).
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    api_version: Literal["imagegate.dev/v1alpha1"] = pydantic.Field(alias="apiVersion")
    kind: Literal["ClusterImagePolicy", "ImagePolicy"]
    metadata: Metadata
    spec: PolicySpec

    @pydantic.model_validator(mode="before")
    @classmethod
    def _without_status(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "status" in data:
            return {key: value for key, value in data.items() if key != "status"}
        return data

    @property
    def namespace(self) -> str | None:
        """The namespace an ImagePolicy applies in; None for a ClusterImagePolicy."""
        if self.kind == CLUSTER_KIND:
            return None
        return self.metadata.namespace or "default"


def is_policy_document(doc: Mapping[str, Any]) -> bool:
    return doc.get("apiVersion") == API_VERSION and doc.get("kind") in KINDS


def parse_policy_document(doc: Mapping[str, Any]) -> PolicyDocument:
    """Parse a whole resource, or raise `PolicyError` naming the first bad field."""
    try:
        return PolicyDocument.model_validate(doc)
    except pydantic.ValidationError as error:
        raise PolicyError(
            f"{_describe_document(doc)}: {problems.format_validation_error(error)}",
            context={"problems": problems.of(error)},
        ) from error


def parse_spec(spec: Mapping[str, Any]) -> PolicySpec:
    """Parse a live resource's spec (the operator has the rest from the API server)."""
    try:
        return PolicySpec.model_validate(spec)
    except pydantic.ValidationError as error:
        raise PolicyError(
            problems.format_validation_error(error, prefix="spec"),
            context={"problems": problems.of(error, prefix="spec")},
        ) from error


def _describe_document(doc: Mapping[str, Any]) -> str:
    if not isinstance(doc, Mapping):
        return "policy"
    kind = doc.get("kind")
    metadata = doc.get("metadata")
    name = namespace = None
    if isinstance(metadata, Mapping):
        name, namespace = metadata.get("name"), metadata.get("namespace")
    described = str(name) if name else "(unnamed)"
    if kind == NAMESPACED_KIND and namespace:
        described = f"{namespace}/{described}"
    return f"{kind if kind in KINDS else 'policy'} {described}"
