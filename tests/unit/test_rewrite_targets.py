"""`/mutate` rewrites only to an admissible target (design.md §5.2), with a fake registry."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imagegate.admission import records as audit
from imagegate.admission import reviewers as webhook
from imagegate.core import reference
from imagegate.policy import engine
from imagegate.registry import errors as registry_errors
from imagegate.registry import staleness

from .test_webhook import Policies, apply_patch, deployment, policy, review

DIGEST = "sha256:" + "d" * 64
OTHER = "sha256:" + "e" * 64
TARGET = "docker.io/hardened/python:3.12"
PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
SIGNED = {"keys": [{"publicKey": PEM}], "requireTransparencyLog": False}


def hardened(
    *, signatures: bool = False, mode: str = "enforce", **spec: Any
) -> engine.CompiledPolicy:
    source: dict[str, Any] = {"name": "hardened", "images": ["docker.io/hardened/**"]}
    if signatures:
        source["signatures"] = SIGNED
    # These tests patch Deployments, which only scope All does (design.md §5.1).
    spec.setdefault("mutation", {"scope": "All"})
    return policy(
        "hardened",
        mode=mode,
        sources=[source],
        rewrites=[
            {"from": "docker.io/library/python", "to": "docker.io/hardened/python", "tag": "keep"}
        ],
        **spec,
    )


class Registry:
    """Tags → digests; a tag it does not have is ManifestUnknown, `down` is unreachable."""

    def __init__(self, tags: Mapping[str, str], *, down: bool = False, delay: float = 0.0):
        self.tags = dict(tags)
        self.down = down
        self.delay = delay
        self.asked: list[str] = []

    async def resolve(
        self, image: reference.ImageReference, deadline: float, keychain: Any = None
    ) -> str:
        self.asked.append(str(image))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise registry_errors.RegistryUnavailable("registry.test: connection refused")
        if image.digest is not None:
            return image.digest
        if str(image) not in self.tags:
            raise registry_errors.ManifestUnknown(f"{image.name}: manifests/{image.tag} not found")
        return self.tags[str(image)]


class Verifier:
    """Signed digests verify; anything else fails with "no signature found"."""

    def __init__(self, signed: Sequence[str]):
        self.signed = set(signed)
        self.asked: list[str] = []

    async def verify(
        self, checks: Sequence[engine.SignatureCheck], deadline: float, keychain: Any = None
    ) -> Mapping[engine.SignatureCheck, engine.SignatureVerdict]:
        verdicts = {}
        for check in checks:
            self.asked.append(check.image)
            digest = check.image.rsplit("@", 1)[-1]
            verdicts[check] = (
                engine.SignatureVerdict(True, digest=digest)
                if digest in self.signed
                else engine.SignatureVerdict(False, f"{digest}: keys[0]: no signature found")
            )
        return verdicts


def image_of(obj: dict[str, Any], response: Any) -> str:
    image: str = apply_patch(obj, response)["spec"]["template"]["spec"]["containers"][0]["image"]
    return image


async def test_a_missing_target_leaves_the_image_as_written_and_says_why() -> None:
    registry = Registry({})
    mutator = webhook.Mutator(Policies(hardened()), registry, verifier=Verifier([]))
    obj = deployment("python:3.12")
    response = await mutator(review(obj), 0)
    assert response.patch == ()
    assert response.warnings == (
        "imagegate: not rewriting python:3.12 to docker.io/hardened/python:3.12: not found in "
        "its registry; validation decides",
    )
    assert response.audit_annotations == {webhook.AUDIT_DECISION: "unchanged"}


async def test_an_unreachable_target_leaves_the_image_as_written() -> None:
    mutator = webhook.Mutator(Policies(hardened()), Registry({}, down=True))
    response = await mutator(review(deployment("python:3.12")), 0)
    assert response.patch == ()
    assert response.warnings == (
        "imagegate: not rewriting python:3.12 to docker.io/hardened/python:3.12: could not "
        "resolve it: registry.test: connection refused; validation decides",
    )


async def test_a_missing_target_is_remembered_briefly() -> None:
    now = [100.0]
    registry = Registry({})
    mutator = webhook.Mutator(Policies(hardened()), registry, clock=lambda: now[0])
    for _ in range(3):  # a Deployment's burst of Pods
        assert (await mutator(review(deployment("python:3.12")), 0)).patch == ()
    assert registry.asked == [TARGET]
    registry.tags[TARGET] = DIGEST  # pushed since
    now[0] += 10.0
    obj = deployment("python:3.12")
    assert image_of(obj, await mutator(review(obj), 0)) == f"{TARGET}@{DIGEST}"
    assert registry.asked == [TARGET, TARGET]


async def test_an_unsigned_target_is_not_rewritten_when_signatures_are_required() -> None:
    verifier = Verifier(signed=[])
    mutator = webhook.Mutator(
        Policies(hardened(signatures=True)), Registry({TARGET: DIGEST}), verifier=verifier
    )
    response = await mutator(review(deployment("python:3.12")), 0)
    assert response.patch == ()
    assert response.warnings == (
        "imagegate: not rewriting python:3.12 to docker.io/hardened/python:3.12: signature not "
        "verified by policy hardened, source hardened: keys[0]: no signature found; validation "
        "decides",
    )
    assert verifier.asked == [f"{TARGET}@{DIGEST}"]  # what was resolved is what is verified


async def test_a_signed_target_is_rewritten_and_pinned_to_the_verified_digest() -> None:
    registry = Registry({TARGET: DIGEST})
    verifier = Verifier(signed=[DIGEST])
    mutator = webhook.Mutator(Policies(hardened(signatures=True)), registry, verifier=verifier)
    obj = deployment("python:3.12")
    response = await mutator(review(obj), 0)
    assert image_of(obj, response) == f"{TARGET}@{DIGEST}"
    assert response.warnings == ()
    assert registry.asked == [TARGET]  # pinning reuses the target's digest: no second lookup
    assert verifier.asked == [f"{TARGET}@{DIGEST}"]


async def test_a_verified_target_is_rewritten_unpinned_when_pin_digests_is_off() -> None:
    registry = Registry({TARGET: DIGEST})
    mutator = webhook.Mutator(
        Policies(hardened(signatures=True, pinDigests=False)),
        registry,
        verifier=Verifier(signed=[DIGEST]),
    )
    obj = deployment("python:3.12")
    assert image_of(obj, await mutator(review(obj), 0)) == TARGET


async def test_only_enforce_policies_refuse_a_target() -> None:
    # A warn policy's failed signature only warns in validation: it is no reason to refuse.
    audited = policy(
        "watch",
        mode="warn",
        sources=[{"name": "hardened", "images": ["docker.io/hardened/**"], "signatures": SIGNED}],
    )
    verifier = Verifier(signed=[])
    mutator = webhook.Mutator(
        Policies(hardened(), audited), Registry({TARGET: DIGEST}), verifier=verifier
    )
    obj = deployment("python:3.12")
    assert image_of(obj, await mutator(review(obj), 0)) == f"{TARGET}@{DIGEST}"
    assert verifier.asked == []


async def test_an_untrusted_target_costs_no_registry_call() -> None:
    # No source trusts it: validation denies the rewrite, naming it, as before.
    untrusting = policy(
        "odd",
        sources=[{"name": "other", "images": ["ghcr.io/**"]}],
        rewrites=[{"from": "docker.io/library/python", "to": "docker.io/hardened/python"}],
        mutation={"scope": "All"},
    )
    registry = Registry({})
    obj = deployment("python:3.12")
    response = await webhook.Mutator(Policies(untrusting), registry)(review(obj), 0)
    assert image_of(obj, response) == "docker.io/hardened/python:latest"
    assert registry.asked == []


async def test_a_slow_target_is_given_up_within_the_budget_it_shares_with_pinning() -> None:
    budget = 0.2
    registry = Registry({TARGET: DIGEST}, delay=0.15)
    mutator = webhook.Mutator(Policies(hardened()), registry, budget=budget)
    obj = deployment("python:3.12")
    obj["spec"]["template"]["spec"]["containers"].append(
        {"name": "side", "image": "docker.io/hardened/tool:1"}
    )
    registry.tags["docker.io/hardened/tool:1"] = OTHER
    response = await mutator(review(obj), 0)
    # The target took 0.15 s of the 0.2 s: the pin after it had 0.05 s, not a budget of its own.
    assert image_of(obj, response) == f"{TARGET}@{DIGEST}"
    assert "imagegate: could not pin within 0.2s; validation decides" in response.warnings


async def test_a_target_not_answered_within_the_budget_is_not_rewritten() -> None:
    mutator = webhook.Mutator(Policies(hardened()), Registry({TARGET: DIGEST}, delay=5), budget=0.1)
    started = time.monotonic()
    response = await mutator(review(deployment("python:3.12")), 0)
    assert time.monotonic() - started < 4  # never the registry's 5 s: no hang, not a speed test
    assert response.allowed
    assert response.patch == ()
    assert response.warnings == (
        "imagegate: not rewriting python:3.12 to docker.io/hardened/python:3.12: not checked "
        "within 0.1s; validation decides",
    )


class Recorder:
    def __init__(self) -> None:
        self.entries: list[audit.AuditEntry] = []

    def record(self, entry: audit.AuditEntry) -> None:
        self.entries.append(entry)


async def test_a_dropped_version_is_named_in_the_warning_the_event_and_the_annotation() -> None:
    latest_only = policy(
        "cg",
        sources=[{"name": "cg", "images": ["cgr.dev/chainguard/**"]}],
        rewrites=[{"catalog": "chainguard", "allowLatestOnly": True}],
        mutation={"scope": "All"},
    )
    registry = Registry({"cgr.dev/chainguard/python:latest": DIGEST})
    recorder = Recorder()
    mutator = webhook.Mutator(Policies(latest_only), registry, recorders=[recorder])
    obj = deployment("python:3.12")
    response = await mutator(review(obj), 0)
    assert image_of(obj, response) == f"cgr.dev/chainguard/python:latest@{DIGEST}"
    dropping = "dropping version 3.12, as the target serves only latest"
    assert response.warnings == (
        f"imagegate: container 'app': rewrote python:3.12 to cgr.dev/chainguard/python:latest, "
        f"{dropping}",
    )
    assert json.loads(response.audit_annotations[webhook.AUDIT_DROPPED]) == {
        "containers/app": "3.12"
    }
    (entry,) = recorder.entries
    assert entry.message() == (
        "rewrote container 'app' image 'python:3.12' of Deployment/web in default to "
        f"cgr.dev/chainguard/python:latest, {dropping}"
    )


class StaleRegistry(Registry):
    """Down, but remembers the target's digest (stale-if-error) and reports serving it."""

    async def resolve(
        self, image: reference.ImageReference, deadline: float, keychain: Any = None
    ) -> str:
        self.asked.append(str(image))
        staleness.report(staleness.StaleAnswer("docker.io", "digest", f"tag {image}", 90.0))
        return self.tags[str(image)]


