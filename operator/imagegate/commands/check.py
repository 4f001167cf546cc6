"""`imagegate check`: judge manifests against policy files as the webhooks would.

Exit status: 0 when every object is admitted, 1 when at least one is denied, 2 for bad input or
usage. A bad policy file stops at once (one line on stderr); a bad manifest file is reported
(one line on stderr, and in the output) and the other files are still judged, then the exit
status is 2. The decision is the webhooks', step for step: rewrites of enforce policies first
(as `/mutate`), then `reviewers.judge` on the images as stored (as `/validate`). Offline (the
default) no registry is asked, signature requirements fail saying so and rewrites are shown
with their targets unchecked; `--verify` asks the registries with the webhook's own verifier and
checks rewrite targets as `/mutate` does (admission/targets.py; docs/design.md §5.2, §6.2).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from imagegate.admission import reviewers as webhook
from imagegate.admission import targets
from imagegate.commands import documents, online, sarif
from imagegate.core import workloads
from imagegate.errors import UsageError
from imagegate.policy import compile as policy_compile
from imagegate.policy import engine, model
from imagegate.registry.keychain import Keychain

OFFLINE_SIGNATURE_REASON = online.OFFLINE_SIGNATURE_REASON
OUTPUTS = ("text", "json", "sarif")
#: What a rewrite's reason adds offline: `/mutate` would first check that the target resolves
#: and verifies (design.md §5.2), and offline nothing was asked.
OFFLINE_TARGET_NOTE = "target not checked offline (--verify checks it)"


def load_documents(sources: Sequence[str], stdin: TextIO) -> list[documents.Loaded]:
    """Every object in the files (`-` is stdin); raises `documents.BadFile` at the first bad one."""
    return [loaded for source in sources for loaded in documents.read(source, stdin)]


def load_policies(paths: Sequence[str], stdin: TextIO) -> list[engine.CompiledPolicy]:
    policies = []
    for loaded in load_documents(paths, stdin):
        if not model.is_policy_document(loaded.document):
            raise UsageError(
                f"{loaded.origin}: {documents.kind_of(loaded.document) or 'an object'} is not an "
                "imagegate policy"
            )
        try:
            compiled = policy_compile.compile_policy(model.parse_policy_document(loaded.document))
        except model.PolicyError as error:
            raise UsageError(f"{loaded.origin}: {error.user_message}") from error
        policies.append(compiled)
    if not policies:
        raise UsageError("no policies given (-p POLICY.yaml)")
    return policies


def parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for pair in filter(None, text.split(",")):
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise UsageError(f"--namespace-labels wants k=v,k2=v2; got {pair!r}")
        labels[key.strip()] = value.strip()
    return labels


def _group_kind(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(API group, kind) as the API server would send it, from the object's own fields."""
    api_version = obj.get("apiVersion")
    group = api_version.rpartition("/")[0] if isinstance(api_version, str) else ""
    return group, documents.kind_of(obj)


def _as_stored(planned: Sequence[engine.PlannedImage]) -> list[workloads.ContainerImage]:
    """The images after `/mutate`'s rewrites: what `/validate` is shown."""
    return [
        p.container._replace(image=p.final_text) if p.rewritten_by else p.container for p in planned
    ]


