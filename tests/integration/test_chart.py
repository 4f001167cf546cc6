"""The Helm chart, rendered by the real helm binary with no API server.

`helm lint --strict` of the chart and of every `ci/*-values.yaml` scenario; the values schema
refusing typos and bad enums; and the rendered objects: webhook rules equal to
webhookconfig.WORKLOAD_RESOURCES, the namespace exclusions and opt-out label, the three
certificate modes (operator-generated, cert-manager, webhook URL), the hardened Deployment and its
deadline below the webhook timeout, least-privilege RBAC, and the preset policies, which must stay
byte-for-byte copies of policies/*.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegate.admission import configurations as webhookconfig
from support import Helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "imagegate"
POLICIES = ROOT / "policies"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
POLICY_REPORT_CRD = CHART / "extra-crds" / "wgpolicyk8s.io_policyreports.yaml"
URL_VALUES = [
    "--set",
    "webhook.url=https://127.0.0.1:9443",
    "--set",
    "webhook.caBundle=Y2EtYnVuZGxl",
]
PRESETS = {
    "chainguardOnly": "chainguard-only.yaml",
    "chainguardOrg": "chainguard-org.yaml",
    "dhiOnly": "dhi-only.yaml",
    "trustedPublishers": "trusted-publishers.yaml",
    "rewriteToChainguard": "rewrite-to-chainguard.yaml",
    "rewriteToDhi": "rewrite-to-dhi.yaml",
    "rewriteToDhiElseChainguard": "rewrite-to-dhi-else-chainguard.yaml",
    "onboardingWarn": "onboarding-warn.yaml",
}

Manifest = dict[str, Any]


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def webhooks(manifests: list[Manifest]) -> list[Manifest]:
    """The workload webhook of each configuration: mutating first, then validating."""
    mutating = one(manifests, "MutatingWebhookConfiguration")["webhooks"]
    validating = one(manifests, "ValidatingWebhookConfiguration")["webhooks"]
    assert len(mutating) == 1
    assert [w["name"] for w in validating] == [
        "validate.imagegate.dev",
        "validate-policy.imagegate.dev",
    ]
    return [mutating[0], validating[0]]


def policy_webhook(manifests: list[Manifest]) -> Manifest:
    webhook: Manifest = one(manifests, "ValidatingWebhookConfiguration")["webhooks"][1]
    return webhook


def container(manifests: list[Manifest]) -> Manifest:
    containers = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


# -- lint -------------------------------------------------------------------------------------


def test_chart_lints_strictly(helm: Helm) -> None:
    done = helm.run("lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_every_ci_scenario_is_covered() -> None:
    names = {path.name.removesuffix("-values.yaml") for path in CI_VALUES}
    assert names >= {
        "default",
        "cert-manager",
        "webhook-url",
        "presets-all",
        "hardened",
        "ignore-policy",
    }


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_ci_scenario_lints_and_renders(helm: Helm, values: Path) -> None:
    linted = helm.run("lint", "--strict", str(CHART), "--namespace", "imagegate", "-f", str(values))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    manifests = helm.template("-f", str(values))
    kinds = {m["kind"] for m in manifests}
    assert {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} <= kinds
    assert {"ClusterRole", "ClusterRoleBinding"} <= kinds
    for manifest in manifests:
        assert manifest["metadata"]["name"], manifest
        assert manifest["metadata"]["labels"]["app.kubernetes.io/instance"] == "ig", manifest


# -- values schema ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "offending"),
    [
        ("replicaCont=3", "replicaCont"),
        ("webhook.failurPolicy=Fail", "failurPolicy"),
        ("presets.chainguard=true", "chainguard"),
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("webhook.reinvocationPolicy=Always", "reinvocationPolicy"),
        ("logFormat=xml", "logFormat"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("webhook.timeoutSeconds=31", "timeoutSeconds"),
        ("replicaCount=0", "replicaCount"),
    ],
)
def test_schema_rejects_typos_and_bad_values(helm: Helm, setting: str, offending: str) -> None:
    done = helm.run("template", "ig", str(CHART), "--set", setting)
    assert done.returncode != 0, f"--set {setting} was accepted"
    assert offending in done.stderr


def test_timeout_too_short_for_a_deadline_fails_clearly(helm: Helm) -> None:
    done = helm.run("template", "ig", str(CHART), "--set", "webhook.timeoutSeconds=2")
    assert done.returncode != 0
    assert "webhook.timeoutSeconds must be at least 3" in done.stderr


def test_url_mode_without_ca_bundle_fails_clearly(helm: Helm) -> None:
    done = helm.run("template", "ig", str(CHART), "--set", "webhook.url=https://10.0.0.5:9443")
    assert done.returncode != 0
    assert "webhook.url needs webhook.caBundle" in done.stderr


def test_url_mode_and_cert_manager_exclude_each_other(helm: Helm) -> None:
    done = helm.run("template", "ig", str(CHART), *URL_VALUES, "--set", "certManager.enabled=true")
    assert done.returncode != 0
    assert "exclude each other" in done.stderr


# -- webhook configurations -------------------------------------------------------------------


def test_webhook_rules_equal_the_operators_workload_resources(helm: Helm) -> None:
    mutating, validating = webhooks(helm.template())
    expected_rules = webhookconfig.configurations("x", "https://x", b"", selector={})[1][
        "webhooks"
    ][0]["rules"]
    for webhook in (mutating, validating):
        assert webhook["rules"] == expected_rules
        by_group = {rule["apiGroups"][0]: rule["resources"] for rule in webhook["rules"]}
        assert by_group == webhookconfig.WORKLOAD_RESOURCES
        for rule in webhook["rules"]:
            assert rule["operations"] == ["CREATE", "UPDATE"]
            assert rule["scope"] == "Namespaced"


def test_webhook_settings_and_names(helm: Helm) -> None:
    manifests = helm.template()
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert one(manifests, kind)["metadata"]["name"] == "ig-imagegate"
    mutating, validating = webhooks(manifests)
    assert mutating["name"] == "mutate.imagegate.dev"
    assert validating["name"] == "validate.imagegate.dev"
    for webhook in (mutating, validating):
        assert webhook["failurePolicy"] == "Fail"
        assert webhook["timeoutSeconds"] == 10
        assert webhook["sideEffects"] == "NoneOnDryRun"
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert webhook["matchPolicy"] == "Equivalent"
    assert mutating["reinvocationPolicy"] == "IfNeeded"
    assert "reinvocationPolicy" not in validating

    custom = webhooks(
        helm.template(
            "--set",
            "webhook.failurePolicy=Ignore",
            "--set",
            "webhook.timeoutSeconds=25",
            "--set",
            "webhook.reinvocationPolicy=Never",
        )
    )
    assert [w["failurePolicy"] for w in custom] == ["Ignore", "Ignore"]
    assert [w["timeoutSeconds"] for w in custom] == [25, 25]
    assert custom[0]["reinvocationPolicy"] == "Never"


def test_policy_webhook_validates_policies_and_cannot_lock_anything_out(helm: Helm) -> None:
    manifests = helm.template(namespace="some-ns")
    webhook = policy_webhook(manifests)
    expected = webhookconfig.configurations("x", "https://x", b"", selector={})[1]["webhooks"][1]
    assert webhook["name"] == expected["name"] == "validate-policy.imagegate.dev"
    assert webhook["rules"] == expected["rules"] == webhookconfig.policy_rules()
    for rule in webhook["rules"]:
        assert rule["apiGroups"] == ["imagegate.dev"]
        assert rule["operations"] == ["CREATE", "UPDATE"]  # deleting a policy always works
        assert not any("/" in resource for resource in rule["resources"])  # nor status writes
    assert {r for rule in webhook["rules"] for r in rule["resources"]} == {
        "clusterimagepolicies",
        "imagepolicies",
    }
    # The operator fails closed on what slips past, and Fail would refuse the presets on install.
    assert webhook["failurePolicy"] == expected["failurePolicy"] == "Ignore"
    assert webhook["sideEffects"] == "None"
    assert webhook["namespaceSelector"] == webhookconfig.namespace_selector("some-ns")
    assert webhook["clientConfig"]["service"]["path"] == "/validate-policy"
    url_mode = policy_webhook(helm.template(*URL_VALUES))
    assert url_mode["clientConfig"]["url"] == "https://127.0.0.1:9443/validate-policy"


def test_namespace_selector_excludes_control_plane_and_release_namespace(helm: Helm) -> None:
    for webhook in webhooks(helm.template(namespace="some-ns")):
        selector = webhook["namespaceSelector"]
        # Exactly what the operator's own configurations use (the demo and e2e tier).
        assert selector == webhookconfig.namespace_selector("some-ns")
        names, opt_out = selector["matchExpressions"]
        assert names["key"] == "kubernetes.io/metadata.name"
        assert names["operator"] == "NotIn"
        assert {"kube-system", "kube-public", "kube-node-lease", "some-ns"} <= set(names["values"])
        assert opt_out == {"key": webhookconfig.OPT_OUT_LABEL, "operator": "DoesNotExist"}


def test_namespace_selector_takes_extra_exclusions_and_selection(helm: Helm) -> None:
    extra = {"key": "environment", "operator": "In", "values": ["production"]}
    manifests = helm.template(
        "--set",
        "webhook.excludeNamespaces={monitoring,some-ns}",
        "--set-json",
        f"webhook.namespaceSelector.matchExpressions={json.dumps([extra])}",
        "--set",
        "webhook.namespaceSelector.matchLabels.imagegate\\.dev/enforce=on",
        namespace="some-ns",
    )
    for webhook in webhooks(manifests):
        selector = webhook["namespaceSelector"]
        names, opt_out, added = selector["matchExpressions"]
        assert names["values"] == [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "some-ns",
            "monitoring",
        ]
        assert opt_out["key"] == webhookconfig.OPT_OUT_LABEL
        assert added == extra
        assert selector["matchLabels"] == {"imagegate.dev/enforce": "on"}


def test_default_mode_calls_the_service_and_leaves_ca_to_the_operator(helm: Helm) -> None:
    manifests = helm.template(namespace="some-ns")
    for webhook, path in zip(webhooks(manifests), ("/mutate", "/validate"), strict=True):
        assert webhook["clientConfig"] == {
            "service": {"name": "ig-imagegate", "namespace": "some-ns", "path": path, "port": 443}
        }
    args = container(manifests)["args"]
    assert "--tls-secret=ig-imagegate-tls" in args
    assert "--service-name=ig-imagegate" in args
    assert "--webhook-configuration=ig-imagegate" in args
    assert "--tls-dir=/tmp/tls" in args
    assert not any(arg.startswith("--tls-cert") for arg in args)
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert "annotations" not in one(manifests, kind)["metadata"]
    assert not find(manifests, "Certificate")


def test_url_mode_renders_no_workload_and_calls_the_url(helm: Helm) -> None:
    manifests = helm.template(*URL_VALUES)
    kinds = {m["kind"] for m in manifests}
    assert not kinds & {"Deployment", "Service", "PodDisruptionBudget", "Pod", "ServiceMonitor"}
    mutating, validating = webhooks(manifests)
    assert mutating["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate",
        "caBundle": "Y2EtYnVuZGxl",
    }
    assert validating["clientConfig"] == {
        "url": "https://127.0.0.1:9443/validate",
        "caBundle": "Y2EtYnVuZGxl",
    }
    # The URL's certificate is the user's: no rights on Secrets or webhook configurations.
    assert not find(manifests, "Role")
    rules = one(manifests, "ClusterRole")["rules"]
    assert not any("admissionregistration.k8s.io" in rule["apiGroups"] for rule in rules)


def test_cert_manager_mode_issues_the_certificate_and_injects_the_ca(helm: Helm) -> None:
    manifests = helm.template("--set", "certManager.enabled=true", namespace="some-ns")
    serving = one(manifests, "Certificate", "ig-imagegate-serving")["spec"]
    assert serving["secretName"] == "ig-imagegate-tls"
    assert serving["dnsNames"] == [
        "ig-imagegate",
        "ig-imagegate.some-ns",
        "ig-imagegate.some-ns.svc",
        "ig-imagegate.some-ns.svc.cluster.local",
    ]
    assert serving["issuerRef"]["name"] == "ig-imagegate-ca"
    assert one(manifests, "Certificate", "ig-imagegate-ca")["spec"]["isCA"] is True
    assert one(manifests, "Issuer", "ig-imagegate-selfsigned")["spec"] == {"selfSigned": {}}
    assert one(manifests, "Issuer", "ig-imagegate-ca")["spec"]["ca"]["secretName"] == (
        "ig-imagegate-ca"
    )
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        annotations = one(manifests, kind)["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == "some-ns/ig-imagegate-serving"
    for webhook in webhooks(manifests):
        assert "caBundle" not in webhook["clientConfig"]
    main = container(manifests)
    assert "--tls-cert=/tls/tls.crt" in main["args"]
    assert "--tls-key=/tls/tls.key" in main["args"]
    assert not any(arg.startswith("--tls-secret") for arg in main["args"])
    volumes = one(manifests, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "ig-imagegate-tls"}} in volumes
    # cert-manager writes the Secret: the operator gets no rights on it.
    assert not find(manifests, "Role")


def test_cert_manager_mode_with_own_issuer(helm: Helm) -> None:
    manifests = helm.template(
        "--set",
        "certManager.enabled=true",
        "--set",
        "certManager.issuerRef.name=corp-ca",
        "--set",
        "certManager.issuerRef.kind=ClusterIssuer",
    )
    assert not find(manifests, "Issuer")
    assert [c["metadata"]["name"] for c in find(manifests, "Certificate")] == [
        "ig-imagegate-serving"
    ]
    issuer = one(manifests, "Certificate")["spec"]["issuerRef"]
    assert issuer == {"name": "corp-ca", "kind": "ClusterIssuer"}


# -- the Deployment -----------------------------------------------------------------------------


def test_deployment_is_hardened(helm: Helm) -> None:
    manifests = helm.template()
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    main = container(manifests)
    security = main["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["runAsGroup"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert main["resources"]["requests"] == {"cpu": "100m", "memory": "272Mi"}
    assert "memory" in main["resources"]["limits"]
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in main["ports"]
    assert {"name": "https", "containerPort": 8443, "protocol": "TCP"} in main["ports"]
    assert main["image"] == "ghcr.io/imagegate/imagegate:0.1.0"
    env = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in main["env"]
    }
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    assert env["POD_NAME"] == "metadata.name"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert one(manifests, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    service_ports = {
        p["name"]: (p["port"], p["targetPort"]) for p in one(manifests, "Service")["spec"]["ports"]
    }
    assert service_ports == {"https": (443, "https"), "metrics": (8081, "metrics")}


@pytest.mark.parametrize(("timeout", "deadline"), [(10, 8), (3, 1), (30, 28)])
def test_deadline_is_below_the_webhook_timeout(helm: Helm, timeout: int, deadline: int) -> None:
    manifests = helm.template("--set", f"webhook.timeoutSeconds={timeout}")
    args = container(manifests)["args"]
    assert f"--deadline={deadline}" in args
    for webhook in webhooks(manifests):
        assert webhook["timeoutSeconds"] == timeout > deadline


def test_operator_flags_follow_the_values(helm: Helm) -> None:
    args = container(helm.template())["args"]
    assert args[0] == "run"
    assert {"--port=8443", "--health-port=8081", "--host=0.0.0.0", "--log-format=json"} <= set(args)
    assert {"--policy-reports", "--scan-interval=300", "--scan-duty=0.5"} <= set(args)
    assert "--no-events" not in args
    assert not any(arg.startswith("--insecure-registry") for arg in args)
    args = container(
        helm.template(
            "--set",
            "insecureRegistries={reg.local:5000,10.0.0.9}",
            "--set",
            "logFormat=text",
            "--set",
            "events.enabled=false",
            "--set",
            "policyReports.enabled=false",
        )
    )["args"]
    assert "--insecure-registry=reg.local:5000" in args
    assert "--insecure-registry=10.0.0.9" in args
    assert "--log-format=text" in args
    assert "--no-events" in args
    assert "--policy-reports" not in args
    assert not any(arg.startswith(("--scan-interval", "--scan-duty")) for arg in args)
    paced = container(helm.template("--set-json", "policyReports.duty=0.2"))["args"]
    assert "--scan-duty=0.2" in paced


@pytest.mark.parametrize(
    ("settings", "workers"),
    [
        ((), 1),  # the default request, 100m
        (("--set", "resources.requests.cpu=1500m"), 2),
        (("--set-string", "resources.requests.cpu=2"), 2),
        (("--set", "resources.requests.cpu=0.5"), 1),
        (("--set", "resources.requests.cpu=1500m", "--set", "workers=3"), 3),
    ],
)
def test_worker_count_follows_the_cpu_request(
    helm: Helm, settings: tuple[str, ...], workers: int
) -> None:
    args = container(helm.template(*settings))["args"]
    assert f"--workers={workers}" in args


def test_image_digest_wins_over_tag_and_single_replica_has_no_pdb(helm: Helm) -> None:
    digest = "sha256:" + "ab" * 32
    manifests = helm.template(
        "--set", f"image.digest={digest}", "--set", "image.tag=9.9", "--set", "replicaCount=1"
    )
    assert container(manifests)["image"] == f"ghcr.io/imagegate/imagegate@{digest}"
    assert not find(manifests, "PodDisruptionBudget")
    assert container(helm.template("--set", "image.tag=9.9"))["image"].endswith(":9.9")


def test_helm_test_pod_runs_selftest_against_the_service(helm: Helm) -> None:
    manifests = helm.template(namespace="some-ns")
    pod = one(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    test_container = pod["spec"]["containers"][0]
    assert test_container["args"] == [
        "selftest",
        "--url=https://ig-imagegate.some-ns.svc:443/validate",
        "--ca-file=/tls/ca.crt",
    ]
    assert test_container["securityContext"] == container(manifests)["securityContext"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    secret = next(v["secret"] for v in pod["spec"]["volumes"] if v["name"] == "tls")
    assert secret["secretName"] == "ig-imagegate-tls"


# -- RBAC -------------------------------------------------------------------------------------


def _grants(rules: list[Manifest], group: str, resource: str) -> list[Manifest]:
    return [r for r in rules if group in r["apiGroups"] and resource in r["resources"]]


def test_rbac_is_least_privilege(helm: Helm) -> None:
    manifests = helm.template(namespace="some-ns")
    cluster_rules = one(manifests, "ClusterRole")["rules"]
    for rule in cluster_rules:
        assert "*" not in rule["verbs"], rule
        assert "*" not in rule["resources"], rule
    (secrets,) = _grants(cluster_rules, "", "secrets")
    assert secrets["verbs"] == ["get"]
    (webhook_rule,) = _grants(
        cluster_rules, "admissionregistration.k8s.io", "mutatingwebhookconfigurations"
    )
    assert webhook_rule["resourceNames"] == ["ig-imagegate"]
    assert webhook_rule["verbs"] == ["get", "patch"]
    assert "validatingwebhookconfigurations" in webhook_rule["resources"]
    for resource in ("clusterimagepolicies", "imagepolicies"):
        (rule,) = _grants(cluster_rules, "imagegate.dev", resource)
        assert rule["verbs"] == ["get", "list", "watch"]
        (status,) = _grants(cluster_rules, "imagegate.dev", f"{resource}/status")
        assert set(status["verbs"]) == {"get", "patch", "update"}
    (reports,) = _grants(cluster_rules, "wgpolicyk8s.io", "policyreports")
    assert "delete" in reports["verbs"]
    for group, resource in [("", "pods"), ("apps", "deployments"), ("batch", "cronjobs")]:
        (rule,) = _grants(cluster_rules, group, resource)
        assert rule["verbs"] == ["get", "list", "watch"]
    role = one(manifests, "Role")
    assert role["metadata"]["namespace"] == "some-ns"
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["ig-imagegate-tls"],
            "verbs": ["get", "update"],
        }
    ]
    subjects = one(manifests, "RoleBinding")["subjects"]
    assert subjects == one(manifests, "ClusterRoleBinding")["subjects"]
    assert subjects == [{"kind": "ServiceAccount", "name": "ig-imagegate", "namespace": "some-ns"}]


def test_secrets_can_be_confined_to_the_release_namespace(helm: Helm) -> None:
    manifests = helm.template("--set", "rbac.readSecretsClusterWide=false")
    assert not _grants(one(manifests, "ClusterRole")["rules"], "", "secrets")
    readable = [
        r
        for r in _grants(one(manifests, "Role")["rules"], "", "secrets")
        if "get" in r["verbs"] and not r.get("resourceNames")
    ]
    assert len(readable) == 1


# -- presets and extra CRDs -------------------------------------------------------------------


def test_preset_copies_equal_the_repository_policies() -> None:
    """charts/imagegate/presets/ must be byte-for-byte policies/: copy them again if this fails."""
    policies = {path.name: path.read_bytes() for path in POLICIES.glob("*.yaml")}
    presets = {path.name: path.read_bytes() for path in (CHART / "presets").glob("*.yaml")}
    assert policies, "no policies found"
    assert sorted(presets) == sorted(policies)
    for name, content in policies.items():
        assert presets[name] == content, f"charts/imagegate/presets/{name} drifted from policies/"
    assert sorted(PRESETS.values()) == sorted(policies)


def test_presets_are_off_by_default(helm: Helm) -> None:
    assert not find(helm.template(), "ClusterImagePolicy")


@pytest.mark.parametrize(("key", "file"), sorted(PRESETS.items()))
def test_each_preset_renders_its_policy(helm: Helm, key: str, file: str) -> None:
    policy = yaml.safe_load((POLICIES / file).read_text())
    rendered = one(helm.template("--set", f"presets.{key}=true"), "ClusterImagePolicy")
    assert rendered["metadata"]["name"] == policy["metadata"]["name"]
    assert rendered["apiVersion"] == policy["apiVersion"]
    assert rendered["spec"] == policy["spec"]
    assert rendered["metadata"]["labels"]["app.kubernetes.io/instance"] == "ig"
    assert rendered["metadata"]["labels"]["imagegate.dev/preset"] == key


def test_presets_all_scenario_renders_every_policy(helm: Helm) -> None:
    manifests = helm.template("-f", str(CHART / "ci" / "presets-all-values.yaml"))
    names = sorted(m["metadata"]["name"] for m in find(manifests, "ClusterImagePolicy"))
    expected = sorted(
        yaml.safe_load((POLICIES / file).read_text())["metadata"]["name"]
        for file in PRESETS.values()
    )
    assert names == expected
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_policy_report_crd_only_when_asked_for(helm: Helm) -> None:
    assert not find(helm.template(), "CustomResourceDefinition")
    crds = find(helm.template("--set", "policyReports.installCRD=true"), "CustomResourceDefinition")
    if not POLICY_REPORT_CRD.exists():
        # The template renders nothing until the reports work adds the file.
        assert crds == []
        return
    assert [crd["metadata"]["name"] for crd in crds] == ["policyreports.wgpolicyk8s.io"]


def test_policy_report_crd_is_the_shipped_file_with_the_chart_labels(helm: Helm) -> None:
    done = helm.run("template", "ig", str(CHART), "--set", "policyReports.installCRD=true")
    assert done.returncode == 0, done.stderr
    rendered = one(
        [doc for doc in yaml.safe_load_all(done.stdout) if doc], "CustomResourceDefinition"
    )
    shipped = yaml.safe_load(POLICY_REPORT_CRD.read_text())
    assert rendered["metadata"]["labels"]["app.kubernetes.io/instance"] == "ig"
    rendered["metadata"].pop("labels")
    assert rendered == shipped


# -- network policy -----------------------------------------------------------------------------


def test_network_policy_admits_only_the_webhook_and_health_ports(helm: Helm) -> None:
    manifests = helm.template()
    policy = one(manifests, "NetworkPolicy")
    deployment = one(manifests, "Deployment")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress"]
    webhook, health = spec["ingress"]
    ports = {p["name"]: p["containerPort"] for p in container(manifests)["ports"]}
    assert webhook == {"ports": [{"port": "https", "protocol": "TCP"}]}  # from anywhere
    assert health == {
        "ports": [{"port": "metrics", "protocol": "TCP"}],
        "from": [{"namespaceSelector": {}}],
    }
    assert set(ports) == {"https", "metrics"}  # the named ports exist, and no other


def test_network_policy_takes_webhook_peers_and_can_be_disabled(helm: Helm) -> None:
    manifests = helm.template("--set", "networkPolicy.webhookFrom[0].ipBlock.cidr=10.0.0.0/24")
    webhook = one(manifests, "NetworkPolicy")["spec"]["ingress"][0]
    assert webhook["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    assert not find(helm.template("--set", "networkPolicy.enabled=false"), "NetworkPolicy")


def test_the_drain_delay_is_passed_and_the_grace_period_covers_it(helm: Helm) -> None:
    """SIGTERM drains in-process (no preStop: the image has no shell); the kubelet must wait."""
    manifests = helm.template("--set", "drainDelaySeconds=7")
    env = {item["name"]: item.get("value") for item in container(manifests)["env"]}
    assert env["IMAGEGATE_DRAIN_DELAY"] == "7"
    assert "lifecycle" not in container(manifests)
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30  # max(30, 7 + 10 + 5)
    longer = helm.template("--set", "drainDelaySeconds=20")
    assert (
        one(longer, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 35
    )
    short = helm.run(
        "template", "ig", str(CHART), "--set", "terminationGracePeriodSeconds=12"
    )  # 5 s drain + 10 s webhook timeout do not fit in 12 s
    assert short.returncode != 0
    assert "terminationGracePeriodSeconds (12) must be at least" in short.stderr
