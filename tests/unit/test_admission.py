from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from imagegate.admission import builder
from imagegate.admission import review as admission


def _review(**request: object) -> bytes:
    """A Pod CREATE review with `request` fields overridden (the parser's cases break one each)."""
    body = builder.review_for({"apiVersion": "v1", "kind": "Pod"}, namespace="ns", uid="u-1")
    body["request"].update(request)
    return json.dumps(body).encode()


def test_a_pod_create_parses_with_its_fields() -> None:
    review = admission.parse_review(_review(dryRun=True, subResource="ephemeralcontainers"))
    request = review.request
    assert (request.uid, request.kind.kind, request.operation) == ("u-1", "Pod", "CREATE")
    assert request.dry_run is True
    assert request.sub_resource == "ephemeralcontainers"
    assert request.object == {"apiVersion": "v1", "kind": "Pod"}


def test_unknown_fields_from_a_newer_api_server_are_ignored() -> None:
    assert admission.parse_review(_review(futureField={"x": 1})).request.uid == "u-1"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "body is not JSON"),
        (b"\xff\xfe", "body is not JSON"),
        (b"null", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (b'{"kind": "AdmissionReview"}', "apiVersion"),
        (_review(uid=""), "request.uid"),
        (_review(operation="PATCH"), "request.operation"),
        (_review(kind="Pod"), "request.kind"),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview", "request": {}}
            ).encode(),
            "apiVersion",
        ),
    ],
)
def test_malformed_reviews_are_refused_with_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(admission.MalformedReviewError) as caught:
        admission.parse_review(body)
    assert reason in caught.value.user_message


def test_an_oversized_body_is_refused_before_parsing() -> None:
    with pytest.raises(admission.MalformedReviewError, match="larger than"):
        admission.parse_review(b" " * (admission.MAX_REVIEW_BYTES + 1))


def test_the_uid_of_a_broken_review_is_still_found() -> None:
    assert admission.review_uid(_review(operation="PATCH")) == "u-1"
    assert admission.review_uid(b"null") is None
    assert admission.review_uid(b'{"request": {"uid": 5}}') is None


def test_a_denial_carries_status_and_no_patch() -> None:
    review = admission.deny("u-1", "image not trusted", warnings=["w"]).to_review()
    assert review["response"] == {
        "uid": "u-1",
        "allowed": False,
        "status": {"code": 403, "message": "image not trusted"},
        "warnings": ["w"],
    }


