"""The policy resources through the API server, addressed by (namespace, name).

A namespace of None means the cluster-scoped ClusterImagePolicy; any other, the ImagePolicy in
that namespace. One place for the group, version and plurals, and for the choice between the
client's cluster and namespaced calls.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from imagegate.policy import model

CLUSTER_PLURAL = "clusterimagepolicies"
NAMESPACED_PLURAL = "imagepolicies"


class PolicyResources:
    def __init__(self, api: client.ApiClient) -> None:
        self._objects = client.CustomObjectsApi(api)

    def _call(self, verb: str, namespace: str | None, *args: Any) -> Any:
        """`CustomObjectsApi.<verb>_cluster_...` or `<verb>_namespaced_...`, by scope.

        `verb` is "get", "create", "delete" or "patch/status"; the client's names are regular:
        `get_cluster_custom_object`, `patch_namespaced_custom_object_status`, ...
        """
        action, _, suffix = verb.partition("/")
        suffix = f"_{suffix}" if suffix else ""
        if namespace is None:
            call = getattr(self._objects, f"{action}_cluster_custom_object{suffix}")
            return call(model.GROUP, model.VERSION, CLUSTER_PLURAL, *args)
        call = getattr(self._objects, f"{action}_namespaced_custom_object{suffix}")
        return call(model.GROUP, model.VERSION, namespace, NAMESPACED_PLURAL, *args)

    def get(self, namespace: str | None, name: str) -> dict[str, Any]:
        found = self._call("get", namespace, name)
        if not isinstance(found, dict):
            raise client.ApiException(status=500, reason="unexpected response")
        return found

    def create(self, namespace: str | None, body: dict[str, Any]) -> None:
        self._call("create", namespace, body)

    def delete(self, namespace: str | None, name: str) -> None:
        self._call("delete", namespace, name)

    def patch_status(self, namespace: str | None, name: str, body: dict[str, Any]) -> None:
        self._call("patch/status", namespace, name, body)
