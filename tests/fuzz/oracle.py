"""What a webhook answer must be, judged from the body alone (for the slice and the long run).

`answer_problem` returns why an answer is wrong, or None. It reads the body with `json.loads`,
never with imagegate's parser, and encodes docs/design.md §4 for a policy that trusts only
`cgr.dev/chainguard/**` in every namespace:

- only CREATE and UPDATE bring images the kubelet would pull (§4.1); DELETE and CONNECT are
  admitted by design, and so is a review without an object;
- a subresource other than the object itself or `ephemeralcontainers` (`status`, `scale`,
  `binding`, ...) changes no image and is admitted by design;
- the kind is the one the API server names in `request.kind` (group, kind): only the pod-spec
  kinds of `core.workloads.POD_SPEC_POINTERS` hold images; any other kind is admitted;
- for those, every image `find_images` finds must be trusted, and a pod spec it cannot read
  must be denied (§4.1: "denied, never admitted unread");
- on UPDATE with an `oldObject` only images that are new are judged (§4.7): an image counts as
  old when the old object ran the same string in the same list under the same container name.
  (Computed here from `find_images` on both, not with `new_images`, the code under test.)

Anything admitted outside these rules is an untrusted admit. And as no registry or verifier
is involved, a denial coded 500 (the reviewer raised) or 504 (the deadline passed) is a bug too.
"""

from __future__ import annotations

import json
from typing import Any

from imagegate.core import reference, workloads

TRUSTED_PREFIX = "cgr.dev/chainguard/"
SUPPORTED = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
JUDGED_SUBRESOURCES = ("", "ephemeralcontainers")


def trusted(image: str) -> bool:
    try:
        name = reference.parse(image).name
    except reference.InvalidReferenceError:
        return False
    return name.startswith(TRUSTED_PREFIX) and len(name) > len(TRUSTED_PREFIX)


def readable_uid(body: bytes) -> str | None:
    """The request uid when the body is JSON with a non-empty string at request.uid."""
    try:
        uid = json.loads(body)["request"]["uid"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return None
    return uid if isinstance(uid, str) and uid else None


def judged_images(request: dict[str, Any]) -> list[str] | None:
    """The images the webhook must judge (§4), or None when the request is admitted unjudged.

    Raises `workloads.MalformedWorkloadError` when the object's pod spec cannot be read.
    """
    if request.get("operation") not in ("CREATE", "UPDATE"):
        return None
    obj = request.get("object")
    if not isinstance(obj, dict):
        return None
    if request.get("subResource", "") not in JUDGED_SUBRESOURCES:
        return None
    kind = request.get("kind")
    if not isinstance(kind, dict):
        return None
    group_kind = (str(kind.get("group", "")), str(kind.get("kind")))
    if group_kind not in workloads.POD_SPEC_POINTERS:
        return None
    found = workloads.find_images(obj, group_kind)
    old = request.get("oldObject")
    if request["operation"] == "UPDATE" and isinstance(old, dict):
        try:
            old_images = workloads.find_images(old, group_kind)
            before = {(c.kind, c.container_name, c.image) for c in old_images}
        except workloads.MalformedWorkloadError:
            before = set()
        found = [c for c in found if (c.kind, c.container_name, c.image) not in before]
    return [c.image for c in found]


def untrusted_admit(body: bytes) -> str | None:
    """Why admitting `body` is wrong (an untrusted or unreadable image), or None."""
    try:
        document = json.loads(body)
        request = document["request"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return "admitted a body that is not an AdmissionReview"
    if not isinstance(request, dict):
        return "admitted a review whose request is not an object"
    try:
        images = judged_images(request)
    except workloads.MalformedWorkloadError as error:
        return f"admitted an unreadable pod spec: {error.user_message}"
    for image in images or ():
        if not trusted(image):
            return f"admitted the untrusted image {image!r}"
    return None


def answer_problem(path: str, body: bytes, status: int, answer: Any) -> str | None:
    """Why (status, answer) is not a correct answer to `body` on `path`, or None."""
    if 400 <= status < 500:
        return None
    if status != 200:
        return f"HTTP {status}"
    if not isinstance(answer, dict) or answer.get("kind") != "AdmissionReview":
        return "200 without an AdmissionReview"
    if answer.get("apiVersion") not in SUPPORTED:
        return f"answer apiVersion {answer.get('apiVersion')!r}"
    response = answer.get("response")
    if not isinstance(response, dict) or not isinstance(response.get("allowed"), bool):
        return "answer without response.allowed"
    uid = readable_uid(body)
    if uid is not None and response.get("uid") != uid:
        return f"answer uid {response.get('uid')!r} for request uid {uid!r}"
    if not isinstance(response.get("uid"), str) or not response["uid"]:
        return "answer without a uid"
    if response["allowed"]:
        return untrusted_admit(body) if path == "/validate" else None
    # A denial coded 500 is an exception the reviewer let escape, 504 a deadline that passed;
    # neither may happen here (no registry, no verifier): every other denial names its reason.
    status_code = (response.get("status") or {}).get("code")
    if status_code in (500, 504):
        return f"denial with code {status_code}: {(response.get('status') or {}).get('message')}"
    return None
