"""Kubernetes API clients, made in one place (the client library's loaders are untyped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client, config, utils


def api_client(kubeconfig: Path | None = None) -> client.ApiClient:
    """A client from a kubeconfig file, else from the in-cluster service account."""
    if kubeconfig is None:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    return config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call,no-any-return]


def create(api: client.ApiClient, body: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Create a built-in object from its manifest; return it as stored (JSON form).

    Raises `kubernetes.utils.FailToCreateError` (its `api_exceptions` say why).
    """
    (created,) = utils.create_from_dict(api, body, namespace=namespace)  # type: ignore[no-untyped-call]
    stored: dict[str, Any] = api.sanitize_for_serialization(created)  # type: ignore[no-untyped-call]
    return stored
