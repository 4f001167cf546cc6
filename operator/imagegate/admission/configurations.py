"""The Mutating/ValidatingWebhookConfigurations imagegate needs, as API objects.

The Helm chart renders the same shape; this module builds it for the local demo and the e2e tier,
where the webhook is reached by URL (the chart's `webhook.url` mode) instead of a Service.
Safety is in the selector: kube-system and imagegate's own namespace are never sent to imagegate,
and any namespace can opt out with a label, so a broken webhook cannot lock the cluster out.

The policy webhook (`/validate-policy`) refuses a policy the operator could not compile. It is
`failurePolicy: Ignore` on purpose: the operator fails closed on a policy it cannot compile, so an
unchecked policy enforces more, never less; and `Fail` would refuse the chart's own preset
policies while the operator is still starting on `helm install`, and every policy change while
imagegate is down. It sees CREATE and UPDATE only (deleting a policy always works) and not the
status subresource the operator writes.
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
POLICY_GROUP = "imagegate.dev"
POLICY_RESOURCES = {"clusterimagepolicies": "Cluster", "imagepolicies": "Namespaced"}


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
    policies: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(mutating, validating) configuration bodies calling `base_url`/mutate and /validate, and
    (`policies`) /validate-policy for imagegate's own policy resources."""
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

    def webhook(
        path: str,
        rules: list[dict[str, Any]],
        failure_policy: str,
        side_effects: str,
    ) -> dict[str, Any]:
        return {
            "name": f"{path}.imagegate.dev",
            "clientConfig": {"url": f"{base_url}/{path}", "caBundle": ca_bundle},
            "rules": rules,
            "namespaceSelector": selector,
            "failurePolicy": failure_policy,
            "sideEffects": side_effects,
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": timeout_seconds,
        }

    # Events and status counts are written, except for dry-run requests.
    judging = "NoneOnDryRun"
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        # Run again if another webhook changes the pod after us, so a rewrite cannot be undone.
        "webhooks": [
            {**webhook("mutate", rules, failure_policy, judging), "reinvocationPolicy": "IfNeeded"}
        ],
    }
    # Applies to ImagePolicies only (cluster-scoped objects are always sent by the selector);
    # Ignore: a policy that slips past while imagegate is down fails closed (policy/compile.py).
    policy_webhook = webhook("validate-policy", policy_rules(), "Ignore", "None")
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            webhook("validate", rules, failure_policy, judging),
            *([policy_webhook] if policies else []),
        ],
    }
    return mutating, validating


def policy_rules() -> list[dict[str, Any]]:
    return [
        {
            "apiGroups": [POLICY_GROUP],
            "apiVersions": ["*"],
            "operations": ["CREATE", "UPDATE"],
            "resources": [resource],
            "scope": scope,
        }
        for resource, scope in POLICY_RESOURCES.items()
    ]
