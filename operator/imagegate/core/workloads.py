"""Every image in a Kubernetes object the kubelet would pull, with the JSON Pointer that holds it.

That is each container's `image` and each image volume's `image.reference` (`volumes[].image`:
an OCI image mounted as a volume, pulled like a container image, so it is judged like one).

Pods and every built-in kind that carries a pod template: Deployment, StatefulSet, DaemonSet,
ReplicaSet (apps), Job, CronJob (batch), ReplicationController and PodTemplate (core). Other
kinds have no images here and give an empty list. A pod spec that is not shaped like one (no spec,
containers not a list, a container without an image string, an image volume without a reference
string) is a `MalformedWorkloadError`: an admission controller must deny what it cannot read,
never admit it unread. A volume without `image` is another volume type and holds no image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from imagegate.errors import ImagegateError

#: The pod spec list an image comes from: a container list, or `volumes` for an image volume.
ContainerList = Literal["containers", "initContainers", "ephemeralContainers", "volumes"]
CONTAINER_LISTS: tuple[ContainerList, ...] = ("initContainers", "containers", "ephemeralContainers")
IMAGE_VOLUMES: ContainerList = "volumes"

#: (API group, kind) → JSON Pointer of the pod spec.
POD_SPEC_POINTERS: Mapping[tuple[str, str], str] = {
    ("", "Pod"): "/spec",
    ("", "PodTemplate"): "/template/spec",
    ("", "ReplicationController"): "/spec/template/spec",
    ("apps", "Deployment"): "/spec/template/spec",
    ("apps", "StatefulSet"): "/spec/template/spec",
    ("apps", "DaemonSet"): "/spec/template/spec",
    ("apps", "ReplicaSet"): "/spec/template/spec",
    ("batch", "Job"): "/spec/template/spec",
    ("batch", "CronJob"): "/spec/jobTemplate/spec/template/spec",
}


#: Images per object (containers of every list plus image volumes). The API server's 1.5 MB
#: request bound and etcd's object bound allow a few thousand minimal containers, but no kubelet
#: runs a pod of even hundreds (each is a process tree and a cgroup); past this, judging each
#: image would cost the webhook seconds of CPU that its deadline cannot interrupt.
MAX_IMAGES = 1000


class MalformedWorkloadError(ImagegateError):
    """The object's pod spec is not shaped like one; the message names the field."""


class ContainerImage(NamedTuple):
    """One image of a pod spec: a container's, or an image volume's (`kind` "volumes").

    A named tuple, not a frozen dataclass: every admission makes one per image, and the
    decision memo hashes and compares them; a tuple does both in C."""

    kind: ContainerList
    #: Its place in its list (it hides tuple.index, which nothing here calls).
    index: int  # type: ignore[assignment]
    #: The container's name, or the image volume's.
    container_name: str
    image: str
    #: RFC 6901 pointer to the image field, e.g. /spec/template/spec/containers/0/image or
    #: /spec/volumes/0/image/reference.
    pointer: str

    @property
    def is_volume(self) -> bool:
        return self.kind == IMAGE_VOLUMES

    @property
    def where(self) -> str:
        """How messages name it: "container 'web'", "init container 'x'", "image volume 'v'"."""
        return describe(self.kind, self.container_name)


def describe(kind: str, name: str) -> str:
    """A `ContainerImage`'s kind and name in words: "container 'web'", "image volume 'v'"."""
    return f"{_KIND_WORDS.get(kind, 'container')} {name!r}"


_KIND_WORDS: Mapping[str, str] = {
    "initContainers": "init container",
    "ephemeralContainers": "ephemeral container",
    IMAGE_VOLUMES: "image volume",
}


@dataclass(frozen=True)
class PullContext:
    """Who pulls the images: what the kubelet would use for credentials."""

    service_account: str = "default"
    pull_secrets: tuple[str, ...] = ()