async def check_object(
    loaded: documents.Loaded,
    policies: Sequence[engine.CompiledPolicy],
    namespace: str,
    labels: Mapping[str, str],
    verifier: webhook.SignatureVerifier,
    keychains: webhook.KeychainSource | None,
    checker: targets.TargetChecker | None = None,
) -> dict[str, Any]:
    """One object's verdict, in the `-o json` shape of docs/design.md §6.

    `checker`: rewrite targets are checked with it, as `/mutate` checks them; None (offline):
    rewrites are made unchecked and say so."""
    obj = loaded.document
    raw_metadata = obj.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    own_namespace = metadata.get("namespace")
    namespace = own_namespace if isinstance(own_namespace, str) and own_namespace else namespace
    name = metadata.get("name")
    result: dict[str, Any] = {
        "file": loaded.origin,
        "line": loaded.line,
        "kind": documents.kind_of(obj),
        "namespace": namespace,
        "name": name if isinstance(name, str) else "",
        "allowed": True,
        "warnings": [],
        "images": [],
    }
    try:
        images = workloads.find_images(obj)
    except workloads.MalformedWorkloadError as error:
        result.update(allowed=False, error=error.user_message)
        return result
    chosen = engine.applicable(
        policies, namespace, {"kubernetes.io/metadata.name": namespace, **labels}
    )
    planned = engine.plan_rewrites(images, chosen, apply=True)
    deadline = time.monotonic() + online.OBJECT_DEADLINE
    refusals: list[str] = []
    if checker is not None:
        planned, refusals = await _check_targets(
            checker, planned, chosen, obj, namespace, keychains, deadline
        )
    decision = await webhook.judge(
        _as_stored(planned),
        chosen,
        obj=obj,
        namespace=namespace,
        group_kind=_group_kind(obj),
        verifier=verifier,
        keychains=keychains,
        deadline=deadline,
    )
    result["allowed"] = decision.allowed
    result["warnings"] = [*refusals, *decision.warnings()]
    result["images"] = [
        _image_result(
            rewrite, judged, loaded.line_of(rewrite.container.pointer), checked=checker is not None
        )
        for rewrite, judged in zip(planned, decision.images, strict=True)
    ]
    return result


async def _check_targets(
    checker: targets.TargetChecker,
    planned: Sequence[engine.PlannedImage],
    policies: Sequence[engine.CompiledPolicy],
    obj: Mapping[str, Any],
    namespace: str,
    keychains: webhook.KeychainSource | None,
    deadline: float,
) -> tuple[list[engine.PlannedImage], list[str]]:
    """The images as `/mutate` would store them, each refused rewrite undone, and the warnings
    it would give for those."""

    async def keychain() -> Keychain | None:
        if keychains is None:
            return None
        pull = workloads.pull_context(obj, _group_kind(obj))
        return await keychains.keychain(namespace, pull, policies)

    window = targets.Window(online.OBJECT_DEADLINE, deadline)
    checked = await checker.check(planned, policies, window, keychain)
    warnings = [
        targets.refusal_warning(before, before.final, after.refusal)
        for before, after in zip(planned, checked, strict=True)
        if after.refusal is not None and before.final is not None
    ]
    return [c.image for c in checked], warnings


def _image_result(
    planned: engine.PlannedImage, image: engine.ImageDecision, line: int, *, checked: bool
) -> dict[str, Any]:
    violation = next(iter(image.violations), None)
    policy, source = image.trusted_by[0] if image.trusted_by else (None, None)
    reason = ""
    if violation is not None:
        policy, source = violation.policy.display_name, None
        reason = violation.reason + (
            f" (use {violation.suggestion} instead)" if violation.suggestion else ""
        )
    elif planned.rewritten_by and planned.original is not None:
        policy, reason = planned.rewritten_by, f"rewritten from {planned.original.name}"
        reason += "; target checked" if checked else f"; {OFFLINE_TARGET_NOTE}"
    return {
        "path": planned.container.pointer,
        "line": line,
        "container": planned.container.container_name,
        "image": planned.container.image,
        "final": planned.final_text if planned.rewritten_by else planned.container.image,
        "allowed": image.allowed,
        "policy": policy,
        "source": source,
        "reason": reason,
    }


def render_text(objects: Iterable[Mapping[str, Any]]) -> str:
    rows = [("OBJECT", "CONTAINER", "IMAGE", "RESULT", "DETAIL")]
    for obj in objects:
        label = f"{obj['kind']}/{obj['namespace']}/{obj['name']}"
        if "error" in obj:
            rows.append((label, "-", "-", "denied", obj["error"]))
        for image in obj["images"]:
            final = image["final"] if image["final"] != image["image"] else ""
            result = "admitted" if image["allowed"] else "denied"
            detail = image["reason"] or (
                f"trusted by {image['policy']}/{image['source']}"
                if image["source"]
                else "no policy applies"
            )
            rows.append(
                (
                    label,
                    image["container"],
                    image["image"] + (f" -> {final}" if final else ""),
                    result,
                    detail,
                )
            )
        for warning in obj["warnings"]:
            rows.append((label, "", "", "warning", warning))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    )


