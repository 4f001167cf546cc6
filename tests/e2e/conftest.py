"""e2e fixtures: the CRDs installed, imagegate's operator running, webhooks registered."""

from __future__ import annotations

import os
import ssl
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from imagegate import kube, tls
from imagegate.policy import crd
from imagegate.testbed import processes
from support import Cluster

#: Only namespaces with this label are sent to the webhooks: the tests never lock out anything else.
E2E_LABEL = "imagegate.dev/e2e"
WORKLOAD_RESOURCES = {
    "": ["pods", "pods/ephemeralcontainers", "replicationcontrollers"],
    "apps": ["deployments", "statefulsets", "daemonsets", "replicasets"],
    "batch": ["jobs", "cronjobs"],
}


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> client.ApiClient:
    return kube.api_client(cluster.kubeconfig)


@pytest.fixture(scope="session")
def crds(api: client.ApiClient) -> None:
    extensions = client.ApiextensionsV1Api(api)
    for document in crd.crds():
        try:
            extensions.create_custom_resource_definition(document)
        except ApiException as error:
            if error.status != 409:
                raise
    names = [document["metadata"]["name"] for document in crd.crds()]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [extensions.read_custom_resource_definition(name) for name in names]
        if all(
            any(c.type == "Established" and c.status == "True" for c in d.status.conditions or [])
            for d in found
        ):
            return
        time.sleep(0.1)
    pytest.fail("the CRDs were not established within 30s")


@pytest.fixture(scope="session")
def operator_url(
    cluster: Cluster, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """Run `imagegate run` against the cluster; yield (base URL, caBundle PEM)."""
    workdir = tmp_path_factory.mktemp("operator")
    ca = tls.CertificateAuthority.create("imagegate-e2e-ca")
    host = cluster.webhook_host
    is_ip = host.replace(".", "").isdigit()
    pair = ca.issue(
        "imagegate", ip_addresses=[host] if is_ip else [], dns_names=[] if is_ip else [host]
    )
    (workdir / "tls.crt").write_bytes(pair.cert_pem)
    (workdir / "tls.key").write_bytes(pair.key_pem)
    port = processes.free_port()
    log = workdir / "operator.log"
    process = processes.ManagedProcess(
        "imagegate operator",
        [
            sys.executable,
            "-m",
            "imagegate",
            "run",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--tls-cert",
            str(workdir / "tls.crt"),
            "--tls-key",
            str(workdir / "tls.key"),
            "--host",
            "127.0.0.1" if host == "127.0.0.1" else "0.0.0.0",
            "--port",
            str(port),
        ],
        log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    process.start()
    url = f"https://{host}:{port}"
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())

    def healthy() -> bool:
        with urllib.request.urlopen(url + "/healthz", context=context, timeout=2) as reply:
            return int(reply.status) == 200

    try:
        process.wait_until(healthy, timeout=60, what="serving /healthz")
        yield url, ca.cert_pem.decode()
    finally:
        process.stop()
        print(f"operator log: {log}\n{processes.tail(log, 40)}")


@pytest.fixture(scope="session")
def webhooks(api: client.ApiClient, operator_url: tuple[str, str]) -> Iterator[None]:
    import base64

    url, ca_pem = operator_url
    ca_bundle = base64.b64encode(ca_pem.encode()).decode()
    rules = [
        client.V1RuleWithOperations(
            api_groups=[group],
            api_versions=["v1"],
            operations=["CREATE", "UPDATE"],
            resources=resources,
        )
        for group, resources in WORKLOAD_RESOURCES.items()
    ]
    selector = client.V1LabelSelector(match_labels={E2E_LABEL: "on"})
    admission = client.AdmissionregistrationV1Api(api)
    name = "imagegate-e2e"
    admission.create_mutating_webhook_configuration(
        client.V1MutatingWebhookConfiguration(
            metadata=client.V1ObjectMeta(name=name),
            webhooks=[
                client.V1MutatingWebhook(
                    name="mutate.imagegate.dev",
                    client_config=client.AdmissionregistrationV1WebhookClientConfig(
                        url=url + "/mutate", ca_bundle=ca_bundle
                    ),
                    rules=rules,
                    namespace_selector=selector,
                    failure_policy="Fail",
                    side_effects="None",
                    admission_review_versions=["v1"],
                    timeout_seconds=10,
                    reinvocation_policy="IfNeeded",
                )
            ],
        )
    )
    admission.create_validating_webhook_configuration(
        client.V1ValidatingWebhookConfiguration(
            metadata=client.V1ObjectMeta(name=name),
            webhooks=[
                client.V1ValidatingWebhook(
                    name="validate.imagegate.dev",
                    client_config=client.AdmissionregistrationV1WebhookClientConfig(
                        url=url + "/validate", ca_bundle=ca_bundle
                    ),
                    rules=rules,
                    namespace_selector=selector,
                    failure_policy="Fail",
                    side_effects="None",
                    admission_review_versions=["v1"],
                    timeout_seconds=10,
                )
            ],
        )
    )
    try:
        yield
    finally:
        admission.delete_mutating_webhook_configuration(name)
        admission.delete_validating_webhook_configuration(name)


@pytest.fixture
def gated_namespace(api: client.ApiClient, webhooks: None) -> Iterator[str]:
    """A fresh namespace that the webhooks see."""
    name = f"gated-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={E2E_LABEL: "on"}))
    )
    yield name
    core.delete_namespace(name)


PolicyFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def image_policy(api: client.ApiClient) -> Iterator[PolicyFactory]:
    """Create an ImagePolicy (or ClusterImagePolicy) and wait until the operator reports Ready."""
    objects = client.CustomObjectsApi(api)
    created: list[tuple[str | None, str]] = []

    def make(
        namespace: str | None, name: str, spec: dict[str, Any], ready: str = "True"
    ) -> dict[str, Any]:
        kind = "ImagePolicy" if namespace else "ClusterImagePolicy"
        body = {
            "apiVersion": "imagegate.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        if namespace:
            objects.create_namespaced_custom_object(
                "imagegate.dev", "v1alpha1", namespace, "imagepolicies", body
            )
        else:
            objects.create_cluster_custom_object(
                "imagegate.dev", "v1alpha1", "clusterimagepolicies", body
            )
        created.append((namespace, name))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = (
                objects.get_namespaced_custom_object(
                    "imagegate.dev", "v1alpha1", namespace, "imagepolicies", name
                )
                if namespace
                else objects.get_cluster_custom_object(
                    "imagegate.dev", "v1alpha1", "clusterimagepolicies", name
                )
            )
            status = current.get("status") or {}
            conditions = {c["type"]: c for c in status.get("conditions", [])}
            if (
                status.get("observedGeneration") == current["metadata"]["generation"]
                and conditions.get("Ready", {}).get("status") == ready
            ):
                return dict(current)
            time.sleep(0.1)
        pytest.fail(f"policy {name} did not become Ready={ready} within 30s")

    yield make
    for namespace, name in created:
        if namespace:
            objects.delete_namespaced_custom_object(
                "imagegate.dev", "v1alpha1", namespace, "imagepolicies", name
            )
        else:
            objects.delete_cluster_custom_object(
                "imagegate.dev", "v1alpha1", "clusterimagepolicies", name
            )
