"""The JSON patches `/mutate` answers with: image replacements (rewrites and pins) and the
record of the originals in the pod (template) annotation `imagegate.dev/original-images`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from imagegate.core import workloads
from imagegate.policy import engine

ORIGINAL_IMAGES_ANNOTATION = "imagegate.dev/original-images"


def pinned(image: engine.PlannedImage, digest: str) -> str:
    if image.rewritten_by is None and image.original is not None:
        # Pin what the user wrote, not its normalised form (`nginx:1.25@sha256:...`).
        return f"{image.container.image}@{digest}"
    return str(image.final.with_digest(digest)) if image.final else image.container.image


def patch(
    obj: Mapping[str, Any], planned: Sequence[engine.PlannedImage], finals: Mapping[str, str]
) -> list[dict[str, Any]]:
    operations: list[dict[str, Any]] = [
        {"op": "replace", "path": image.container.pointer, "value": finals[image.container.pointer]}
        for image in planned
        if finals[image.container.pointer] != image.container.image
    ]
    recorded = originals(planned)
    if recorded:
        operations += annotation_patch(obj, planned, recorded)
    return operations


def originals(planned: Sequence[engine.PlannedImage]) -> dict[str, str]:
    """`list/name` → the image as written, for each rewritten image (what the annotation keeps)."""
    return {
        f"{p.container.kind}/{p.container.container_name}": p.container.image
        for p in planned
        if p.rewritten_by is not None
    }


def annotation_patch(
    obj: Mapping[str, Any], planned: Sequence[engine.PlannedImage], originals: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Record the originals on the pod (template) metadata, merging with earlier records."""
    # ".../spec/containers/0/image" → "" for a Pod, "/spec/template" for a Deployment, ...
    pod_spec = planned[0].container.pointer.rsplit("/spec/", 1)[0]
    metadata_pointer = (pod_spec + "/metadata") if pod_spec else "/metadata"
    metadata = resolve(obj, metadata_pointer)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise workloads.MalformedWorkloadError(f"{metadata_pointer} is not an object")
    annotations = metadata.get("annotations") if metadata is not None else None
    if annotations is not None and not isinstance(annotations, Mapping):
        raise workloads.MalformedWorkloadError(f"{metadata_pointer}/annotations is not an object")
    merged: dict[str, str] = {}
    if annotations is not None:
        recorded = annotations.get(ORIGINAL_IMAGES_ANNOTATION, "{}")
        if not isinstance(recorded, str):
            key = ORIGINAL_IMAGES_ANNOTATION.replace("~", "~0").replace("/", "~1")
            raise workloads.MalformedWorkloadError(
                f"{metadata_pointer}/annotations/{key} is not a string"
            )
        try:
            earlier = json.loads(recorded)
            if isinstance(earlier, dict):
                merged.update({str(k): str(v) for k, v in earlier.items()})
        except (ValueError, RecursionError):
            pass  # an admin's hand-edit (or a nesting bomb): ours replaces it
    merged.update(originals)
    value = json.dumps(merged, separators=(",", ":"), sort_keys=True)
    if metadata is None:
        return [
            {
                "op": "add",
                "path": metadata_pointer,
                "value": {"annotations": {ORIGINAL_IMAGES_ANNOTATION: value}},
            }
        ]
    if annotations is None:
        return [
            {
                "op": "add",
                "path": f"{metadata_pointer}/annotations",
                "value": {ORIGINAL_IMAGES_ANNOTATION: value},
            }
        ]
    # `add` replaces an existing member, so it serves both a first record and a later one.
    key = ORIGINAL_IMAGES_ANNOTATION.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": f"{metadata_pointer}/annotations/{key}", "value": value}]


def resolve(obj: Mapping[str, Any], pointer: str) -> Any:
    node: Any = obj
    for part in pointer.strip("/").split("/"):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node