def summarise(
    objects: Sequence[Mapping[str, Any]],
    bad_files: Sequence[Mapping[str, Any]],
    not_checked: int,
    targets_not_checked: int = 0,
) -> str:
    """The one summary line: counts, and how many signature checks were not done (offline)."""
    denied = sum(not obj["allowed"] for obj in objects)
    warned = sum(bool(obj["warnings"]) for obj in objects)
    parts = [
        f"{len(objects)} objects",
        f"{len(objects) - denied} admitted",
        f"{denied} denied",
        f"{warned} with warnings",
    ]
    if bad_files:
        parts.append(f"{len(bad_files)} unreadable files")
    line = "imagegate check: " + ", ".join(parts)
    if not_checked:
        line += f"; {not_checked} signature checks not done offline (--verify does them)"
    if targets_not_checked:
        line += (
            f"; {targets_not_checked} rewrite targets not checked offline (--verify checks them)"
        )
    return line


def _rewrites(objects: Iterable[Mapping[str, Any]]) -> int:
    """How many images the objects' rewrites changed."""
    return sum(
        image["final"] != image["image"] for obj in objects for image in obj.get("images", [])
    )


def _read_manifests(
    manifests: Sequence[str], stdin: TextIO
) -> tuple[list[documents.Loaded], list[dict[str, Any]]]:
    """The objects of every readable file, and one entry per file that is not."""
    found: list[documents.Loaded] = []
    bad: list[dict[str, Any]] = []
    for source in manifests:
        try:
            found += documents.read(source, stdin)
        except documents.BadFile as error:
            bad.append({"file": source, "line": error.line, "error": error.user_message})
    return found, bad


async def _judge_all(
    loaded: Sequence[documents.Loaded],
    policies: Sequence[engine.CompiledPolicy],
    namespace: str,
    labels: Mapping[str, str],
    options: online.OnlineOptions | None,
) -> tuple[list[dict[str, Any]], int]:
    """The objects' verdicts, and how many signature checks were not done (offline)."""
    session = online.offline() if options is None else online.online(options)
    async with session as wired:
        # Online, rewrite targets are checked with the resolver and verifier `judge` uses.
        checker = targets.TargetChecker(wired.resolver, wired.verifier) if options else None
        objects = [
            await check_object(
                item, policies, namespace, labels, wired.verifier, wired.keychains, checker
            )
            for item in loaded
            if not model.is_policy_document(item.document)
        ]
    declined = wired.verifier.declined if isinstance(wired.verifier, online.OfflineVerifier) else 0
    return objects, declined


def run(
    policy_paths: Sequence[str],
    manifests: Sequence[str],
    *,
    output: str = "text",
    namespace: str = "default",
    namespace_labels: str = "",
    verify: online.OnlineOptions | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """`verify`: ask the registries with these options; None: offline."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    stderr = stderr or sys.stderr
    if policy_paths.count("-") + manifests.count("-") > 1:
        raise UsageError("stdin (-) can be read only once")
    if output not in OUTPUTS:
        raise UsageError(f"-o wants one of {', '.join(OUTPUTS)}")
    policies = load_policies(policy_paths, stdin)
    labels = parse_labels(namespace_labels)
    loaded, bad_files = _read_manifests(manifests, stdin)
    for bad in bad_files:
        stderr.write(f"imagegate: {bad['error']}\n")
    objects, not_checked = asyncio.run(_judge_all(loaded, policies, namespace, labels, verify))
    allowed = all(obj["allowed"] for obj in objects)
    unchecked_targets = 0 if verify else _rewrites(objects)
    summary = summarise(objects, bad_files, not_checked, unchecked_targets)
    if output == "json":
        report = {"allowed": allowed, "objects": objects, "errors": bad_files, "summary": summary}
        json.dump(report, stdout, indent=2)
        stdout.write("\n")
    elif output == "sarif":
        json.dump(sarif.log(objects, bad_files, summary), stdout, indent=2)
        stdout.write("\n")
    else:
        stdout.write(render_text(objects) + "\n" + summary + "\n")
    if bad_files:
        return 2
    return 0 if allowed else 1
