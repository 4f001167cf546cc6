"""AdmissionReview in and out: the wire boundary between the API server and imagegate.

Requests are parsed strictly where a wrong guess could admit something (uid, kind, operation,
object) and leniently elsewhere, since the API server may add fields in any release. A body that
cannot be parsed at all is a `MalformedReviewError`; the server answers it with HTTP 400, which the
API server turns into a denial under `failurePolicy: Fail`, never an admit.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import pydantic

from imagegate.errors import ImagegateError

#: AdmissionReview bodies are small; anything this large is an attack or a bug.
MAX_REVIEW_BYTES = 3 * 1024 * 1024
#: Nesting bound of the whole body (objects and arrays). A Pod's deepest field (an env var's
#: `valueFrom.secretKeyRef.name` in a CronJob's template) is under 20 levels inside the review;
#: CRD objects seldom pass 30. Past ~1,000 Python's parser raises RecursionError, and every walk
#: of the object after it (validation, patches, logs) would be at risk too.
MAX_NESTING = 100
#: Python refuses integers longer than this (CVE-2020-10735); a Kubernetes integer has under 20.
MAX_INTEGER_DIGITS = 4300
SUPPORTED_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


class MalformedReviewError(ImagegateError):
    """The request body is not an AdmissionReview imagegate can answer."""


class _Wire(pydantic.BaseModel):
    # Unknown fields are ignored: the API server may add some in any release.
    model_config = pydantic.ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class GroupVersionKind(_Wire):
    group: str = ""
    version: str
    kind: str


class GroupVersionResource(_Wire):
    group: str = ""
    version: str
    resource: str


class UserInfo(_Wire):
    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()


class AdmissionRequest(_Wire):
    uid: str = pydantic.Field(min_length=1)
    kind: GroupVersionKind
    resource: GroupVersionResource
    sub_resource: str = pydantic.Field("", alias="subResource")
    name: str = ""
    namespace: str = ""
    operation: Operation
    user_info: UserInfo = pydantic.Field(default_factory=UserInfo, alias="userInfo")
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = pydantic.Field(None, alias="oldObject")
    dry_run: bool = pydantic.Field(False, alias="dryRun")


class AdmissionReview(_Wire):
    api_version: Literal["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] = pydantic.Field(
        alias="apiVersion"
    )
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


def parse_review(body: bytes) -> AdmissionReview:
    """Parse an AdmissionReview body, or raise `MalformedReviewError` saying what is wrong."""
    if len(body) > MAX_REVIEW_BYTES:
        raise MalformedReviewError(f"AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes")
    document = _load_json(body)
    if not isinstance(document, dict):
        raise MalformedReviewError("body is not a JSON object (an AdmissionReview)")
    try:
        return AdmissionReview.model_validate(document)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise MalformedReviewError(
            f"not a valid AdmissionReview: {where}: {first['msg']}",
            context={"errors": error.errors(include_url=False)},
        ) from error


def _load_json(body: bytes) -> Any:
    """The parsed body, or `MalformedReviewError`: never RecursionError or ValueError."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedReviewError(f"body is not JSON: {error}") from error
    except RecursionError as error:
        raise MalformedReviewError(
            f"body is nested deeper than {MAX_NESTING} levels of objects and arrays"
        ) from error
    except ValueError as error:  # an integer past Python's digit limit
        raise MalformedReviewError(
            f"body has an integer longer than {MAX_INTEGER_DIGITS} digits"
        ) from error
    if _may_nest_deeper(body, MAX_NESTING) and _nesting_exceeds(document, MAX_NESTING):
        raise MalformedReviewError(
            f"body is nested deeper than {MAX_NESTING} levels of objects and arrays"
        )
    return document


def _may_nest_deeper(body: bytes, limit: int) -> bool:
    """Whether the body has more than `limit` opening brackets: no fewer can nest deeper.

    Counting bytes runs at C speed, where the walk below is Python; brackets inside strings only
    make the count larger, so a body under it is never mistaken for a shallow one. Most reviews
    (a Pod has tens) skip the walk.
    """
    return body.count(b"{") + body.count(b"[") > limit


def _nesting_exceeds(document: Any, limit: int) -> bool:
    """Whether `document` nests objects/arrays deeper than `limit`; level by level, no recursion."""
    level: list[Any] = [document] if isinstance(document, dict | list) else []
    for _ in range(limit):
        if not level:
            return False
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
    return bool(level)


def review_uid(body: bytes) -> str | None:
    """The request uid of a body too broken to parse, so a denial can still be addressed.

    Parsing may fail at any depth, so the uid is looked for without parsing the whole body when
    that fails: `"request"` and its `"uid"` come first in what the API server sends.
    """
    try:
        uid = json.loads(body)["request"]["uid"]
    except (ValueError, KeyError, TypeError, RecursionError):
        uid = _uid_by_scan(body)
    return uid if isinstance(uid, str) and uid else None


