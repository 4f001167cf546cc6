"""Kubernetes API clients, made in one place (the client library's loaders are untyped)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kubernetes import client

from imagegate.errors import UsageError


def api_client(kubeconfig: Path | None = None) -> client.ApiClient:
    """A client from a kubeconfig file, else from the in-cluster service account."""
    # Submodules, not `kubernetes.config`'s names: its kubeconfig loader costs start-up time
    # (lazypackages.py); in a cluster only the in-cluster one is read.
    if kubeconfig is None:
        from kubernetes.config import incluster_config

        configuration = client.Configuration()
        incluster_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    from kubernetes.config import kube_config

    return kube_config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call,no-any-return]


def admin_client(kubeconfig: Path | None = None) -> client.ApiClient:
    """For commands admins run: the file given, else $KUBECONFIG or ~/.kube/config, else the
    in-cluster service account (inside a Pod)."""
    if kubeconfig is None:
        default = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0])
        if default.expanduser().is_file():
            kubeconfig = default.expanduser()
        elif not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise UsageError("no kubeconfig: set $KUBECONFIG or pass --kubeconfig")
    return api_client(kubeconfig)


def create(api: client.ApiClient, body: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Create a built-in object from its manifest; return it as stored (JSON form).

    Raises `kubernetes.utils.FailToCreateError` (its `api_exceptions` say why).
    """
    from kubernetes import utils

    (created,) = utils.create_from_dict(api, body, namespace=namespace)  # type: ignore[no-untyped-call]
    stored: dict[str, Any] = api.sanitize_for_serialization(created)  # type: ignore[no-untyped-call]
    return stored
