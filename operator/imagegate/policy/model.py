"""The ClusterImagePolicy / ImagePolicy resources (imagegate.dev/v1alpha1), as pydantic models.

These models are the single source of truth: the CRD schema in charts/ is generated from them
(policy/crd.py), the operator parses live resources with them, and `imagegate check` parses policy
files with them. Unknown fields are errors, so a typo is never silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from imagegate.errors import ImagegateError
from imagegate.policy import glob

GROUP = "imagegate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_KIND = "ClusterImagePolicy"
NAMESPACED_KIND = "ImagePolicy"

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_TAG = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_REPOSITORY = r"^[a-z0-9][a-z0-9._:\[\]-]*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)+$"


class PolicyError(ImagegateError):
    """A policy that cannot be used; the message names the field (`spec.sources[0].images[1]`)."""


class _Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, use_attribute_docstrings=True
    )


def _check_regexp(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from error
    return value


def _check_glob(value: str) -> str:
    try:
        glob.compile_glob(value)
    except glob.GlobError as error:
        raise ValueError(error.user_message) from error
    return value


#: The pattern is the cheap part of the check, so the CRD schema can refuse at `kubectl apply`.
GLOB_PATTERN = r"^[a-z0-9._\-:/\[\]*]+$"
Glob = Annotated[
    str, pydantic.Field(min_length=1, pattern=GLOB_PATTERN), pydantic.AfterValidator(_check_glob)
]
RegExp = Annotated[str | None, pydantic.AfterValidator(_check_regexp)]


class LabelSelectorRequirement(_Spec):
    key: str = pydantic.Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = pydantic.Field((), max_length=64)

    @pydantic.model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(_Spec):
    """metav1.LabelSelector: `{}` selects every namespace."""

    match_labels: dict[str, str] = pydantic.Field(default_factory=dict, alias="matchLabels")
    match_expressions: tuple[LabelSelectorRequirement, ...] = pydantic.Field(
        (), alias="matchExpressions", max_length=32
    )


class KeylessAuthority(_Spec):
    """A Fulcio certificate identity: issuer and subject, each exact or an anchored regexp."""

    issuer: str | None = None
    issuer_regexp: RegExp = pydantic.Field(None, alias="issuerRegExp")
    subject: str | None = None
    subject_regexp: RegExp = pydantic.Field(None, alias="subjectRegExp")

    @pydantic.model_validator(mode="after")
    def _one_of_each(self) -> KeylessAuthority:
        for exact, pattern, name in (
            (self.issuer, self.issuer_regexp, "issuer"),
            (self.subject, self.subject_regexp, "subject"),
        ):
            if (exact is None) == (pattern is None):
                raise ValueError(f"set exactly one of {name} and {name}RegExp")
        return self


class SecretKeyRef(_Spec):
    name: str = pydantic.Field(min_length=1)
    namespace: str | None = None
    key: str = "cosign.pub"


class KeyAuthority(_Spec):
    """A cosign public key (ECDSA P-256, or RSA), inline PEM or from a Secret."""

    public_key: str | None = pydantic.Field(None, alias="publicKey")
    secret_ref: SecretKeyRef | None = pydantic.Field(None, alias="secretRef")

    @pydantic.model_validator(mode="after")
    def _one_key(self) -> KeyAuthority:
        if (self.public_key is None) == (self.secret_ref is None):
            raise ValueError("set exactly one of publicKey and secretRef")
        if self.public_key is not None:
            try:
                load_pem_public_key(self.public_key.encode())
            except (ValueError, TypeError) as error:
                raise ValueError("publicKey is not a PEM public key") from error
        return self


class ConfigMapRef(_Spec):
    name: str = pydantic.Field(min_length=1)
    namespace: str | None = None
    key: str = "trusted_root.json"


class TrustRoot(_Spec):
    config_map_ref: ConfigMapRef = pydantic.Field(alias="configMapRef")


class Signatures(_Spec):
    """At least one authority must verify (keyless identities and keys are ORed)."""

    keyless: tuple[KeylessAuthority, ...] = pydantic.Field((), max_length=16)
    keys: tuple[KeyAuthority, ...] = pydantic.Field((), max_length=16)
    trust_root: TrustRoot | None = pydantic.Field(None, alias="trustRoot")
    require_transparency_log: bool = pydantic.Field(True, alias="requireTransparencyLog")

    @pydantic.model_validator(mode="after")
    def _some_authority(self) -> Signatures:
        if not self.keyless and not self.keys:
            raise ValueError("name at least one authority under keyless or keys")
        return self


class Source(_Spec):
    name: str = pydantic.Field(pattern=_DNS_LABEL, max_length=63)
    images: tuple[Glob, ...] = pydantic.Field(min_length=1, max_length=128)
    signatures: Signatures | None = None


class Rewrite(_Spec):
    from_: Glob = pydantic.Field(alias="from")
    to: str = pydantic.Field(pattern=_REPOSITORY, max_length=255)
    tag: str = pydantic.Field("latest", pattern=_TAG)
    """A fixed tag, or `keep` to carry the original tag over."""


class PolicySpec(_Spec):
    mode: Literal["enforce", "warn", "audit"] = "enforce"
    namespace_selector: LabelSelector = pydantic.Field(
        LabelSelector.model_validate({}), alias="namespaceSelector"
    )
    pin_digests: bool = pydantic.Field(True, alias="pinDigests")
    # Bounded, so the API server can cost the CEL rules that walk them.
    sources: tuple[Source, ...] = pydantic.Field((), max_length=64)
    rewrites: tuple[Rewrite, ...] = pydantic.Field((), max_length=512)

    @pydantic.model_validator(mode="after")
    def _sane(self) -> PolicySpec:
        names = [source.name for source in self.sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique: {', '.join(duplicates)}")
        if not self.sources and not self.rewrites:
            raise ValueError("a policy needs sources, rewrites, or both")
        return self


class Condition(_Spec):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = pydantic.Field(None, alias="lastTransitionTime")


class LastDenial(_Spec):
    time: str
    namespace: str = ""
    object: str = ""
    image: str = ""


class PolicyStatus(_Spec):
    """Written by the operator."""

    observed_generation: int | None = pydantic.Field(None, alias="observedGeneration")
    conditions: tuple[Condition, ...] = ()
    denials: int = 0
    """Denials counted since the policy was created."""
    last_denial: LastDenial | None = pydantic.Field(None, alias="lastDenial")


class Metadata(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    name: str = pydantic.Field(min_length=1)
    namespace: str | None = None
    generation: int | None = None


class PolicyDocument(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    api_version: Literal["imagegate.dev/v1alpha1"] = pydantic.Field(alias="apiVersion")
    kind: Literal["ClusterImagePolicy", "ImagePolicy"]
    metadata: Metadata
    spec: PolicySpec

    @property
    def namespace(self) -> str | None:
        """The namespace an ImagePolicy applies in; None for a ClusterImagePolicy."""
        if self.kind == CLUSTER_KIND:
            return None
        return self.metadata.namespace or "default"


def is_policy_document(doc: Mapping[str, Any]) -> bool:
    return doc.get("apiVersion") == API_VERSION and doc.get("kind") in (
        CLUSTER_KIND,
        NAMESPACED_KIND,
    )


def parse_policy_document(doc: Mapping[str, Any]) -> PolicyDocument:
    """Parse a whole resource, or raise `PolicyError` naming the first bad field."""
    try:
        return PolicyDocument.model_validate(doc)
    except pydantic.ValidationError as error:
        name = (
            doc.get("metadata", {}).get("name") if isinstance(doc.get("metadata"), dict) else None
        )
        raise PolicyError(
            f"policy {name or '(unnamed)'}: {format_validation_error(error)}",
            context={"errors": error.errors(include_url=False)},
        ) from error


def parse_spec(spec: Mapping[str, Any]) -> PolicySpec:
    """Parse a live resource's spec (the operator has the rest from the API server)."""
    try:
        return PolicySpec.model_validate(spec)
    except pydantic.ValidationError as error:
        raise PolicyError(format_validation_error(error, prefix="spec")) from error


def format_validation_error(error: pydantic.ValidationError, *, prefix: str = "") -> str:
    """`spec.sources[0].images[1]: glob 'X' ...` for the first problem, and how many more."""
    problems = error.errors(include_url=False)
    first = problems[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    location = (prefix, *first["loc"]) if prefix else tuple(first["loc"])
    text = f"{_field_path(location)}: {message}"
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return text


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-after") or part.startswith("literal"):
            continue
        else:
            path += ("." if path else "") + part
    return path or "(document)"
