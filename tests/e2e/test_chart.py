"""The Helm chart against a real API server.

Renders (default, webhook URL, all presets) are accepted by `kubectl apply --dry-run=server`,
so every object passes the API server's own validation; the chart installs in URL mode, both
webhook configurations appear with the release namespace excluded, and `helm uninstall` leaves
none behind; in the default (operator-generated certificate) mode, a caBundle the operator
patched in survives `helm upgrade`.

Every install runs in a fresh namespace that is deleted afterwards, with a namespaceSelector that
only that test's namespace (or none) matches, so it cannot affect any other test. The last test
installs in url mode against the session's operator and follows a denial through the audit trail.
"""

from __future__ import annotations

import base64
import io
import os
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from imagegate.cluster import resources, tls
from imagegate.commands import audit as trail
from imagegate.testbed import build, local
from support import Cluster, pod_review, post_review

from .test_admission import pod_body

pytestmark = [pytest.mark.controlplane, pytest.mark.usefixtures("crds")]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "imagegate"
CI = CHART / "ci"
#: Kinds whose CRDs cannot exist on this bare API server: cert-manager's Certificate and Issuer,
#: the Prometheus Operator's ServiceMonitor. The integration tier checks their rendering.
UNAVAILABLE_KINDS = {"Certificate", "Issuer", "ServiceMonitor"}
#: A label no namespace carries: installed webhooks never see any namespace.
NOBODY = ["--set", "webhook.namespaceSelector.matchLabels.imagegate\\.dev/chart-e2e=nobody"]
SAFE = ["--set", "webhook.failurePolicy=Ignore", *NOBODY]


class Tools:
    """helm and kubectl pointed at the test cluster, with helm's state in a temporary folder."""

    def __init__(self, helm: Path, kubectl: Path, kubeconfig: Path, home: Path) -> None:
        self.helm_binary = helm
        self.kubectl_binary = kubectl
        self.kubeconfig = kubeconfig
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, capture_output=True, text=True, check=False, env=self.env, timeout=180
        )

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.helm_binary), "--kubeconfig", str(self.kubeconfig), *args])

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.kubectl_binary), "--kubeconfig", str(self.kubeconfig), *args])

    def template(self, namespace: str, *args: str) -> list[dict[str, Any]]:
        done = self.helm("template", "ig", str(CHART), "--namespace", namespace, *args)
        assert done.returncode == 0, done.stderr
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def tools(
    cluster: Cluster, builder: build.Builder, tmp_path_factory: pytest.TempPathFactory
) -> Tools:
    return Tools(
        builder.ensure(build.HELM),
        builder.ensure(build.KUBECTL),
        cluster.kubeconfig,
        tmp_path_factory.mktemp("helm-home"),
    )


def webhook_configurations(
    api: client.ApiClient, name: str
) -> tuple[client.V1MutatingWebhookConfiguration, client.V1ValidatingWebhookConfiguration]:
    admission = client.AdmissionregistrationV1Api(api)
    return (
        admission.read_mutating_webhook_configuration(name),
        admission.read_validating_webhook_configuration(name),
    )


def assert_gone(api: client.ApiClient, name: str) -> None:
    admission = client.AdmissionregistrationV1Api(api)
    for read in (
        admission.read_mutating_webhook_configuration,
        admission.read_validating_webhook_configuration,
    ):
        with pytest.raises(ApiException) as missing:
            read(name)
        assert missing.value.status == 404


def ca_bundle() -> str:
    return base64.b64encode(tls.CertificateAuthority.create("chart-e2e-ca").cert_pem).decode()


@pytest.mark.parametrize(
    "values",
    ["default-values.yaml", "webhook-url-values.yaml", "presets-all-values.yaml"],
)
def test_rendered_chart_passes_server_side_validation(
    tools: Tools, namespace: str, values: str, tmp_path: Path
) -> None:
    manifests = tools.template(namespace, "-f", str(CI / values))
    applicable = [m for m in manifests if m["kind"] not in UNAVAILABLE_KINDS]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(applicable))
    # The PolicyReport CRD (installCRD) is part of the render and applied with it: a dry run of
    # a CRD needs no CRD installed first, and leaves nothing behind.
    applied = tools.kubectl(
        "apply", "--dry-run=server", "--namespace", namespace, "-f", str(rendered)
    )
    assert applied.returncode == 0, applied.stderr
    created = [line for line in applied.stdout.splitlines() if "(server dry run)" in line]
    assert len(created) == len(applicable), applied.stdout
    if values == "presets-all-values.yaml":
        # One ClusterImagePolicy per preset in policies/ (the chart ships each of them).
        presets = len(list((ROOT / "policies").glob("*.yaml")))
        assert applied.stdout.count("clusterimagepolicy.imagegate.dev/") == presets


