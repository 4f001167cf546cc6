"""`imagegate verify IMAGE -p POLICY`: what the webhook checks for one image, step by step.

As `cosign verify` does, but under a policy: the digest the tag names, which source of each
applicable policy matched, each signature requirement's authorities and transparency-log rule,
each verdict, and the decision. The decision is `reviewers.judge`'s with the webhook's own
verifier (docs/design.md §6.3). Exit status: 0 admitted, 1 denied, 2 bad input or usage.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from imagegate.admission import reviewers as webhook
from imagegate.commands import check, online
from imagegate.core import reference, workloads
from imagegate.errors import ImagegateError, UsageError
from imagegate.policy import engine, model
from imagegate.registry.keychain import Keychain


@dataclass
class RecordingVerifier:
    """The webhook's verifier, with every check and verdict kept for the report."""

    inner: webhook.SignatureVerifier
    seen: dict[engine.SignatureCheck, engine.SignatureVerdict] = field(default_factory=dict)

    async def verify(
        self,
        checks: Sequence[engine.SignatureCheck],
        deadline: float,
        keychain: Keychain | None = None,
    ) -> Mapping[engine.SignatureCheck, engine.SignatureVerdict]:
        verdicts = await self.inner.verify(checks, deadline, keychain)
        self.seen.update(verdicts)
        return verdicts


def authorities(requirement: model.Signatures | None) -> list[str]:
    """The requirement's authorities in the verifier's order (authorities.of_requirement)."""
    if requirement is None:
        return []
    named = [
        f"keys[{i}] ({'secret ' + k.secret_ref.name if k.secret_ref else 'inline key'})"
        for i, k in enumerate(requirement.keys)
    ]
    for index, identity in enumerate(requirement.keyless):
        issuer = identity.issuer or f"~{identity.issuer_regexp}"
        subject = identity.subject or f"~{identity.subject_regexp}"
        named.append(f"keyless[{index}] (issuer {issuer}, subject {subject})")
    return named


def _check_report(check: engine.SignatureCheck, verdict: engine.SignatureVerdict) -> dict[str, Any]:
    requirement = check.requirement
    return {
        "policy": check.policy,
        "source": check.source,
        "authorities": authorities(requirement),
        "transparencyLog": bool(requirement and requirement.require_transparency_log),
        "trustRoot": (
            requirement.trust_root.config_map_ref.name
            if requirement and requirement.trust_root
            else "sigstore public-good"
        ),
        "verified": verdict.verified,
        "digest": verdict.digest,
        "reason": verdict.reason,
    }


async def _digest(
    resolver: webhook.DigestResolver | None,
    image: str,
    keychains: webhook.KeychainSource | None,
    namespace: str,
    policies: Sequence[engine.CompiledPolicy],
) -> tuple[str | None, str]:
    """(digest the image names now, or None; why not)."""
    if resolver is None:
        return None, "no registry asked"
    try:
        parsed = reference.parse(image)
        keychain = None
        if keychains is not None:
            keychain = await keychains.keychain(namespace, workloads.PullContext(), policies)
        deadline = time.monotonic() + online.OBJECT_DEADLINE
        return await resolver.resolve(parsed, deadline, keychain), ""
    except ImagegateError as error:
        return None, error.user_message


async def report(
    image: str,
    policies: Sequence[engine.CompiledPolicy],
    namespace: str,
    wired: online.Collaborators,
) -> dict[str, Any]:
    """What was checked for `image` in `namespace`, and the decision."""
    # The image as a Pod would name it: judge reads the keychain for an object's pull context.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {"containers": [{"name": "verify", "image": image}]},
    }
    recorder = RecordingVerifier(wired.verifier)
    digest, unresolved = await _digest(wired.resolver, image, wired.keychains, namespace, policies)
    decision = await webhook.judge(
        workloads.find_images(pod),
        policies,
        obj=pod,
        namespace=namespace,
        group_kind=("", "Pod"),
        verifier=recorder,
        keychains=wired.keychains,
        deadline=time.monotonic() + online.OBJECT_DEADLINE,
    )
    (judged,) = decision.images
    verdicts = recorder.seen
    return {
        "image": image,
        "namespace": namespace,
        "digest": digest,
        "digestError": unresolved,
        "policies": [
            {"policy": policy.display_name, "mode": policy.mode.value} for policy in policies
        ],
        "trustedBy": [{"policy": p, "source": s} for p, s in judged.trusted_by],
        "violations": [
            {"policy": v.policy.display_name, "mode": v.policy.mode.value, "reason": v.reason}
            for v in judged.violations
        ],
        "signatures": [_check_report(check, verdict) for check, verdict in verdicts.items()],
        "allowed": decision.allowed,
    }


def render_text(result: Mapping[str, Any]) -> str:
    lines = [f"image:      {result['image']}"]
    digest = result["digest"] or f"not resolved ({result['digestError']})"
    lines.append(f"digest:     {digest}")
    lines.append(f"namespace:  {result['namespace']}")
    if not result["policies"]:
        lines.append("policies:   none applies")
    for policy in result["policies"]:
        lines.append(f"policy:     {policy['policy']} ({policy['mode']})")
    for trusted in result["trustedBy"]:
        lines.append(f"  source {trusted['source']} of {trusted['policy']}: passed")
    for signature in result["signatures"]:
        tlog = "required" if signature["transparencyLog"] else "not required"
        lines.append(
            f"  signatures for source {signature['source']} of {signature['policy']}: "
            f"any of {', '.join(signature['authorities'])}; trust root "
            f"{signature['trustRoot']}; transparency log (Rekor) {tlog}"
        )
        outcome = "verified" if signature["verified"] else "FAILED: " + signature["reason"]
        lines.append(f"    -> {outcome}")
    for violation in result["violations"]:
        lines.append(
            f"  violation of {violation['policy']} ({violation['mode']}): {violation['reason']}"
        )
    lines.append("decision:   " + ("admitted" if result["allowed"] else "denied"))
    return "\n".join(lines)


def run(
    image: str,
    policy_paths: Sequence[str],
    *,
    options: online.OnlineOptions,
    output: str = "text",
    namespace: str = "default",
    namespace_labels: str = "",
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if output not in ("text", "json"):
        raise UsageError("-o wants text or json")
    policies = check.load_policies(policy_paths, stdin)
    labels = check.parse_labels(namespace_labels)
    chosen = engine.applicable(
        policies, namespace, {"kubernetes.io/metadata.name": namespace, **labels}
    )

    async def verify() -> dict[str, Any]:
        async with online.online(options) as wired:
            return await report(image, chosen, namespace, wired)

    result = asyncio.run(verify())
    if output == "json":
        json.dump(result, stdout, indent=2)
        stdout.write("\n")
    else:
        stdout.write(render_text(result) + "\n")
    return 0 if result["allowed"] else 1
