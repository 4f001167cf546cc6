"""AdmissionReview in and out: the wire boundary between the API server and imagegate.

Requests are parsed strictly where a wrong guess could admit something (uid, kind, operation,
object) and leniently elsewhere, since the API server may add fields in any release. A body that
cannot be parsed at all is a `MalformedReviewError`; the server answers it with HTTP 400, which the
API server turns into a denial under `failurePolicy: Fail`, never an admit.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pydantic

from imagegate.errors import ImagegateError

#: AdmissionReview bodies are small; anything this large is an attack or a bug.
MAX_REVIEW_BYTES = 3 * 1024 * 1024
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
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedReviewError(f"body is not JSON: {error}") from error
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


def review_uid(body: bytes) -> str | None:
    """The request uid of a body too broken to parse, so a denial can still be addressed."""
    try:
        uid = json.loads(body)["request"]["uid"]
    except (ValueError, KeyError, TypeError):
        return None
    return uid if isinstance(uid, str) and uid else None


class AdmissionResponse(_Wire):
    """What imagegate answers; `to_review` puts it on the wire."""

    uid: str
    allowed: bool
    message: str = ""
    code: int = 403
    patch: tuple[Mapping[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    audit_annotations: Mapping[str, str] = pydantic.Field(default_factory=dict)

    def to_review(self, api_version: str = SUPPORTED_VERSIONS[0]) -> dict[str, Any]:
        response: dict[str, Any] = {"uid": self.uid, "allowed": self.allowed}
        if not self.allowed:
            response["status"] = {"code": self.code, "message": self.message}
        if self.patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(
                json.dumps(list(self.patch), separators=(",", ":")).encode()
            ).decode()
        if self.warnings:
            response["warnings"] = list(self.warnings)
        if self.audit_annotations:
            response["auditAnnotations"] = dict(self.audit_annotations)
        return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


def deny(
    uid: str, message: str, *, code: int = 403, warnings: Sequence[str] = ()
) -> AdmissionResponse:
    return AdmissionResponse(
        uid=uid, allowed=False, message=message, code=code, warnings=tuple(warnings)
    )
