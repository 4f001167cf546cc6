"""`imagegate migrate`: the plan that moves workloads onto hardened images (design.md §10).

    imagegate migrate --catalog dhi --catalog chainguard k8s/       # offline, DHI first
    imagegate migrate -p policy.yaml deploy.yaml --format patch -o json
    imagegate migrate --cluster                                      # from the scan's reports

Offline it reads manifests (files, directories, `-` for stdin) with `imagegate check`'s reader;
online it reads the background scan's PolicyReports, whose rows carry the suggestion
(`properties.suggestion`). The plan itself is policy/migration.py; here is reading and printing.

`-o table` prints the plan and then the change picked by `--format` (kubectl unless told);
`-o json|yaml` prints the whole plan with every change, or, with `--format`, only that change,
ready to pipe (`--format kustomize -o yaml` is an `images:` block). Exit status: 0 when a plan
was produced (even one with nothing to change), 1 when the cluster refuses to list the
reports, 2 for bad input.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import yaml

from imagegate.commands import check
from imagegate.core import reference, workloads
from imagegate.errors import ImagegateError, UsageError
from imagegate.policy import catalog as catalogue
from imagegate.policy import engine, migration, model
from imagegate.registry import keychain, mirrors

if TYPE_CHECKING:
    from imagegate.registry import client

Output = Literal["table", "json", "yaml"]
Change = Literal["kubectl", "patch", "kustomize"]
#: Seconds for each target's registry to answer `--verify`.
VERIFY_TIMEOUT = 10.0
#: Manifest files a directory contributes.
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


# -- input --------------------------------------------------------------------------------------


def manifest_files(sources: Sequence[str]) -> list[tuple[str, bool]]:
    """(file, found in a directory) for the sources: files and `-` as given; a directory gives
    its YAML and JSON files, recursively and sorted, so that a plan over a checkout is stable."""
    found: list[tuple[str, bool]] = []
    for source in sources:
        path = Path(source)
        if source != "-" and path.is_dir():
            found += sorted(
                (str(file), True)
                for file in path.rglob("*")
                if file.suffix in MANIFEST_SUFFIXES and file.is_file()
            )
        else:
            found.append((source, False))
    return found


def read_manifests(
    sources: Sequence[str], stdin: TextIO, stderr: TextIO
) -> list[tuple[str, dict[str, Any]]]:
    """Every object in the sources. A file named on the command line that cannot be read is
    bad input; one found in a directory (a Helm template, a JSON array) is skipped with a
    line on stderr, so that one odd file does not stop a plan over a whole checkout."""
    documents = []
    for file, in_directory in manifest_files(sources):
        try:
            documents += [(d.origin, d.document) for d in check.load_documents([file], stdin)]
        except UsageError as error:
            if not in_directory:
                raise
            stderr.write(f"imagegate: skipped: {error.user_message}\n")
    return documents


def planner_for(
    catalogs: Sequence[str], policies: Sequence[engine.CompiledPolicy]
) -> migration.Planner | None:
    """The policies' rewrites (what the webhook would do), then the catalogues in preference
    order for images the policies know no equivalent for; None when neither is given."""
    planners: list[migration.CatalogPlanner | migration.PolicyPlanner] = []
    if policies:
        planners.append(migration.PolicyPlanner(tuple(policies)))
    names: list[catalogue.CatalogName] = []
    for name in catalogs:
        if name not in catalogue.CATALOG_NAMES:
            raise UsageError(
                f"--catalog {name!r}: choose from {', '.join(catalogue.CATALOG_NAMES)}"
            )
        names.append("dhi" if name == "dhi" else "chainguard")
    if names:
        planners.append(migration.CatalogPlanner(tuple(names)))
    if not planners:
        return None
    return planners[0] if len(planners) == 1 else migration.FirstPlanner(tuple(planners))


def plans_from_manifests(
    documents: Iterable[tuple[str, dict[str, Any]]], planner: migration.Planner
) -> list[migration.WorkloadPlan]:
    plans = []
    for origin, document in documents:
        if model.is_policy_document(document):
            continue
        plan = migration.plan_object(document, planner, origin)
        if plan is not None:
            plans.append(plan)
    return plans


def plans_from_reports(
    reports: Iterable[Mapping[str, Any]], planner: migration.Planner | None
) -> list[migration.WorkloadPlan]:
    """One plan per object the reports list, each image once (a report has a row per image and
    policy). Without a planner, the suggestion the scan wrote is the target."""
    images: dict[migration.Workload, dict[str, migration.ImagePlan]] = {}
    for report in reports:
        for result in report.get("results") or []:
            found = _image_of(result, planner)
            if found is not None:
                workload, image = found
                by_path = images.setdefault(workload, {})
                known = by_path.get(image.container.pointer)
                if known is None or (image.changes and not known.changes):
                    by_path[image.container.pointer] = image
    return [
        migration.WorkloadPlan(workload, tuple(by_path.values()))
        for workload, by_path in images.items()
    ]


def _image_of(
    result: Mapping[str, Any], planner: migration.Planner | None
) -> tuple[migration.Workload, migration.ImagePlan] | None:
    properties = result.get("properties")
    resources = result.get("resources")
    if not isinstance(properties, Mapping) or not isinstance(resources, list) or not resources:
        return None
    image, path = str(properties.get("image") or ""), str(properties.get("path") or "")
    resource = resources[0] if isinstance(resources[0], Mapping) else {}
    if not image or not path:
        return None  # an error row: no image to plan
    workload = migration.Workload(
        kind=str(resource.get("kind", "")),
        name=str(resource.get("name", "")),
        namespace=str(resource.get("namespace", "")),
        api_version=str(resource.get("apiVersion", "")),
        origin="PolicyReport",
    )
    container = migration.container_at(path, str(properties.get("container") or ""), image)
    if planner is not None:
        return workload, planner.plan(container)
    return workload, _suggested(container, properties, str(result.get("policy", "")))


def _suggested(
    container: workloads.ContainerImage, properties: Mapping[str, Any], policy: str
) -> migration.ImagePlan:
    dropped = str(properties.get("droppedVersion") or "") or None
    return migration.from_suggestion(
        container, str(properties.get("suggestion") or ""), dropped, policy
    )


def read_reports(kubeconfig: Path | None, namespace: str | None) -> list[dict[str, Any]]:
    """imagegate's PolicyReports (all namespaces, or one)."""
    from kubernetes import client

    from imagegate.admission import records as audit
    from imagegate.cluster import kube
    from imagegate.trail import reports

    api = kube.admin_client(kubeconfig)
    try:
        found: Any = client.CustomObjectsApi(api).list_cluster_custom_object(
            reports.GROUP, reports.VERSION, reports.PLURAL, label_selector=audit.MANAGED_BY_SELECTOR
        )
    except client.ApiException as error:
        if error.status == 404:
            raise UsageError("no PolicyReport CRD in this cluster: enable policyReports") from error
        message = f"cannot list PolicyReports: {error.reason} ({error.status})"
        raise ImagegateError(message) from error  # the cluster's answer, not bad input: exit 1
    items = found.get("items", []) if isinstance(found, dict) else []
    for item in items:
        truncated = ((item.get("metadata") or {}).get("annotations") or {}).get(
            reports.TRUNCATED_ANNOTATION
        )
        if truncated:
            where = (item.get("metadata") or {}).get("namespace", "")
            print(f"imagegate: the report of {where} is truncated ({truncated})", file=sys.stderr)
    return [
        item
        for item in items
        if namespace is None or (item.get("metadata") or {}).get("namespace") == namespace
    ]