async def test_a_target_served_from_memory_is_rewritten_with_the_staleness_warning() -> None:
    mutator = webhook.Mutator(Policies(hardened()), StaleRegistry({TARGET: DIGEST}))
    obj = deployment("python:3.12")
    response = await mutator(review(obj), 0)
    assert image_of(obj, response) == f"{TARGET}@{DIGEST}"
    assert response.warnings == (
        "imagegate: registry docker.io unreachable; used the digest verified 90s ago for tag "
        f"{TARGET}",
    )


class CountingKeychains:
    """A KeychainSource that counts its reads (each one costs the API server Secret GETs)."""

    def __init__(self) -> None:
        self.reads = 0

    async def keychain(self, namespace: str, pull: Any, policies: Any) -> Any:
        self.reads += 1
        return None


async def test_target_checks_and_pins_read_the_pull_credentials_once() -> None:
    registry = Registry({TARGET: DIGEST, "docker.io/hardened/tool:1": OTHER})
    keychains = CountingKeychains()
    mutator = webhook.Mutator(Policies(hardened()), registry, keychains)
    obj = deployment("python:3.12")
    obj["spec"]["template"]["spec"]["containers"].append(
        {"name": "side", "image": "docker.io/hardened/tool:1"}
    )
    response = await mutator(review(obj), 0)
    # One target checked (python) and one image pinned (tool): both asked the registry.
    assert image_of(obj, response) == f"{TARGET}@{DIGEST}"
    assert sorted(registry.asked) == sorted([TARGET, "docker.io/hardened/tool:1"])
    assert keychains.reads == 1
