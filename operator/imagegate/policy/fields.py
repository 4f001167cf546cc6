"""The policy's field types: annotated strings whose checks give messages that name the rule.

Each type carries its check (a pattern, or a function for what a pattern cannot say: a glob that
does not compile, a regular expression, a PEM block that is not a key) and what the CRD schema
gets from it (`_Matches` writes the `pattern`). policy/model.py builds the resources from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from imagegate.core import keys, patterns
from imagegate.policy import glob

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
