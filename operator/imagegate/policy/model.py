"""The ClusterImagePolicy / ImagePolicy resources (imagegate.dev/v1alpha1), as pydantic models.

These models are the single source of truth: the CRD schema in charts/ is generated from them
(policy/crd.py), the operator parses live resources with them, and `imagegate check` parses policy
files with them. Every model is frozen and refuses unknown fields, so a typo is an error, never a
silently ignored line. Field docstrings become the CRD's descriptions (what `kubectl explain`
shows).

What is checked where:

- here, always: everything (globs, regular expressions, PEM keys, label syntax, unique names);
- in the CRD schema as well, so that `kubectl apply` refuses early: types, enums, lengths,
  patterns, and CEL rules (`x-kubernetes-validations`, declared next to the check they mirror)
  for fields that conflict. What only Python can check (a regular expression that does not
  compile, a PEM block that is not a key) is refused at apply time by the policy webhook
  (policyreview.py); one that slips past it fails closed in the operator, which says so in the
  policy's Ready condition.

A bad policy raises `PolicyError`, whose message names the field:
`ClusterImagePolicy p: spec.sources[0].images[1]: glob 'X' has uppercase letters; ...`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import ErrorDetails, core_schema

from imagegate.core import keys, patterns
from imagegate.errors import ImagegateError
from imagegate.policy import glob

GROUP = "imagegate.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_KIND = "ClusterImagePolicy"
NAMESPACED_KIND = "ImagePolicy"
KINDS = (CLUSTER_KIND, NAMESPACED_KIND)

Mode = Literal["enforce", "warn", "audit"]

# Regular expressions valid in both Python `re` and Go RE2 (the API server's), all anchored.
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_LABEL_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
DNS_LABEL = rf"^{_DNS_LABEL}$"
DNS_SUBDOMAIN = rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*$"
LABEL_KEY = rf"^(?:{_DNS_LABEL}(?:\.{_DNS_LABEL})*/)?{_LABEL_NAME}$"
LABEL_VALUE = rf"^(?:{_LABEL_NAME})?$"
DATA_KEY = r"^[-._a-zA-Z0-9]+$"
TAG = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
#: A registry host as Docker recognises one: a dot, a port, `localhost`, or an IPv6 literal.
_HOST = (
    rf"(?:{_DNS_LABEL}(?:\.{_DNS_LABEL})+(?::[0-9]+)?|{_DNS_LABEL}:[0-9]+|localhost"
    r"|\[[0-9a-f:]+\](?::[0-9]+)?)"
)
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = rf"^{_HOST}(?:/{_PATH_COMPONENT})+$"
#: Searched for, not anchored (as a JSON Schema `pattern` is): the cheap part of the PEM check.
PEM_PUBLIC_KEY = r"-----BEGIN [A-Z0-9 ]*PUBLIC KEY-----"

_HOST_RE = re.compile(_HOST, re.ASCII)
_LABEL_KEY_RE = re.compile(LABEL_KEY, re.ASCII)


class PolicyError(ImagegateError):
    """A policy that cannot be used; the message names the field (`spec.sources[0].images[1]`)."""


class _Problem(ValueError):
    """A validation problem at `at`, a path below the model that raised it."""

    def __init__(self, message: str, *, at: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.at = at


@dataclass(frozen=True)
class _Matches:
    """A string that must fullmatch `regex`; the CRD schema gets the regex as its `pattern`.

    With `check=False` only the schema gets it (a validator with better messages does the work).
    """

    regex: str
    message: str = ""
    check: bool = True

    def __get_pydantic_core_schema__(
        self, source: Any, handler: pydantic.GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema = handler(source)
        if not self.check:
            return schema
        compiled = re.compile(self.regex, re.ASCII)
        message = self.message

        def check(value: str) -> str:
            if compiled.fullmatch(value) is None:
                raise ValueError(f"{value!r} {message}")
            return value

        return core_schema.no_info_after_validator_function(check, schema)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: pydantic.GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = self.regex
        return json_schema


def _check_glob(value: str) -> str:
    try:
        glob.compile_glob(value)
    except glob.GlobError as error:
        raise ValueError(error.user_message) from error
    return value


def _check_regexp(value: str) -> str:
    # RE2, as the verifier matches with it (core/patterns.py): linear time, no backreferences.
    try:
        return patterns.check(value)
    except patterns.PatternError as error:
        raise ValueError(error.user_message) from error


def _check_public_key(value: str) -> str:
    # The verifier's own rule (signatures/keys.py), so a policy is never Ready with a key that
    # would then deny every image.
    try:
        keys.load_public_key(value)
    except keys.UnusableKeyError as error:
        raise ValueError(error.user_message) from error
    return value


def _check_repository(value: str) -> str:
    host, slash, path = value.partition("/")
    if "@" in value:
        raise ValueError(f"{value!r} has a digest: `to` is a repository (pinDigests pins it)")
    if ":" in path:
        raise ValueError(f"{value!r} has a tag: `to` is a repository; put the tag in `tag`")
    if not slash or not _HOST_RE.fullmatch(host):
        raise ValueError(
            f"{value!r} does not start with a registry host: write the normalised name, "
            "such as cgr.dev/chainguard/python or docker.io/library/python"
        )
    if not re.fullmatch(REPOSITORY, value, re.ASCII):
        raise ValueError(
            f"{value!r} is not a valid repository: lowercase path components of letters and "
            "digits, separated by '.', '_', '__' or dashes"
        )
    return value


def _check_label_key(value: str) -> str:
    prefix, _, name = value.rpartition("/")
    if len(name) > 63 or len(prefix) > 253 or not _LABEL_KEY_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a label key: an optional DNS-subdomain prefix and '/', then up to "
            "63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    return value


def _rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL rules for the CRD (`x-kubernetes-validations`), each with the message kubectl shows."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in rules]}


def _size(field: str) -> str:
    """CEL: the size of an optional list, 0 when it is absent."""
    return f"(has(self.{field}) ? size(self.{field}) : 0)"


DnsLabel = Annotated[
    str,
    pydantic.StringConstraints(max_length=63),
    _Matches(
        DNS_LABEL,
        "is not a DNS label: lowercase letters, digits and '-', starting and "
        "ending with a letter or digit",
    ),
]
ObjectName = Annotated[
    str,
    pydantic.StringConstraints(max_length=253),
    _Matches(
        DNS_SUBDOMAIN,
        "is not an object name: a DNS subdomain, lowercase letters, digits, '-' and '.'",
    ),
]
DataKey = Annotated[
    str,
    pydantic.StringConstraints(max_length=253),
    _Matches(DATA_KEY, "is not a data key: letters, digits, '-', '_' and '.'"),
]
LabelKey = Annotated[
    str,
    pydantic.StringConstraints(max_length=317),
    pydantic.AfterValidator(_check_label_key),
    _Matches(LABEL_KEY, check=False),
]
#: A label key as a mapping key: the CRD schema cannot constrain those, so no pattern there.
LabelKeyName = Annotated[str, pydantic.AfterValidator(_check_label_key)]
LabelValue = Annotated[
    str,
    pydantic.StringConstraints(max_length=63),
    _Matches(
        LABEL_VALUE,
        "is not a label value: up to 63 letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit",
    ),
]
Glob = Annotated[
    str,
    pydantic.StringConstraints(max_length=glob.MAX_LENGTH),
    pydantic.AfterValidator(_check_glob),
    _Matches(glob.PATTERN, check=False),
]
Identity = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=1024)]
RegExp = Annotated[
    str,
    pydantic.StringConstraints(min_length=1, max_length=1024),
    pydantic.AfterValidator(_check_regexp),
]
PublicKeyPem = Annotated[
    str,
    pydantic.StringConstraints(max_length=16384),
    pydantic.AfterValidator(_check_public_key),
    _Matches(PEM_PUBLIC_KEY, check=False),
]
Repository = Annotated[
    str,
    pydantic.StringConstraints(max_length=255),
    pydantic.AfterValidator(_check_repository),
    _Matches(REPOSITORY, check=False),
]
Tag = Annotated[
    str,
    pydantic.StringConstraints(max_length=128),
    _Matches(
        TAG,
        "is not a tag: up to 128 letters, digits, '_', '.' and '-', not starting "
        "with '.' or '-' (quote it in YAML if it looks like a number)",
    ),
]


class _Spec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, use_attribute_docstrings=True
    )


# --- namespaceSelector ------------------------------------------------------------------------


class LabelSelectorRequirement(_Spec):
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
            raise _Problem(f"values must be non-empty for operator {self.operator}", at=("values",))
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise _Problem(f"values must be empty for operator {self.operator}", at=("values",))
        return self


class LabelSelector(_Spec):
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


class KeylessAuthority(_Spec):
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
                raise _Problem(f"set exactly one of {name} and {name}RegExp, not both")
            if exact is None and pattern is None:
                raise _Problem(f"set exactly one of {name} and {name}RegExp")
        return self


class SecretKeyRef(_Spec):
    """A key in a Secret."""

    name: ObjectName
    """The Secret's name."""
    namespace: DnsLabel | None = None
    """The Secret's namespace: by default the ImagePolicy's own, or imagegate's namespace for a
    ClusterImagePolicy."""
    key: DataKey = "cosign.pub"
    """The key in the Secret's data (`cosign generate-key-pair k8s://...` writes cosign.pub)."""