#: `"request": {"uid": "..."` as the API server writes it (uid first). A uid found in the wrong
#: place only misaddresses a denial, which the API server then refuses: still no admit.
_REQUEST_UID = re.compile(rb'"request"\s*:\s*\{\s*"uid"\s*:\s*"([A-Za-z0-9._:-]{1,128})"')


def _uid_by_scan(body: bytes) -> str | None:
    found = _REQUEST_UID.search(body)
    return found.group(1).decode() if found else None


@dataclasses.dataclass(frozen=True, slots=True)
class AdmissionResponse:
    """What imagegate answers; `to_review` puts it on the wire.

    A dataclass, not a pydantic model: imagegate makes it, nothing parses it, and one is made
    per admission (validation there cost about a fiftieth of a warm admission).
    """

    uid: str
    allowed: bool
    message: str = ""
    code: int = 403
    patch: tuple[Mapping[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    audit_annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_review(self, api_version: str = SUPPORTED_VERSIONS[0]) -> dict[str, Any]:
        """The AdmissionReview to send, within the response bounds (see `MAX_PATCH_BYTES`)."""
        return self._review(api_version, annotations=True)

    def encode(self, api_version: str = SUPPORTED_VERSIONS[0]) -> bytes:
        """`to_review` as the JSON body to send. Annotations given as `AuditAnnotations` are
        spliced in as they were encoded once (a memoised decision's are the same every time)."""
        annotations = self.audit_annotations
        if not isinstance(annotations, AuditAnnotations) or not annotations:
            return json.dumps(self.to_review(api_version)).encode()
        review = self._review(api_version, annotations=False)
        if review["response"]["allowed"] is not self.allowed:  # the patch's denial, as it is
            return json.dumps(review).encode()
        # `response` is the review's last member, and `auditAnnotations` would be its last.
        head = json.dumps(review).encode()
        return head[:-2] + b', "auditAnnotations": ' + annotations.json + b"}}"

    def _review(self, api_version: str, *, annotations: bool) -> dict[str, Any]:
        response: dict[str, Any] = {"uid": self.uid, "allowed": self.allowed}
        if self.patch:
            encoded = json.dumps(list(self.patch), separators=(",", ":")).encode()
            if len(encoded) > MAX_PATCH_BYTES:
                # Dropping the patch would admit what was not rewritten or pinned: deny instead.
                message = f"imagegate: the patch would be larger than {MAX_PATCH_BYTES} bytes"
                return deny(self.uid, message, code=400).to_review(api_version)
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(encoded).decode()
        if not self.allowed:
            response["status"] = {"code": self.code, "message": _clip(self.message, MAX_MESSAGE)}
        if self.warnings:
            response["warnings"] = _bounded_warnings(self.warnings)
        if annotations and self.audit_annotations:
            response["auditAnnotations"] = _bounded_annotations(self.audit_annotations)
        return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


class AuditAnnotations(Mapping[str, str]):
    """Audit annotations that keep their JSON (bounded as `to_review` bounds them), for answers
    that recur: made once per memoised decision, encoded once (docs/design.md §4.10)."""

    __slots__ = ("_items", "json")

    def __init__(self, items: Mapping[str, str]) -> None:
        self._items = dict(items)
        self.json = json.dumps(_bounded_annotations(self._items)).encode()

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"AuditAnnotations({self._items!r})"


#: Response bounds: with `MAX_IMAGES` (core/workloads.py) the largest honest response is far below
#: them; past them an answer of megabytes would only burden the API server and its audit log.
#: The API server itself keeps 4,096 characters of warnings and truncates each past 256.
MAX_WARNINGS = 20
MAX_WARNING_LENGTH = 256
MAX_MESSAGE = 16 * 1024
MAX_AUDIT_VALUE = 16 * 1024
#: A patch for 1,000 images (replace ops, the original-images annotation) is about 400 KB.
MAX_PATCH_BYTES = 1024 * 1024


def _clip(text: str, limit: int) -> str:
    marker = f"... ({len(text) - limit} more characters)"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


def _bounded_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    return {key: _clip(value, MAX_AUDIT_VALUE) for key, value in annotations.items()}


def _bounded_warnings(warnings: Sequence[str]) -> list[str]:
    kept = [_clip(warning, MAX_WARNING_LENGTH) for warning in warnings[:MAX_WARNINGS]]
    if len(warnings) > MAX_WARNINGS:
        kept[-1] = f"imagegate: {len(warnings) - MAX_WARNINGS + 1} more warnings not shown"
    return kept


def deny(
    uid: str, message: str, *, code: int = 403, warnings: Sequence[str] = ()
) -> AdmissionResponse:
    return AdmissionResponse(
        uid=uid, allowed=False, message=message, code=code, warnings=tuple(warnings)
    )
