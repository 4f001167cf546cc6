"""The migration plan (`imagegate migrate`, design.md §10): for each workload, which of its images
have a hardened equivalent, the exact new reference, and the change that makes it so. Pure: the
command reads manifests or PolicyReports and prints; everything decided is decided here.

A planner answers "what should this image become?" from either a catalogue preference order
(`--catalog dhi,chainguard`) or the rewrite rules of policies (`-p policy.yaml`). A plan shows
latest-only targets too, saying which version they drop; a policy that does not allow that says
so (`latest-only-refused`), since the webhook would not make that rewrite.

Three changes are rendered from one plan: `kubectl set image` lines, RFC 6902 JSON patches
(each replace guarded by a `test` of the old value, so a patch never applies to a manifest that
changed since it was planned), and kustomize `images:` entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from imagegate.core import reference, workloads
from imagegate.policy import catalog as catalogue
from imagegate.policy import engine

#: What the plan says about one image.
Status = Literal[
    "mapped",  # an equivalent whose tag carries the version (kept or mapped)
    "latest-only",  # an equivalent that serves only latest: the version is dropped
    "latest-only-refused",  # only a latest-only equivalent, and the policy does not allow it
    "hardened",  # already a hardened image: nothing to change
    "no-equivalent",
    "invalid",  # not an image reference
]
CHANGING: frozenset[Status] = frozenset({"mapped", "latest-only"})
#: Where hardened images already live: an image under these needs no migration.
HARDENED_PREFIXES = ("cgr.dev/", "docker.io/chainguard/", "dhi.io/")
#: Container lists `kubectl set image` edits (image volumes are not containers).
KUBECTL_LISTS = ("containers", "initContainers")
#: Kinds `kubectl set image` accepts (not PodTemplate).
KUBECTL_KINDS = frozenset(
    {"Pod", "ReplicationController", "Deployment", "DaemonSet", "StatefulSet", "ReplicaSet"}
    | {"Job", "CronJob"}
)


@dataclass(frozen=True)
class Workload:
    """The object an admin edits: its kind, namespace ("" when the manifest names none), name."""

    kind: str
    name: str
    namespace: str = ""
    api_version: str = ""
    #: The file (or report) it was read from.
    origin: str = ""

    @property
    def label(self) -> str:
        """`Deployment/shop/web`, or `Deployment/web` without a namespace."""
        return "/".join(part for part in (self.kind, self.namespace, self.name) if part)


@dataclass(frozen=True)
class ImagePlan:
    container: workloads.ContainerImage
    status: Status
    #: The new reference (also for latest-only-refused: what it would have been).
    target: reference.ImageReference | None = None
    #: The catalogue or policy that named the target.
    by: str = ""
    dropped_version: str | None = None
    note: str = ""

    @property
    def changes(self) -> bool:
        return self.status in CHANGING and self.target is not None


@dataclass(frozen=True)
class WorkloadPlan:
    workload: Workload
    images: tuple[ImagePlan, ...]
    #: Why the workload's pod spec could not be read, if it could not.
    error: str | None = None

    @property
    def changing(self) -> tuple[ImagePlan, ...]:
        return tuple(image for image in self.images if image.changes)


# -- planners ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogPlanner:
    """The first catalogue, in preference order, that has an equivalent."""

    catalogs: tuple[catalogue.CatalogName, ...]

    def plan(self, container: workloads.ContainerImage) -> ImagePlan:
        original = _parse(container)
        if isinstance(original, ImagePlan):
            return original
        for name in self.catalogs:
            mapped = catalogue.map_image(original, name)
            if mapped is not None:
                status: Status = "latest-only" if mapped.dropped_version else "mapped"
                return ImagePlan(container, status, mapped.image, name, mapped.dropped_version)
        return ImagePlan(container, "no-equivalent")


@dataclass(frozen=True)
class PolicyPlanner:
    """The rewrite rules of the policies (every mode: a plan is advice), in `applicable` order;
    the first rule of the first policy that matches, as the webhook chooses."""

    policies: tuple[engine.CompiledPolicy, ...]

    def plan(self, container: workloads.ContainerImage) -> ImagePlan:
        original = _parse(container)
        if isinstance(original, ImagePlan):
            return original
        refused: ImagePlan | None = None
        for policy in self.policies:
            for rule in policy.rewrites:
                target = rule.apply(original)
                if target is not None:
                    status: Status = "latest-only" if target.dropped_version else "mapped"
                    if target.image == original:
                        status = "hardened"
                    return ImagePlan(
                        container, status, target.image, policy.display_name, target.dropped_version
                    )
                refused = refused or _refused(container, original, rule, policy)
        return refused or ImagePlan(container, "no-equivalent")


@dataclass(frozen=True)
class FirstPlanner:
    """Planners in preference order (a policy's rewrites, then catalogues): the first that
    knows an equivalent. Only "no equivalent" falls through; a policy's refusal stands."""

    planners: tuple[CatalogPlanner | PolicyPlanner, ...]

    def plan(self, container: workloads.ContainerImage) -> ImagePlan:
        found = ImagePlan(container, "no-equivalent")
        for planner in self.planners:
            found = planner.plan(container)
            if found.status != "no-equivalent":
                return found
        return found


Planner = CatalogPlanner | PolicyPlanner | FirstPlanner


def from_suggestion(
    container: workloads.ContainerImage, suggestion: str, dropped_version: str | None, by: str
) -> ImagePlan:
    """The plan for an image whose target someone else chose (a scan report's suggestion)."""
    original = _parse(container)
    if isinstance(original, ImagePlan):
        return original
    if not suggestion:
        return ImagePlan(container, "no-equivalent")
    try:
        target = reference.parse(suggestion)
    except reference.InvalidReferenceError as error:
        return ImagePlan(container, "no-equivalent", note=f"suggestion: {error.user_message}")
    status: Status = "latest-only" if dropped_version else "mapped"
    return ImagePlan(container, status, target, by, dropped_version)


def _parse(container: workloads.ContainerImage) -> reference.ImageReference | ImagePlan:
    """The parsed image, or the plan for one that needs none (invalid, already hardened)."""
    try:
        original = reference.parse(container.image)
    except reference.InvalidReferenceError as error:
        return ImagePlan(container, "invalid", note=error.user_message)
    if original.name.startswith(HARDENED_PREFIXES):
        return ImagePlan(container, "hardened")
    return original


def _refused(
    container: workloads.ContainerImage,
    original: reference.ImageReference,
    rule: engine.RewriteRule,
    policy: engine.CompiledPolicy,
) -> ImagePlan | None:
    """A catalogue rule that declined only because its target would drop the version."""
    if not isinstance(rule, engine.CatalogRewrite) or rule.allow_latest_only:
        return None
    mapped = catalogue.map_image(original, rule.catalog)
    if mapped is None or mapped.dropped_version is None:
        return None
    return ImagePlan(
        container,
        "latest-only-refused",
        mapped.image,
        policy.display_name,
        mapped.dropped_version,
        note=f"{rule.catalog} serves only latest; the policy does not set allowLatestOnly",
    )


def plan_workload(
    workload: Workload, images: Sequence[workloads.ContainerImage], planner: Planner
) -> WorkloadPlan:
    return WorkloadPlan(workload, tuple(planner.plan(container) for container in images))


def plan_object(obj: Mapping[str, Any], planner: Planner, origin: str = "") -> WorkloadPlan | None:
    """The plan of one manifest object; None for a kind without a pod spec."""
    workload = workload_of(obj, origin)
    if workloads.pod_spec_pointer(workload.api_version, workload.kind) is None:
        return None
    try:
        images = workloads.find_images(obj)
    except workloads.MalformedWorkloadError as error:
        return WorkloadPlan(workload, (), error.user_message)
    return plan_workload(workload, images, planner)


def workload_of(obj: Mapping[str, Any], origin: str = "") -> Workload:
    metadata = obj.get("metadata")
    fields = metadata if isinstance(metadata, Mapping) else {}
    return Workload(
        kind=_text(obj.get("kind")),
        name=_text(fields.get("name")),
        namespace=_text(fields.get("namespace")),
        api_version=_text(obj.get("apiVersion")),
        origin=origin,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def container_at(pointer: str, name: str, image: str) -> workloads.ContainerImage:
    """A `ContainerImage` back from a report row's path (`.../initContainers/0/image`)."""
    parts = pointer.strip("/").split("/")
    kind: workloads.ContainerList = "containers"
    index = 0
    for position, part in enumerate(parts[:-1]):
        if part in (*workloads.CONTAINER_LISTS, workloads.IMAGE_VOLUMES):
            kind = part
            index = int(parts[position + 1]) if parts[position + 1].isdigit() else 0
    return workloads.ContainerImage(kind, index, name, image, pointer)


# -- changes ----------------------------------------------------------------------------------


def kubectl_line(plan: WorkloadPlan) -> str | None:
    """`kubectl set image` for the workload's changing containers, or None when none."""
    workload = plan.workload
    pairs = [
        f"{image.container.container_name}={image.target}"
        for image in plan.changing
        if _kubectl_can(workload, image)
    ]
    if not pairs:
        return None
    namespace = f" -n {_quoted(workload.namespace)}" if workload.namespace else ""
    resource = f"{workload.kind.lower()}/{workload.name}"
    return f"kubectl set image{namespace} {_quoted(resource)} " + " ".join(map(_quoted, pairs))


def not_for_kubectl(plan: WorkloadPlan) -> list[ImagePlan]:
    """Changes `kubectl set image` cannot make (image volumes, ephemeral containers, unnamed
    containers, a PodTemplate's)."""
    return [image for image in plan.changing if not _kubectl_can(plan.workload, image)]


def _kubectl_can(workload: Workload, image: ImagePlan) -> bool:
    return (
        workload.kind in KUBECTL_KINDS
        and image.container.kind in KUBECTL_LISTS
        and bool(image.container.container_name)
    )


def _quoted(text: str) -> str:
    """Shell quoting only where needed (Kubernetes names and references rarely need it)."""
    safe = all(char.isalnum() or char in "-_./:=@+," for char in text)
    return text if safe and text else "'" + text.replace("'", "'\\''") + "'"


def json_patch(plan: WorkloadPlan) -> list[dict[str, str]]:
    """RFC 6902 operations for the workload: per image, `test` the old value, then `replace`."""
    operations: list[dict[str, str]] = []
    for image in plan.changing:
        pointer = image.container.pointer
        operations.append({"op": "test", "path": pointer, "value": image.container.image})
        operations.append({"op": "replace", "path": pointer, "value": str(image.target)})
    return operations


@dataclass(frozen=True)
class KustomizeImage:
    """One `images:` entry: every image written `name` becomes `new_name` (`new_tag` if set)."""

    name: str
    new_name: str
    new_tag: str | None = None

    def to_json(self) -> dict[str, str]:
        entry = {"name": self.name, "newName": self.new_name}
        if self.new_tag is not None:
            entry["newTag"] = self.new_tag
        return entry


@dataclass(frozen=True)
class KustomizeImages:
    entries: tuple[KustomizeImage, ...] = ()
    #: Names whose uses need different new tags: one entry per name cannot say that.
    conflicts: tuple[str, ...] = field(default=())


def kustomize_images(plans: Iterable[WorkloadPlan]) -> KustomizeImages:
    """The `images:` entries for every changing image, one per name as written.

    Kustomize matches an entry by the name as written (`python`, not `docker.io/library/
    python`) and sets one tag for all of its uses, so `newTag` is given only when the tag must
    change, and a name whose uses need different tags is a conflict (use the JSON patch there).
    """
    uses: dict[str, list[ImagePlan]] = {}
    for plan in plans:
        for image in plan.changing:
            uses.setdefault(written_name(image.container.image), []).append(image)
    entries, conflicts = [], []
    for name, images in uses.items():
        targets = {image.target.name for image in images if image.target is not None}
        new_tags = {image.target.tag for image in images if image.target is not None}
        unchanged = all(
            image.target is not None and written_tag(image.container.image) == image.target.tag
            for image in images
        )
        if len(targets) != 1:
            conflicts.append(f"{name}: maps to {', '.join(sorted(targets))}")
        elif unchanged:
            entries.append(KustomizeImage(name, targets.pop()))
        elif len(new_tags) == 1:
            entries.append(KustomizeImage(name, targets.pop(), new_tags.pop()))
        else:
            tags = sorted(f"{i.container.image} -> {i.target}" for i in images)
            conflicts.append(f"{name}: uses need different tags ({'; '.join(tags)})")
    return KustomizeImages(tuple(entries), tuple(conflicts))


def written_name(text: str) -> str:
    """The image as written, without tag or digest (what a kustomize entry's `name` matches)."""
    name = text.partition("@")[0]
    colon = name.rfind(":")
    return name[:colon] if colon > name.rfind("/") else name


def written_tag(text: str) -> str | None:
    """The tag as written; None when there is none, or when a digest pins the image (a new tag
    must then be given, or kustomize would keep a digest that names the old image)."""
    name, at, _ = text.partition("@")
    colon = name.rfind(":")
    if at or colon <= name.rfind("/"):
        return None
    return name[colon + 1 :]


# -- summary ----------------------------------------------------------------------------------


def summary(plans: Sequence[WorkloadPlan], top: int = 10) -> dict[str, Any]:
    """Counts for a plan: images by status, Official Images apart from the rest, the misses."""
    images = [image for plan in plans for image in plan.images]
    by_status: dict[str, int] = {}
    for image in images:
        by_status[image.status] = by_status.get(image.status, 0) + 1
    misses: dict[str, int] = {}
    groups = {"official": [0, 0], "vendor": [0, 0]}
    for image in images:
        if image.status in ("invalid", "hardened"):
            continue
        group = groups["official" if _official(image.container.image) else "vendor"]
        group[0] += 1
        if image.status in CHANGING:
            group[1] += 1
        elif image.status == "no-equivalent":
            name = reference.parse(image.container.image).name
            misses[name] = misses.get(name, 0) + 1
    return {
        "workloads": len(plans),
        "images": len(images),
        "byStatus": dict(sorted(by_status.items())),
        **{f"{key}Images": {"total": t, "withEquivalent": e} for key, (t, e) in groups.items()},
        "topMisses": [
            {"image": name, "count": count}
            for name, count in sorted(misses.items(), key=lambda item: (-item[1], item[0]))[:top]
        ],
    }


def _official(text: str) -> bool:
    """A Docker Official Image, under its own name or a mirror's (ECR Public's)."""
    prefix = f"{reference.DOCKER_HUB}/{reference.OFFICIAL_NAMESPACE}"
    mirrors = catalogue.load().source_mirrors.get(prefix, ())
    name = reference.parse(text).name
    return any(name.startswith(f"{root}/") for root in (prefix, *mirrors))