class KeyAuthority(_Spec):
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
            raise _Problem("set exactly one of publicKey and secretRef, not both")
        if self.public_key is None and self.secret_ref is None:
            raise _Problem("set exactly one of publicKey and secretRef")
        return self


class PullSecretRef(_Spec):
    """A Secret of type kubernetes.io/dockerconfigjson (or dockercfg) with registry credentials."""

    name: ObjectName
    """The Secret's name."""
    namespace: DnsLabel | None = None
    """The Secret's namespace: by default the ImagePolicy's own, or imagegate's namespace for a
    ClusterImagePolicy."""


class ConfigMapRef(_Spec):
    """A key in a ConfigMap."""

    name: ObjectName
    """The ConfigMap's name."""
    namespace: DnsLabel | None = None
    """The ConfigMap's namespace: by default the ImagePolicy's own, or imagegate's namespace for
    a ClusterImagePolicy."""
    key: DataKey = "trusted_root.json"
    """The key in the ConfigMap's data."""


class TrustRoot(_Spec):
    """A Sigstore trusted root (trusted_root.json) for keyless signatures, instead of the
    public-good instance's that imagegate ships (used offline either way)."""

    config_map_ref: ConfigMapRef = pydantic.Field(alias="configMapRef")
    """The ConfigMap that holds trusted_root.json."""