# -- --verify ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """What the target's registry said about its tag: exists (with the digest it names), is
    missing, or could not be asked (`exists` None, `detail` says why)."""

    exists: bool | None
    digest: str | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"exists": self.exists, "digest": self.digest, "detail": self.detail}

    @property
    def note(self) -> str:
        if self.exists:
            return f"target exists ({self.digest})"
        return "TARGET MISSING" if self.exists is False else f"target not checked: {self.detail}"


async def verify_targets(
    plans: Sequence[migration.WorkloadPlan],
    registry: client.RegistryClient,
    timeout: float = VERIFY_TIMEOUT,
) -> dict[str, Verified]:
    """Resolve every target tag once (a HEAD request each; no signature is verified here: the
    mutating webhook does that under the policy that will validate the image)."""
    from imagegate.registry import errors

    targets = sorted({str(image.target) for plan in plans for image in plan.changing})
    found: dict[str, Verified] = {}
    for target in targets:
        deadline = time.monotonic() + timeout
        try:
            descriptor = await registry.resolve(reference.parse(target), deadline=deadline)
        except errors.ManifestUnknown:
            found[target] = Verified(False, detail="the registry has no such tag")
        except (errors.RegistryError, TimeoutError) as error:
            found[target] = Verified(None, detail=f"{type(error).__name__}: {error}")
        else:
            found[target] = Verified(True, descriptor.digest)
    return found


def docker_keychain() -> keychain.Keychain:
    """The credentials `docker login` saved ($DOCKER_CONFIG or ~/.docker/config.json), if any:
    dhi.io answers only with a Docker login."""
    from imagegate.cluster import credentials

    folder = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        data = (folder / "config.json").read_bytes()
    except OSError:
        return keychain.NoCredentials()
    try:
        return credentials.EntryKeychain(credentials.parse_docker_config(data))
    except credentials.CredentialsError as error:
        raise UsageError(f"{folder / 'config.json'}: {error.user_message}") from error


async def _verify(
    plans: Sequence[migration.WorkloadPlan],
    insecure: frozenset[str],
    registry_mirrors: mirrors.Mirrors,
) -> dict[str, Verified]:
    import aiohttp

    from imagegate.registry import client

    async with aiohttp.ClientSession() as session:
        registry = client.RegistryClient(
            session, keychain=docker_keychain(), insecure=insecure, mirrors=registry_mirrors
        )
        return await verify_targets(plans, registry)


# -- output -------------------------------------------------------------------------------------


def image_json(image: migration.ImagePlan, verified: Mapping[str, Verified]) -> dict[str, Any]:
    found = verified.get(str(image.target)) if image.changes else None
    return {
        "container": image.container.container_name,
        "list": image.container.kind,
        "path": image.container.pointer,
        "image": image.container.image,
        "status": image.status,
        "target": str(image.target) if image.target is not None else None,
        "by": image.by or None,
        "droppedVersion": image.dropped_version,
        "note": describe(image),
        **({"verified": found.to_json()} if found is not None else {}),
    }


def workload_json(plan: migration.WorkloadPlan, verified: Mapping[str, Verified]) -> dict[str, Any]:
    workload = plan.workload
    document: dict[str, Any] = {
        "kind": workload.kind,
        "namespace": workload.namespace,
        "name": workload.name,
        "origin": workload.origin,
        "images": [image_json(image, verified) for image in plan.images],
        "kubectl": migration.kubectl_line(plan),
        "patch": migration.json_patch(plan),
    }
    if plan.error is not None:
        document["error"] = plan.error
    return document


def kustomize_json(plans: Sequence[migration.WorkloadPlan]) -> dict[str, Any]:
    found = migration.kustomize_images(plans)
    return {
        "images": [entry.to_json() for entry in found.entries],
        "conflicts": list(found.conflicts),
    }


def plan_json(
    plans: Sequence[migration.WorkloadPlan], verified: Mapping[str, Verified]
) -> dict[str, Any]:
    return {
        "workloads": [workload_json(plan, verified) for plan in plans],
        "kustomize": kustomize_json(plans),
        "summary": migration.summary(plans),
    }


def change_json(plans: Sequence[migration.WorkloadPlan], change: Change) -> Any:
    """Only the change, as `--format` with `-o json|yaml` prints it."""
    if change == "kubectl":
        return [line for plan in plans if (line := migration.kubectl_line(plan))]
    if change == "patch":
        return [
            {
                "kind": plan.workload.kind,
                "namespace": plan.workload.namespace,
                "name": plan.workload.name,
                "origin": plan.workload.origin,
                "patch": migration.json_patch(plan),
            }
            for plan in plans
            if plan.changing
        ]
    return {"images": kustomize_json(plans)["images"]}


def describe(image: migration.ImagePlan) -> str:
    """The NOTE column: what happens to the tag, or why nothing changes."""
    if image.note:
        return image.note
    if image.status == "latest-only":
        return f"latest only: version {image.dropped_version} dropped"
    if image.status == "mapped" and image.target is not None:
        written = migration.written_tag(image.container.image)
        if written is not None and written != image.target.tag:
            return f"tag mapped {written} -> {image.target.tag}"
        return "tag kept"
    return {
        "hardened": "already hardened",
        "no-equivalent": "no hardened equivalent known",
        "latest-only-refused": f"latest only (version {image.dropped_version}), not allowed",
    }.get(image.status, image.status)


_LIST_WORDS = {
    "initContainers": " (init)",
    "ephemeralContainers": " (ephemeral)",
    "volumes": " (volume)",
}


def render_table(
    plans: Sequence[migration.WorkloadPlan],
    change: Change,
    verified: Mapping[str, Verified] | None = None,
) -> str:
    rows = [["WORKLOAD", "CONTAINER", "IMAGE", "NEW IMAGE", "NOTE"]]
    for plan in plans:
        label = plan.workload.label
        if plan.error is not None:
            rows.append([label, "-", "-", "-", f"cannot read the pod spec: {plan.error}"])
        for image in plan.images:
            container = image.container
            new = str(image.target) if image.changes else "-"
            name = container.container_name + _LIST_WORDS.get(container.kind, "")
            note = describe(image)
            if image.changes and verified and str(image.target) in verified:
                note += "; " + verified[str(image.target)].note
            rows.append([label, name, container.image, new, note])
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    ]
    counts = migration.summary(plans)["byStatus"]
    lines.append(
        f"{len(plans)} workloads, {sum(counts.values())} images: "
        + ", ".join(f"{count} {status}" for status, count in counts.items())
    )
    return "\n".join(lines) + "\n\n" + render_change(plans, change)


def render_change(plans: Sequence[migration.WorkloadPlan], change: Change) -> str:
    """The change as text: a shell script, JSON patches, or a kustomization `images:` block."""
    if change == "kubectl":
        lines = []
        for plan in plans:
            line = migration.kubectl_line(plan)
            if line:
                lines.append(line)
            for image in migration.not_for_kubectl(plan):
                lines.append(
                    f"# {plan.workload.label}: {image.container.where} is not changed by "
                    "kubectl set image: apply the JSON patch (--format patch)"
                )
        return "\n".join(lines or ["# nothing to change"]) + "\n"
    if change == "patch":
        return json.dumps(change_json(plans, "patch"), indent=2) + "\n"
    found = migration.kustomize_images(plans)
    text = yaml.safe_dump({"images": [e.to_json() for e in found.entries]}, sort_keys=False)
    return text + "".join(f"# not expressible: {conflict}\n" for conflict in found.conflicts)


def write(stream: TextIO, document: Any, output: Output) -> None:
    if output == "yaml":
        stream.write(yaml.safe_dump(document, sort_keys=False))
    else:
        stream.write(json.dumps(document, indent=2) + "\n")


# -- command ------------------------------------------------------------------------------------


def run(
    manifests: Sequence[str],
    *,
    policy_paths: Sequence[str] = (),
    catalogs: Sequence[str] = (),
    cluster: bool = False,
    kubeconfig: Path | None = None,
    namespace: str | None = None,
    output: Output = "table",
    change: Change | None = None,
    verify: bool = False,
    insecure_registries: frozenset[str] = frozenset(),
    registry_mirrors: mirrors.Mirrors = mirrors.NO_MIRRORS,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if list(policy_paths).count("-") + list(manifests).count("-") > 1:
        raise UsageError("stdin (-) can be read only once")
    policies = check.load_policies(policy_paths, stdin) if policy_paths else []
    planner = planner_for(catalogs, policies)
    if cluster:
        if manifests:
            raise UsageError("--cluster reads PolicyReports: give no manifests")
        plans = plans_from_reports(read_reports(kubeconfig, namespace), planner)
    else:
        if not manifests:
            raise UsageError("give manifests (files, directories or -), or --cluster")
        if planner is None:
            raise UsageError("say what to migrate to: -p POLICY.yaml or --catalog dhi|chainguard")
        documents = read_manifests(manifests, stdin, stderr or sys.stderr)
        plans = plans_from_manifests(documents, planner)
    verified = asyncio.run(_verify(plans, insecure_registries, registry_mirrors)) if verify else {}
    if output == "table":
        stdout.write(render_table(plans, change or "kubectl", verified))
    elif change is not None:
        write(stdout, change_json(plans, change), output)
    else:
        write(stdout, plan_json(plans, verified), output)
    return 0