def test_url_mode_install_and_uninstall(
    tools: Tools, api: client.ApiClient, namespace: str
) -> None:
    release = f"imagegate-{namespace}"  # contains the chart name: the full name is the release
    installed = tools.helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--skip-crds",  # the crds fixture installed them; the chart must not own them here
        "--set",
        "webhook.url=https://127.0.0.1:9",
        "--set",
        f"webhook.caBundle={ca_bundle()}",
        *SAFE,
    )
    try:
        assert installed.returncode == 0, installed.stderr
        assert "WARNING: webhook.failurePolicy is Ignore" in installed.stdout
        mutating, validating = webhook_configurations(api, release)
        assert [w.name for w in validating.webhooks][1:] == ["validate-policy.imagegate.dev"]
        assert validating.webhooks[1].client_config.url == "https://127.0.0.1:9/validate-policy"
        for configuration, path in ((mutating, "mutate"), (validating, "validate")):
            webhook = configuration.webhooks[0]
            assert webhook.name == f"{path}.imagegate.dev"
            assert webhook.client_config.url == f"https://127.0.0.1:9/{path}"
            assert webhook.failure_policy == "Ignore"
            expressions = webhook.namespace_selector.match_expressions
            excluded = next(e for e in expressions if e.key == "kubernetes.io/metadata.name")
            assert excluded.operator == "NotIn"
            assert {"kube-system", namespace} <= set(excluded.values)
            assert webhook.namespace_selector.match_labels == {"imagegate.dev/chart-e2e": "nobody"}
            assert configuration.metadata.labels["app.kubernetes.io/instance"] == release
        assert not client.AppsV1Api(api).list_namespaced_deployment(namespace).items
    finally:
        uninstalled = tools.helm("uninstall", release, "--namespace", namespace, "--wait")
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert_gone(api, release)


def test_operator_patched_ca_bundle_survives_upgrade(
    tools: Tools, api: client.ApiClient, namespace: str
) -> None:
    """Default mode: the chart reads the caBundle back with `lookup` instead of blanking it.

    Only the API server runs here (no controllers, no kubelet), so the Deployment never starts
    a pod; the test plays the operator's part by patching the CA in itself.
    """
    release = f"imagegate-{namespace}"
    common = ["--namespace", namespace, "--skip-crds", *SAFE]
    installed = tools.helm("install", release, str(CHART), *common)
    try:
        assert installed.returncode == 0, installed.stderr
        mutating, validating = webhook_configurations(api, release)
        assert mutating.webhooks[0].client_config.service.name == release
        assert not mutating.webhooks[0].client_config.ca_bundle
        bundle = ca_bundle()
        admission = client.AdmissionregistrationV1Api(api)
        for patch, name in (
            (admission.patch_mutating_webhook_configuration, "mutate.imagegate.dev"),
            (admission.patch_validating_webhook_configuration, "validate.imagegate.dev"),
            (admission.patch_validating_webhook_configuration, "validate-policy.imagegate.dev"),
        ):
            patch(release, {"webhooks": [{"name": name, "clientConfig": {"caBundle": bundle}}]})
        upgraded = tools.helm(
            "upgrade", release, str(CHART), *common, "--set", "webhook.timeoutSeconds=12"
        )
        assert upgraded.returncode == 0, upgraded.stderr
        mutating, validating = webhook_configurations(api, release)
        for webhook in (*mutating.webhooks, *validating.webhooks):
            assert webhook.timeout_seconds == 12
            assert webhook.client_config.ca_bundle == bundle
        manifest = tools.helm("get", "manifest", release, "--namespace", namespace)
        assert manifest.returncode == 0, manifest.stderr
        # Rendered into the release by `lookup`, not merely left alone by the upgrade's patch.
        assert manifest.stdout.count(f'caBundle: "{bundle}"') == 3
    finally:
        uninstalled = tools.helm("uninstall", release, "--namespace", namespace, "--wait")
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert_gone(api, release)