class Signatures(_Spec):
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
            raise _Problem("name at least one authority under keyless or keys")
        return self


# --- the policy -------------------------------------------------------------------------------


class Source(_Spec):
    """Images that are trusted when they match one of the globs and pass the signature check."""

    name: DnsLabel
    """The source's name, unique within the policy (it appears in decisions and messages)."""
    images: tuple[Glob, ...] = pydantic.Field(min_length=1, max_length=128)
    """Globs over the normalised registry/repository (no tag or digest): `*` matches within one
    path segment, `**` is a whole segment that matches one or more segments."""
    signatures: Signatures | None = None
    """Signatures to require; omitted: matching the globs is enough."""


class Rewrite(_Spec):
    """Rewrite matching images to another repository (the mutating webhook, before validation)."""

    from_: Glob = pydantic.Field(alias="from")
    """A glob over the normalised registry/repository of the original image."""
    to: Repository
    """The repository to use instead, normalised and without tag or digest
    (cgr.dev/chainguard/python)."""
    tag: Tag = "latest"
    """The tag to use: a fixed tag, or `keep` to carry the original tag over."""


class PolicySpec(_Spec):
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
                raise _Problem(
                    f"source names must be unique: {source.name!r} is also "
                    f"sources[{first[source.name]}]",
                    at=("sources", index, "name"),
                )
            first[source.name] = index
        if not self.sources and not self.rewrites:
            raise _Problem("a policy needs sources, rewrites, or both")
        return self


# --- status -----------------------------------------------------------------------------------


