from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from imagegate.admission import review as admission


def _review(**request: object) -> bytes:
    base: dict[str, object] = {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": "ns",
        "object": {"apiVersion": "v1", "kind": "Pod"},
    }
    base.update(request)
    return json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": base}
    ).encode()


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
