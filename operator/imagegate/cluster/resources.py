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

    def get(self, namespace: str | None, name: str) -> dict[str, Any]:
        if namespace is None:
            found = self._objects.get_cluster_custom_object(
                model.GROUP, model.VERSION, CLUSTER_PLURAL, name
            )
        else:
            found = self._objects.get_namespaced_custom_object(
                model.GROUP, model.VERSION, namespace, NAMESPACED_PLURAL, name
            )
        if not isinstance(found, dict):
            raise client.ApiException(status=500, reason="unexpected response")
        return found

    def create(self, namespace: str | None, body: dict[str, Any]) -> None:
        if namespace is None:
            self._objects.create_cluster_custom_object(
                model.GROUP, model.VERSION, CLUSTER_PLURAL, body
            )
        else:
            self._objects.create_namespaced_custom_object(
                model.GROUP, model.VERSION, namespace, NAMESPACED_PLURAL, body
            )

    def delete(self, namespace: str | None, name: str) -> None:
        if namespace is None:
            self._objects.delete_cluster_custom_object(
                model.GROUP, model.VERSION, CLUSTER_PLURAL, name
            )
        else:
            self._objects.delete_namespaced_custom_object(
                model.GROUP, model.VERSION, namespace, NAMESPACED_PLURAL, name
            )

    def patch_status(self, namespace: str | None, name: str, body: dict[str, Any]) -> None:
        if namespace is None:
            self._objects.patch_cluster_custom_object_status(
                model.GROUP, model.VERSION, CLUSTER_PLURAL, name, body
            )
        else:
            self._objects.patch_namespaced_custom_object_status(
                model.GROUP, model.VERSION, namespace, NAMESPACED_PLURAL, name, body
            )