class Condition(_Spec):
    """A condition of the policy (metav1.Condition)."""

    type: str = pydantic.Field(min_length=1, max_length=316)
    """The condition's type: Ready."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = ""
    """A CamelCase word for why (Compiled, InvalidKeptPrevious, InvalidDenying)."""
    message: str = ""
    """What went wrong, naming the field, when the policy is not Ready."""
    last_transition_time: str | None = pydantic.Field(None, alias="lastTransitionTime")
    """When the status last changed (RFC 3339)."""


class LastDenial(_Spec):
    """The latest denial this policy made."""

    time: str
    """When (RFC 3339)."""
    namespace: str = ""
    """The namespace of the denied object."""
    object: str = ""
    """The denied object (Kind/name)."""
    image: str = ""
    """The image that was denied."""


class PolicyStatus(_Spec):
    """Written by the operator."""

    observed_generation: pydantic.StrictInt | None = pydantic.Field(
        None, alias="observedGeneration", ge=0
    )
    """The generation of the spec the operator last compiled."""
    conditions: tuple[Condition, ...] = pydantic.Field(
        (),
        max_length=8,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    """Ready: whether the spec compiled and is being enforced."""
    denials: pydantic.StrictInt = pydantic.Field(0, ge=0)
    """Denials counted since the policy was created (enforce mode; dry runs not counted)."""
    last_denial: LastDenial | None = pydantic.Field(None, alias="lastDenial")
    """The latest denial."""


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
            f"{_describe_document(doc)}: {format_validation_error(error)}",
            context={"problems": problems(error)},
        ) from error


def parse_spec(spec: Mapping[str, Any]) -> PolicySpec:
    """Parse a live resource's spec (the operator has the rest from the API server)."""
    try:
        return PolicySpec.model_validate(spec)
    except pydantic.ValidationError as error:
        raise PolicyError(
            format_validation_error(error, prefix="spec"),
            context={"problems": problems(error, prefix="spec")},
        ) from error


def format_validation_error(error: pydantic.ValidationError, *, prefix: str = "") -> str:
    """`spec.sources[0].images[1]: glob 'X' ...` for the first problem, and how many more."""
    found = problems(error, prefix=prefix)
    text = found[0]
    if len(found) > 1:
        text += f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})"
    return text


def problems(error: pydantic.ValidationError, *, prefix: str = "") -> list[str]:
    """Every problem in `error`, each as `field.path: what is wrong`."""
    found = []
    errors = error.errors(include_url=False)
    for problem in errors:
        location: tuple[int | str, ...] = tuple(problem["loc"])
        if problem["type"] == "too_short" and any(
            len(other["loc"]) > len(location) and other["loc"][: len(location)] == location
            for other in errors
        ):
            continue  # pydantic counts a list's items after dropping the bad ones: noise
        cause = (problem.get("ctx") or {}).get("error")
        if isinstance(cause, _Problem):
            location += cause.at
        if prefix:
            location = (prefix, *location)
        found.append(f"{_field_path(location)}: {_message(problem, cause)}")
    return found


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


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
}
_COUNTED = {
    "too_short": "needs at least {min_length} item{s}",
    "too_long": "has more than {max_length} item{s}",
}


def _message(problem: ErrorDetails, cause: object) -> str:
    if isinstance(cause, ValueError):
        return str(cause)
    kind = problem["type"]
    message = _MESSAGES.get(kind, str(problem["msg"]))
    if kind in _COUNTED:
        ctx = problem.get("ctx") or {}
        limit = ctx.get("min_length", ctx.get("max_length"))
        return _COUNTED[kind].format(**ctx, s="" if limit == 1 else "s")
    if kind in ("extra_forbidden", "missing"):
        return message
    value = problem.get("input")
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        message += f" (got {shown!r})"
    elif isinstance(value, bool | int | float) or value is None:
        message += f" (got {value!r}"
        message += "; quote it in YAML)" if kind == "string_type" else ")"
    return message


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    previous: int | str | None = None
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            continue  # a bad mapping key: the part before it names the key
        elif previous == "matchLabels":
            path += f'["{part}"]'
        elif "[" in part:
            continue  # pydantic's own steps (`function-after[...]`), not fields
        else:
            path += ("." if path else "") + part
        previous = part
    return path or "(document)"