def test_chart_installed_preset_denies_and_the_trail_records_it(
    tools: Tools,
    api: client.ApiClient,
    cluster: Cluster,
    operator: local.LocalOperator,
    namespace: str,
) -> None:
    """The whole story an admin lives: install with a preset, a Pod is denied, and the denial
    is an Event, a metric, a status count and a line of `imagegate audit`; uninstall leaves
    no webhook configuration behind.

    The webhook runs outside the cluster (url mode, the session's operator process), and only
    a namespace with this test's label is sent to it.
    """
    release = f"imagegate-{namespace}"
    policies = resources.PolicyResources(api)
    installed = tools.helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--skip-crds",
        "--set",
        f"webhook.url={operator.url}",
        "--set",
        f"webhook.caBundle={base64.b64encode(operator.ca_pem).decode()}",
        "--set",
        "webhook.namespaceSelector.matchLabels.imagegate\\.dev/chart-e2e=story",
        "--set",
        "presets.chainguardOnly=true",
    )
    team = f"team-{namespace}"
    core = client.CoreV1Api(api)
    try:
        assert installed.returncode == 0, installed.stderr
        wait_until(lambda: _ready(policies.get(None, "chainguard-only")), "preset Ready")
        before = policies.get(None, "chainguard-only").get("status", {}).get("denials", 0)
        core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(name=team, labels={"imagegate.dev/chart-e2e": "story"})
            )
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
        }
        with pytest.raises(ApiException) as denied:
            core.create_namespaced_pod(team, pod)
        assert "denied by policy chainguard-only" in denied.value.body

        # The Event, on the ClusterImagePolicy (cluster-scoped objects' Events live in default).
        def event() -> Any:
            return next(
                (
                    e
                    for e in core.list_namespaced_event("default").items
                    if e.reason == "ImageDenied"
                    and (e.metadata.annotations or {}).get("imagegate.dev/namespace") == team
                ),
                None,
            )

        wait_until(lambda: event() is not None, "ImageDenied Event")
        assert event().involved_object.kind == "ClusterImagePolicy"
        # The metric, the status count, the audit line.
        exposition = operator.metrics()
        assert (
            'imagegate_policy_decisions_total{action="denied",policy="chainguard-only"}'
            in exposition
        )
        wait_until(
            lambda: (
                policies.get(None, "chainguard-only").get("status", {}).get("denials", 0) > before
            ),
            "status.denials",
        )
        out = io.StringIO()
        trail.run(
            kubeconfig=cluster.kubeconfig,
            since="10m",
            namespace=team,
            policy="chainguard-only",
            output="table",
            reports=False,
            out=out,
        )
        assert "DENIED" in out.getvalue()
        assert "Pod/web[web]" in out.getvalue()
    finally:
        uninstalled = tools.helm("uninstall", release, "--namespace", namespace, "--wait")
        core.delete_namespace(team)
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert_gone(api, release)
    with pytest.raises(ApiException):
        policies.get(None, "chainguard-only")  # the preset went with the release


def _ready(policy: dict[str, Any]) -> bool:
    conditions = (policy.get("status") or {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ApiException:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def test_the_operator_runs_with_nothing_but_the_charts_rbac(
    tools: Tools,
    api: client.ApiClient,
    cluster: Cluster,
    namespace: str,
    image_policy: Any,
    tmp_path: Path,
) -> None:
    """Least privilege, proven: the operator runs as the chart's ServiceAccount (a token, no
    admin) in the default certificate mode, and every write it makes succeeds.

    No kubelet runs here, so the chart's Deployment never starts; the test runs the same
    `imagegate run` as a local process with that account's token.
    """
    release = f"imagegate-{namespace}"
    installed = tools.helm(
        "install", release, str(CHART), "--namespace", namespace, "--skip-crds", *SAFE
    )
    assert installed.returncode == 0, installed.stderr
    team = f"team-{namespace}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=team)))
    try:
        token = core.create_namespaced_service_account_token(
            release, namespace, client.AuthenticationV1TokenRequest(spec={"audiences": []})
        ).status.token
        kubeconfig = tmp_path / "sa.kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "c",
                            "cluster": {
                                "server": api.configuration.host,
                                "certificate-authority": api.configuration.ssl_ca_cert,
                            },
                        }
                    ],
                    "users": [{"name": "sa", "user": {"token": token}}],
                    "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
                    "current-context": "sa",
                }
            )
        )
        core.create_namespaced_pod(team, pod_body("old", "redis:7"))  # before any policy
        certificate_args = [
            "--tls-secret",
            f"{release}-tls",
            "--service-name",
            release,
            "--webhook-configuration",
            release,
            "--tls-dir",
            str(tmp_path / "tls"),
        ]
        with local.operator_process(
            kubeconfig,
            tmp_path / "operator",
            extra_args=["--policy-reports", "--log-format", "json"],
            certificate_args=certificate_args,
            env={"POD_NAMESPACE": namespace},
        ) as running:
            # Certificates: the Secret made, the CA patched into both configurations.
            secret = core.read_namespaced_secret(f"{release}-tls", namespace)
            ca = secret.data["ca.crt"]
            for configuration in webhook_configurations(api, release):
                assert configuration.webhooks[0].client_config.ca_bundle == ca
            # Policy status, Events, PolicyReports: all written with the account's rights.
            image_policy(team, "hardened", {"sources": [{"name": "cg", "images": ["cgr.dev/**"]}]})
            review = pod_review(team, "redis:8", name="new")
            context = ssl.create_default_context(cadata=base64.b64decode(ca).decode())
            # The certificate names the Service; reach it on loopback by that name's rules.
            context.check_hostname = False

            def denied() -> bool:
                return post_review(running.url + "/validate", review, context)["allowed"] is False

            # Ready may have been written by the session's operator first: wait for this one.
            wait_until(denied, "the new policy enforced by the chart's account")
            wait_until(
                lambda: any(
                    e.reason == "ImageDenied" for e in core.list_namespaced_event(team).items
                ),
                "Event written by the chart's account",
            )
            wait_until(
                lambda: bool(
                    client.CustomObjectsApi(api).get_namespaced_custom_object(
                        "wgpolicyk8s.io", "v1alpha2", team, "policyreports", "imagegate"
                    )["summary"]["fail"]
                ),
                "PolicyReport written by the chart's account",
            )
            log = running.process.log_path.read_text()
            assert "forbidden" not in log.lower(), log
    finally:
        tools.helm("uninstall", release, "--namespace", namespace, "--wait")
        core.delete_namespace(team)
