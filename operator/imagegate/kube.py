"""Kubernetes API clients, made in one place (the client library's loaders are untyped)."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config


def api_client(kubeconfig: Path | None = None) -> client.ApiClient:
    """A client from a kubeconfig file, else from the in-cluster service account."""
    if kubeconfig is None:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    return config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call,no-any-return]
