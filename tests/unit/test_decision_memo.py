"""Memoised decisions (docs/design.md §4.10): same inputs, same decision, and never a decision
that needed a signature verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imagegate.admission import builder
from imagegate.admission import review as admission
from imagegate.admission import reviewers as webhook
from imagegate.core import workloads
from imagegate.policy import engine, model
from imagegate.policy.compile import compile_policy

POD = ("", "Pod")


def policy(name: str, **spec: Any) -> engine.CompiledPolicy:
    document = {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": name},
        "spec": spec,
    }
    return compile_policy(model.parse_policy_document(document))


def images(*names: str) -> list[workloads.ContainerImage]:
    containers = [{"name": f"c{n}", "image": image} for n, image in enumerate(names)]
    return workloads.find_images(
        {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": containers}}
    )


TRUST_ALL = {"sources": [{"name": "all", "images": ["**"]}]}
TRUST_LIBRARY = {"sources": [{"name": "library", "images": ["docker.io/library/*"]}]}
KEY = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
SIGNED = {
    "sources": [{"name": "signed", "images": ["**"], "signatures": {"keys": [{"publicKey": KEY}]}}]
}


async def decide(
    found: Sequence[workloads.ContainerImage],
    policies: Sequence[engine.CompiledPolicy],
    verifier: webhook.SignatureVerifier | None = None,
) -> engine.Decision:
    return await webhook.judge(
        found,
        policies,
        obj=None,
        namespace="shop",
        group_kind=POD,
        verifier=verifier,
        keychains=None,
        deadline=0,
    )


async def test_the_same_images_under_the_same_policies_get_the_same_decision() -> None:
    trusting = policy("trusting", **TRUST_ALL)
    first = await decide(images("nginx:1.25"), [trusting])
    assert (await decide(images("nginx:1.25"), [trusting])) is first
    assert (await decide(images("nginx:1.26"), [trusting])) is not first


async def test_another_policy_set_is_decided_afresh() -> None:
    trusting, library = policy("trusting", **TRUST_ALL), policy("library", **TRUST_LIBRARY)
    alone = await decide(images("ghcr.io/acme/app:1"), [trusting])
    assert alone.allowed
    both = await decide(images("ghcr.io/acme/app:1"), [trusting, library])
    assert not both.allowed  # the second policy is part of the key, not only the first
    changed = policy("trusting", **TRUST_LIBRARY)  # a new version: a new object, no memo
    assert not (await decide(images("ghcr.io/acme/app:1"), [changed])).allowed


class FlipVerifier:
    """Fails the first verification of each image, verifies it after: a memoised verdict-based
    decision would keep answering the first result."""

    def __init__(self) -> None:
        self.asked = 0

    async def verify(
        self, checks: Sequence[engine.SignatureCheck], deadline: float, keychain: Any = None
    ) -> Mapping[engine.SignatureCheck, engine.SignatureVerdict]:
        self.asked += 1
        verified = self.asked > 1
        return {check: engine.SignatureVerdict(verified, "no signature found") for check in checks}


async def test_a_decision_that_needed_a_verdict_is_never_memoised() -> None:
    signed, verifier = policy("signed", **SIGNED), FlipVerifier()
    assert not (await decide(images("nginx@sha256:" + "a" * 64), [signed], verifier)).allowed
    assert (await decide(images("nginx@sha256:" + "a" * 64), [signed], verifier)).allowed
    assert verifier.asked == 2


async def test_a_memoised_decision_answers_each_admission_for_itself() -> None:
    trusting, untrusting = policy("trusting", **TRUST_ALL), policy("library", **TRUST_LIBRARY)

    class Source:
        def policies(self) -> Sequence[engine.CompiledPolicy]:
            return (trusting, untrusting)

        async def namespace_labels(self, namespace: str) -> Mapping[str, str]:
            return {}

    validate = webhook.Validator(Source())
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}}
    pod["spec"] = {"containers": [{"name": "app", "image": "ghcr.io/acme/app:1"}]}
    answers = []
    for uid in ("u-1", "u-2"):
        request = builder.review_for(pod, namespace="shop", uid=uid, username="dev")
        answers.append(await validate(admission.AdmissionReview.model_validate(request), 0))
    assert [a.uid for a in answers] == ["u-1", "u-2"]
    assert [a.allowed for a in answers] == [False, False]
    assert answers[0].message == answers[1].message
    assert "ghcr.io/acme/app" in answers[1].message
    assert answers[0].audit_annotations == answers[1].audit_annotations


def test_the_memo_is_bounded() -> None:
    trusting = policy("trusting", **TRUST_ALL)
    decision = engine.Decision((), ("trusting",))
    for n in range(engine.MEMO_SIZE + 10):
        engine.memoise_decision(images(f"app:{n}"), [trusting], POD, decision)
    assert len(trusting._decision_memo) <= engine.MEMO_SIZE