def test_a_patch_is_base64_json_patch_with_audit_annotations() -> None:
    op = {"op": "replace", "path": "/spec/containers/0/image", "value": "cgr.dev/chainguard/x"}
    response = admission.AdmissionResponse(
        uid="u-2", allowed=True, patch=(op,), audit_annotations={"rewrites": "1"}
    ).to_review("admission.k8s.io/v1beta1")
    assert response["apiVersion"] == "admission.k8s.io/v1beta1"
    body = response["response"]
    assert body["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(body["patch"])) == [op]
    assert body["auditAnnotations"] == {"rewrites": "1"}
    assert "status" not in body


def test_real_admission_reviews_from_connaisseur(shared_fixtures: Path) -> None:
    folder = shared_fixtures / "admission-requests" / "connaisseur"
    broken = {
        "21_broken_admission_request.json",
        "25_null_request.json",
        "26_broken_update_admission_request.json",
        # Connaisseur's Python-era fixtures carry `oldObject: "None"` (a string). A real API
        # server sends null or an object; imagegate refuses anything else rather than guess.
        "04_cronjob.json",
        "09_dply_multi_image.json",
    }
    parsed = 0
    for path in sorted(folder.glob("*.json")):
        body = path.read_bytes()
        if path.name in broken:
            with pytest.raises(admission.MalformedReviewError):
                admission.parse_review(body)
            continue
        review = admission.parse_review(body)
        assert review.request.uid
        parsed += 1
    assert parsed == len(list(folder.glob("*.json"))) - len(broken)


def _nested(depth: int) -> object:
    node: object = {}
    for _ in range(depth):
        node = {"a": [node]}
    return node


def _deep_body(levels: int) -> bytes:
    """A review whose object nests `levels` arrays, written as text (json.dumps would recurse)."""
    prefix = _review(object={"apiVersion": "v1", "kind": "Pod", "deep": "DEEP"}).decode()
    return prefix.replace('"DEEP"', "[" * levels + "]" * levels).encode()


@pytest.mark.parametrize("levels", [150, 950, 100_000], ids=lambda n: f"{n}-deep")
def test_nesting_past_the_bound_is_a_malformed_review_with_its_uid(levels: int) -> None:
    body = _deep_body(levels)
    with pytest.raises(admission.MalformedReviewError, match="nested deeper than 100 levels"):
        admission.parse_review(body)
    assert admission.review_uid(body) == "u-1"


@pytest.mark.parametrize("levels", [97, 98])
def test_nesting_is_bounded_at_exactly_100_levels(levels: int) -> None:
    # The review, its request and the object are 3 levels; the arrays make the rest. Few
    # brackets in all, so the byte count that lets most reviews skip the walk must not let
    # this one skip it.
    body = _deep_body(levels)
    if levels + 3 <= 100:
        assert admission.parse_review(body).request.uid == "u-1"
    else:
        with pytest.raises(admission.MalformedReviewError, match="nested deeper than 100"):
            admission.parse_review(body)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    obj = {"apiVersion": "v1", "kind": "Pod", "note": "[{" * 500, "deep": _nested(20)}
    assert admission.parse_review(_review(object=obj)).request.object == obj


def test_nesting_within_the_bound_parses() -> None:
    obj = {"apiVersion": "v1", "kind": "Pod", "deep": _nested(40)}
    assert admission.parse_review(_review(object=obj)).request.object == obj


def test_an_integer_of_thousands_of_digits_is_a_malformed_review_with_its_uid() -> None:
    body = _review(object={"kind": "Pod", "n": "NUMBER"}).replace(b'"NUMBER"', b"9" * 5000)
    with pytest.raises(admission.MalformedReviewError, match="longer than 4300 digits"):
        admission.parse_review(body)
    assert admission.review_uid(body) == "u-1"


def test_many_long_warnings_are_bounded_in_count_and_length() -> None:
    response = admission.AdmissionResponse(uid="u", allowed=True, warnings=("w" * 10_000,) * 5000)
    warnings = response.to_review()["response"]["warnings"]
    assert len(warnings) == admission.MAX_WARNINGS
    assert all(len(w) <= admission.MAX_WARNING_LENGTH for w in warnings)
    assert "4981 more warnings" in warnings[-1]


def test_a_huge_denial_message_and_audit_annotation_are_clipped() -> None:
    response = admission.AdmissionResponse(
        uid="u", allowed=False, message="m" * 10**6, audit_annotations={"detail": "d" * 10**6}
    ).to_review()["response"]
    assert len(response["status"]["message"]) <= admission.MAX_MESSAGE
    assert len(response["auditAnnotations"]["detail"]) <= admission.MAX_AUDIT_VALUE


def test_a_patch_past_the_bound_is_a_denial_naming_it_not_a_partial_patch() -> None:
    patch = tuple({"op": "add", "path": f"/x{i}", "value": "v" * 100} for i in range(20_000))
    response = admission.AdmissionResponse(uid="u", allowed=True, patch=patch).to_review()
    answer = response["response"]
    assert answer["allowed"] is False
    assert "patch" not in answer
    assert answer["status"] == {
        "code": 400,
        "message": f"imagegate: the patch would be larger than {admission.MAX_PATCH_BYTES} bytes",
    }


@pytest.mark.parametrize(
    "response",
    [
        admission.AdmissionResponse(uid="u", allowed=True),
        admission.AdmissionResponse(
            uid='u"\n', allowed=True, warnings=("w",), audit_annotations={"a": "b"}
        ),
        admission.AdmissionResponse(
            uid="u",
            allowed=True,
            warnings=("w",),
            audit_annotations=admission.AuditAnnotations({"decision": "allowed", "d": '[{"x":1}]'}),
        ),
        admission.AdmissionResponse(
            uid="u",
            allowed=False,
            message="no",
            audit_annotations=admission.AuditAnnotations({"detail": "d" * 10**6}),
        ),
        admission.AdmissionResponse(
            uid="u",
            allowed=True,
            patch=({"op": "replace", "path": "/spec/containers/0/image", "value": "x"},),
            audit_annotations=admission.AuditAnnotations({"rewrites": "1"}),
        ),
        admission.AdmissionResponse(
            uid="u",
            allowed=True,
            patch=tuple({"op": "add", "path": f"/x{i}", "value": "v" * 100} for i in range(20_000)),
            audit_annotations=admission.AuditAnnotations({"rewrites": "20000"}),
        ),
    ],
    ids=["bare", "plain-annotations", "shared", "clipped", "patch", "patch-past-the-bound"],
)
def test_the_encoded_body_is_the_review_to_send(response: admission.AdmissionResponse) -> None:
    """`encode` (what the server sends) and `to_review` (what tests and bounds check) agree, also
    where annotations are spliced in from their own encoding."""
    for version in admission.SUPPORTED_VERSIONS:
        assert json.loads(response.encode(version)) == response.to_review(version)
