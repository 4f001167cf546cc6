"""`/validate-policy`: refuse, at apply time, a ClusterImagePolicy or ImagePolicy that the operator
could not compile (a regular expression that does not compile, a PEM block that is not a key:
what the CRD schema cannot check).

It compiles with the operator's own function, so what it admits the operator can enforce. It is
a convenience, not the safety net: a policy that reaches the cluster without it (imagegate down,
the webhook not registered) fails closed in the operator instead (policy/compile.compile_broken).
"""

from __future__ import annotations

from imagegate.admission import review as admission
from imagegate.errors import ImagegateError
from imagegate.policy import compile as policy_compile
from imagegate.policy import model


class PolicyReviewer:
    """A `server.Reviewer` for imagegate's own policy resources."""

    async def __call__(
        self, review: admission.AdmissionReview, deadline: float
    ) -> admission.AdmissionResponse:
        return review_policy(review.request)


def review_policy(request: admission.AdmissionRequest) -> admission.AdmissionResponse:
    uid = request.uid
    if request.operation not in ("CREATE", "UPDATE") or request.sub_resource:
        return admission.AdmissionResponse(uid=uid, allowed=True)  # deleting is always allowed
    kind = request.kind.kind
    if request.kind.group != model.GROUP or kind not in model.KINDS or request.object is None:
        return admission.deny(uid, f"imagegate: /validate-policy does not judge {kind} objects")
    try:
        policy_compile.compile_resource({"apiVersion": model.API_VERSION, **request.object})
    except ImagegateError as error:
        return admission.deny(uid, f"imagegate: {error.user_message}", code=422)
    return admission.AdmissionResponse(uid=uid, allowed=True)
