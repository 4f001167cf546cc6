"""Kubernetes API clients, made in one place (the client library's loaders are untyped)."""

from __future__ import annotations

import atexit
import base64
import os
import tempfile
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
    simple = _simple_kubeconfig(kubeconfig)
    if simple is not None:
        return client.ApiClient(simple)
    from kubernetes.config import kube_config

    return kube_config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call,no-any-return]


#: What `_simple_kubeconfig` reads of the current context's cluster and user. Anything else
#: (exec plugins, auth providers, basic auth, token files, proxies, TLS server names) is read by
#: the client library's loader, whose imports (requests, oauthlib) cost `run` 0.3 s of CPU.
SIMPLE_CLUSTER_FIELDS = frozenset(
    {"server", "certificate-authority", "certificate-authority-data", "insecure-skip-tls-verify"}
)
SIMPLE_USER_FIELDS = frozenset(
    {"client-certificate", "client-certificate-data", "client-key", "client-key-data", "token"}
)


def _simple_kubeconfig(path: Path) -> client.Configuration | None:
    """The current context of a kubeconfig with a client certificate or a token, as the client
    library's loader reads it (`KubeConfigLoader`); None for any other kubeconfig."""
    import yaml

    document = yaml.safe_load(path.read_text()) or {}
    context = _named(document, "contexts", document.get("current-context"))
    cluster = _named(document, "clusters", (context or {}).get("cluster"))
    user = _named(document, "users", (context or {}).get("user"))
    if (
        cluster is None
        or user is None
        or not str(cluster.get("server", "")).startswith("https://")
        or set(cluster) - SIMPLE_CLUSTER_FIELDS
        or set(user) - SIMPLE_USER_FIELDS
    ):
        return None
    base = path.resolve().parent
    configuration = client.Configuration()
    configuration.host = cluster["server"].rstrip("/")
    configuration.ssl_ca_cert = _as_file(cluster, "certificate-authority", base)
    configuration.cert_file = _as_file(user, "client-certificate", base)
    configuration.key_file = _as_file(user, "client-key", base)
    if "insecure-skip-tls-verify" in cluster:
        configuration.verify_ssl = not cluster["insecure-skip-tls-verify"]
    if user.get("token"):
        configuration.api_key["BearerToken"] = f"Bearer {user['token']}"
    return configuration


def _named(document: dict[str, Any], section: str, name: object) -> dict[str, Any] | None:
    """The body of the entry called `name` in a kubeconfig section (contexts, clusters, users)."""
    for entry in document.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(section[:-1])
            return body if isinstance(body, dict) else None
    return None


def _as_file(entry: dict[str, Any], field: str, base: Path) -> str | None:
    """`field` (a path, relative to the kubeconfig) or `field-data` (base64, written to a private
    file removed at exit, as the client library does): the path the client reads."""
    if entry.get(field + "-data"):
        descriptor, name = tempfile.mkstemp(prefix="imagegate-kubeconfig-")  # mode 0600
        with os.fdopen(descriptor, "wb") as file:
            file.write(base64.standard_b64decode(entry[field + "-data"]))
        atexit.register(os.unlink, name)
        return name
    if entry.get(field):
        return str(base / entry[field])
    return None


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
