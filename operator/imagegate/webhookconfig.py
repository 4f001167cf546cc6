"""The Mutating/ValidatingWebhookConfigurations imagegate needs, as API objects.

The Helm chart renders the same shape; this module builds it for the local demo and the e2e tier,
where the webhook is reached by URL (the chart's `webhook.url` mode) instead of a Service.
Safety is in the selector: kube-system and imagegate's own namespace are never sent to imagegate,
and any namespace can opt out with a label, so a broken webhook cannot lock the cluster out.
"""

from __future__ import annotations

import base64
from typing import Any

#: Namespaces never judged: the control plane's own, and imagegate's (so it can always restart).
ALWAYS_EXCLUDED = ("kube-system", "kube-public", "kube-node-lease")
OPT_OUT_LABEL = "imagegate.dev/ignore"
WORKLOAD_RESOURCES = {
    "": ["pods", "pods/ephemeralcontainers", "replicationcontrollers", "podtemplates"],
    "apps": ["deployments", "statefulsets", "daemonsets", "replicasets"],
    "batch": ["jobs", "cronjobs"],
}


def namespace_selector(own_namespace: str | None) -> dict[str, Any]:
    excluded = [*ALWAYS_EXCLUDED, *([own_namespace] if own_namespace else [])]
    return {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded},
            {"key": OPT_OUT_LABEL, "operator": "DoesNotExist"},
        ]
    }


def configurations(
    name: str,
    base_url: str,
    ca_pem: bytes,
    *,
    selector: dict[str, Any],
    timeout_seconds: int = 10,
    failure_policy: str = "Fail",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(mutating, validating) configuration bodies calling `base_url`/mutate and /validate."""
    rules = [
        {
            "apiGroups": [group],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": resources,
            "scope": "Namespaced",
        }
        for group, resources in WORKLOAD_RESOURCES.items()
    ]
    ca_bundle = base64.b64encode(ca_pem).decode()

    def webhook(path: str) -> dict[str, Any]:
        return {
            "name": f"{path}.imagegate.dev",
            "clientConfig": {"url": f"{base_url}/{path}", "caBundle": ca_bundle},
            "rules": rules,
            "namespaceSelector": selector,
            "failurePolicy": failure_policy,
            # Events and status counts are written, except for dry-run requests.
            "sideEffects": "NoneOnDryRun",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": timeout_seconds,
        }

    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        # Run again if another webhook changes the pod after us, so a rewrite cannot be undone.
        "webhooks": [{**webhook("mutate"), "reinvocationPolicy": "IfNeeded"}],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [webhook("validate")],
    }
    return mutating, validating