def pull_context(obj: Mapping[str, Any], group_kind: tuple[str, str] | None = None) -> PullContext:
    """The ServiceAccount and imagePullSecrets of the object's pod spec (defaults when absent).

    Lenient on purpose: credentials only ever help, so a strange field means "none", never an
    error (`find_images` is what refuses a malformed pod spec).
    """
    if group_kind is not None:
        pointer = POD_SPEC_POINTERS.get(group_kind)
    else:
        pointer = pod_spec_pointer(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    if pointer is None:
        return PullContext()
    try:
        spec = _at(obj, pointer)
    except MalformedWorkloadError:
        return PullContext()
    account = spec.get("serviceAccountName") or spec.get("serviceAccount")
    secrets = spec.get("imagePullSecrets")
    names = (
        tuple(
            entry["name"]
            for entry in secrets
            if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and entry["name"]
        )
        if isinstance(secrets, list)
        else ()
    )
    return PullContext(account if isinstance(account, str) and account else "default", names)


def pod_spec_pointer(api_version: str, kind: str) -> str | None:
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    return POD_SPEC_POINTERS.get((group, kind))


def find_images(
    obj: Mapping[str, Any], group_kind: tuple[str, str] | None = None
) -> list[ContainerImage]:
    """All images of `obj`: containers (init containers first, in the order the kubelet starts
    them), then image volumes.

    `group_kind` is the (API group, kind) the API server says the object is (an AdmissionRequest's
    `kind`); without it, the object's own apiVersion and kind are used.
    """
    if group_kind is not None:
        pointer = POD_SPEC_POINTERS.get(group_kind)
    else:
        pointer = pod_spec_pointer(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    if pointer is None:
        return []
    spec = _at(obj, pointer)
    _check_image_count(spec, pointer)
    found: list[ContainerImage] = []
    for list_name in CONTAINER_LISTS:
        containers = spec.get(list_name)
        if containers is None:
            continue
        where = f"{pointer}/{list_name}"
        if not isinstance(containers, list):
            raise MalformedWorkloadError(f"{where} is not a list")
        for index, container in enumerate(containers):
            # `type(...) is dict` first: JSON gives dicts, and the ABC check costs far more.
            if type(container) is not dict and not isinstance(container, Mapping):
                raise MalformedWorkloadError(f"{where}/{index} is not an object")
            image = container.get("image")
            if not isinstance(image, str):
                raise MalformedWorkloadError(f"{where}/{index}/image is missing or not a string")
            name = container.get("name")
            found.append(
                ContainerImage(
                    list_name,
                    index,
                    name if isinstance(name, str) else "",
                    image,
                    f"{where}/{index}/image",
                )
            )
    found += _image_volumes(spec, pointer)
    return found


def _check_image_count(spec: Mapping[str, Any], pointer: str) -> None:
    """`MalformedWorkloadError` past `MAX_IMAGES`, before any image is looked at."""
    lists = [spec.get(name) for name in (*CONTAINER_LISTS, IMAGE_VOLUMES)]
    count = sum(len(entries) for entries in lists if isinstance(entries, list))
    if count > MAX_IMAGES:
        raise MalformedWorkloadError(
            f"{pointer} has {count} containers and volumes; imagegate judges at most {MAX_IMAGES}"
        )


def _image_volumes(spec: Mapping[str, Any], pointer: str) -> list[ContainerImage]:
    """The image volumes of a pod spec; other volume types are skipped."""
    volumes = spec.get("volumes")
    if volumes is None:
        return []
    where = f"{pointer}/volumes"
    if not isinstance(volumes, list):
        raise MalformedWorkloadError(f"{where} is not a list")
    found: list[ContainerImage] = []
    for index, volume in enumerate(volumes):
        if not isinstance(volume, Mapping):
            raise MalformedWorkloadError(f"{where}/{index} is not an object")
        source = volume.get("image")
        if source is None:
            continue  # emptyDir, configMap, ...: no image to pull
        if not isinstance(source, Mapping):
            raise MalformedWorkloadError(f"{where}/{index}/image is not an object")
        image = source.get("reference")
        if not isinstance(image, str):
            raise MalformedWorkloadError(
                f"{where}/{index}/image/reference is missing or not a string"
            )
        name = volume.get("name")
        found.append(
            ContainerImage(
                IMAGE_VOLUMES,
                index,
                name if isinstance(name, str) else "",
                image,
                f"{where}/{index}/image/reference",
            )
        )
    return found


def new_images(
    obj: Mapping[str, Any],
    old_obj: Mapping[str, Any],
    group_kind: tuple[str, str] | None = None,
) -> list[ContainerImage]:
    """Images of `obj` that `old_obj` did not already run in the same list (containers or image
    volumes) under the same name.

    For every UPDATE (a label, `kubectl set image`, `kubectl debug`): what was admitted before
    needs no new decision, and an unchanged image costs no verification and no re-pinning.

    The key is (list, container name, exact image string), not the index: reordering containers
    changes nothing that runs. Anything else re-judges, which is conservative where it is cheap:
    a renamed container (Pods cannot rename; a template rename rolls out anyway), an image moved
    between lists (an init container's image now running as the app), and any change to the
    string at all, even one that means the same image (`nginx` for `docker.io/library/nginx`, or
    the tag without the digest imagegate pinned). A malformed old object counts as empty, so
    everything is judged.
    """
    try:
        before = {_unchanged_key(c) for c in find_images(old_obj, group_kind)}
    except MalformedWorkloadError:
        before = set()
    return [c for c in find_images(obj, group_kind) if _unchanged_key(c) not in before]


def _unchanged_key(image: ContainerImage) -> tuple[str, str, str]:
    return (image.kind, image.container_name, image.image)


def _at(obj: Mapping[str, Any], pointer: str) -> Mapping[str, Any]:
    node: Any = obj
    walked = ""
    for part in pointer.strip("/").split("/"):
        walked += "/" + part
        child = node.get(part) if type(node) is dict or isinstance(node, Mapping) else None
        if type(child) is not dict and not isinstance(child, Mapping):  # as in find_images
            raise MalformedWorkloadError(f"{walked} is missing or not an object")
        node = child
    result: Mapping[str, Any] = node
    return result
