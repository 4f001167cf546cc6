"""`imagegate check`: judge manifests against policy files, offline, as the webhooks would.

Exit status: 0 when every object is admitted, 1 when at least one is denied, 2 for bad input or
usage (one line on stderr). The decision is the engine's, step for step as in the webhooks:
rewrites of enforce policies first, then validation of the result.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from imagegate.core import workloads
from imagegate.errors import UsageError
from imagegate.policy import compile as policy_compile
from imagegate.policy import engine, model

#: Until the Sigstore verifier lands in `check`, signature requirements cannot pass offline.
OFFLINE_SIGNATURE_REASON = "imagegate check cannot verify signatures yet (the webhook can)"

#: YAML aliases (`*name`) per file. Each alias may repeat a whole subtree, so a few nested ones
#: make half a kilobyte mean gigabytes (the "billion laughs"); manifests rarely use any.
MAX_ALIASES = 10
#: Nesting of mappings and sequences, as for AdmissionReviews (admission/review.py): Kubernetes
#: objects are far shallower, and PyYAML's composer recurses once per level.
MAX_NESTING = 100


class _BoundedLoader(yaml.SafeLoader):
    """`SafeLoader` that refuses more than `MAX_ALIASES` aliases, recursive aliases, and
    nesting past `MAX_NESTING`, before any of it is expanded or built."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._open_anchors: list[str | None] = []

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"has more than {MAX_ALIASES} YAML aliases (*name)")
            if event.anchor in self._open_anchors:
                raise _Refused(f"has a recursive YAML alias (*{event.anchor})")
            return super().compose_node(parent, index)
        if not isinstance(event, yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        if len(self._open_anchors) >= MAX_NESTING:
            raise _Refused(f"nests deeper than {MAX_NESTING} levels")
        self._open_anchors.append(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.pop()


class _Refused(yaml.YAMLError):
    """A YAML bound in `_BoundedLoader`; the message completes "FILE ..."."""


def load_documents(sources: Sequence[str], stdin: TextIO) -> list[tuple[str, dict[str, Any]]]:
    """(origin, document) for every object in the files (`-` is stdin); Lists are unpacked."""
    found: list[tuple[str, dict[str, Any]]] = []
    for source in sources:
        try:
            text = stdin.read() if source == "-" else Path(source).read_text()
        except OSError as error:
            raise UsageError(f"cannot read {source}: {error.strerror}") from error
        try:
            documents = list(yaml.load_all(text, Loader=_BoundedLoader))
        except _Refused as error:
            raise UsageError(f"{source} {error}") from error
        except yaml.YAMLError as error:
            raise UsageError(f"{source} is not YAML or JSON: {error}".splitlines()[0]) from error
        for index, document in enumerate(documents):
            if document is None:
                continue
            if not isinstance(document, dict):
                raise UsageError(f"{source}: document {index + 1} is not an object")
            found.extend((source, item) for item in _unpack(document))
    return found


def _kind(document: Mapping[str, Any]) -> str:
    """The document's kind when it is a string, else "": never `str()` of what a file holds."""
    kind = document.get("kind")
    return kind if isinstance(kind, str) else ""


def _unpack(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if _kind(document).endswith("List") and isinstance(document.get("items"), list):
        for item in document["items"]:
            if isinstance(item, dict):
                yield from _unpack(item)
    else:
        yield document


def load_policies(paths: Sequence[str], stdin: TextIO) -> list[engine.CompiledPolicy]:
    policies = []
    for origin, document in load_documents(paths, stdin):
        if not model.is_policy_document(document):
            raise UsageError(
                f"{origin}: {_kind(document) or 'an object'} is not an imagegate policy"
            )
        try:
            policies.append(policy_compile.compile_policy(model.parse_policy_document(document)))
        except model.PolicyError as error:
            raise UsageError(f"{origin}: {error.user_message}") from error
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


def check_object(
    obj: Mapping[str, Any],
    policies: Sequence[engine.CompiledPolicy],
    namespace: str,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """One object's verdict, in the `-o json` shape of docs/design.md §6."""
    raw_metadata = obj.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    own_namespace = metadata.get("namespace")
    namespace = own_namespace if isinstance(own_namespace, str) and own_namespace else namespace
    name = metadata.get("name")
    result: dict[str, Any] = {
        "kind": _kind(obj),
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
    verdicts = {
        check: engine.SignatureVerdict(False, OFFLINE_SIGNATURE_REASON)
        for check in engine.signature_checks(planned, chosen)
    }
    decision = engine.evaluate(planned, chosen, verdicts)
    result["allowed"] = decision.allowed
    result["warnings"] = decision.warnings()
    result["images"] = [_image_result(image) for image in decision.images]
    return result


def _image_result(image: engine.ImageDecision) -> dict[str, Any]:
    planned = image.planned
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
    return {
        "path": planned.container.pointer,
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


def run(
    policy_paths: Sequence[str],
    manifests: Sequence[str],
    *,
    output: str = "text",
    namespace: str = "default",
    namespace_labels: str = "",
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if policy_paths.count("-") + manifests.count("-") > 1:
        raise UsageError("stdin (-) can be read only once")
    policies = load_policies(policy_paths, stdin)
    labels = parse_labels(namespace_labels)
    objects = [
        check_object(document, policies, namespace, labels)
        for _, document in load_documents(manifests, stdin)
        if not model.is_policy_document(document)
    ]
    allowed = all(obj["allowed"] for obj in objects)
    if output == "json":
        json.dump({"allowed": allowed, "objects": objects}, stdout, indent=2)
        stdout.write("\n")
    else:
        stdout.write(render_text(objects) + "\n")
    return 0 if allowed else 1
