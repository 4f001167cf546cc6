"""A policy the operator cannot compile: refused at apply time, and fail closed when it slips by."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from imagegate.cluster import resources
from imagegate.policy import model
from imagegate.testbed import local, processes
from support import Cluster, pod_review, post_review

from .conftest import E2E_LABEL, PolicyFactory
from .test_admission import CHAINGUARD, kubectl, pod_body

pytestmark = pytest.mark.controlplane

MINER = "ghcr.io/evil/miner:1"
#: The configuration the `webhooks` fixture registers.
CONFIGURATION = "imagegate-e2e"
SCOPE_LABEL = "imagegate.dev/e2e-scope"
BAD_REGEXP = "'([a-z' is not a valid regular expression"
BAD_FIELD = "spec.sources[0].signatures.keyless[0].subjectRegExp"


def invalid_spec(scope: str) -> dict[str, Any]:
    source = {
        "name": "signed",
        "images": ["ghcr.io/good/**"],
        "signatures": {"keyless": [{"issuer": "https://i", "subjectRegExp": "([a-z"}]},
    }
    return {"namespaceSelector": {"matchLabels": {SCOPE_LABEL: scope}}, "sources": [source]}


def cluster_policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": model.API_VERSION,
        "kind": model.CLUSTER_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture
def scoped_namespaces(api: client.ApiClient, webhooks: None) -> Iterator[tuple[str, str]]:
    """(in scope, out of scope): two namespaces the webhooks see; only the first has the label
    the test's policies select, with its own name as value."""
    core = client.CoreV1Api(api)
    names = [f"scope-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"]
    for name, scoped in zip(names, (True, False), strict=True):
        labels = {E2E_LABEL: "on", **({SCOPE_LABEL: name} if scoped else {})}
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
        )
    yield names[0], names[1]
    for name in names:
        core.delete_namespace(name)


def _dry_run_accepted(api: client.ApiClient) -> bool:
    """Whether the API server lets an invalid policy through (the policy webhook not called)."""
    body = cluster_policy(f"probe-{uuid.uuid4().hex[:6]}", invalid_spec("nobody"))
    try:
        client.CustomObjectsApi(api).create_cluster_custom_object(
            model.GROUP, model.VERSION, resources.CLUSTER_PLURAL, body, dry_run="All"
        )
    except ApiException as error:
        if "validate-policy.imagegate.dev" not in error.body:
            raise  # refused for another reason: the probe itself is wrong
        return False
    return True


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f}s")
        time.sleep(0.2)


@contextlib.contextmanager
def policy_webhook_bypassed(api: client.ApiClient) -> Iterator[None]:
    """The policy webhook taken out of the configuration (as if imagegate were down when a
    policy was applied), and put back afterwards."""
    admission = client.AdmissionregistrationV1Api(api)
    found = admission.read_validating_webhook_configuration(CONFIGURATION)
    original = list(found.webhooks)
    found.webhooks = [w for w in original if w.name != "validate-policy.imagegate.dev"]
    assert len(found.webhooks) == len(original) - 1
    admission.replace_validating_webhook_configuration(CONFIGURATION, found)
    try:
        _wait_for(lambda: _dry_run_accepted(api), "the policy webhook was not bypassed")
        yield
    finally:
        found = admission.read_validating_webhook_configuration(CONFIGURATION)
        found.webhooks = original
        admission.replace_validating_webhook_configuration(CONFIGURATION, found)
        _wait_for(lambda: not _dry_run_accepted(api), "the policy webhook did not come back")


def ready_condition(api: client.ApiClient, name: str) -> dict[str, Any]:
    current = resources.PolicyResources(api).get(None, name)
    conditions = {c["type"]: c for c in (current.get("status") or {}).get("conditions", [])}
    return dict(conditions.get("Ready", {}))


def test_an_invalid_policy_is_refused_at_apply_time_naming_the_field(
    cluster: Cluster, api: client.ApiClient, webhooks: None, tmp_path: Path
) -> None:
    name = f"strict-{uuid.uuid4().hex[:6]}"
    policies = resources.PolicyResources(api)
    with pytest.raises(ApiException) as refused:
        policies.create(None, cluster_policy(name, invalid_spec("anyone")))
    assert refused.value.status == 422
    message = json.loads(refused.value.body)["message"]
    assert message.startswith(
        'admission webhook "validate-policy.imagegate.dev" denied the request: imagegate: '
        f"ClusterImagePolicy {name}: {BAD_FIELD}: {BAD_REGEXP}"
    )
    if cluster.control_plane is not None and cluster.control_plane.binaries.kubectl is not None:
        manifest = tmp_path / "policy.yaml"
        manifest.write_text(yaml.safe_dump(cluster_policy(name, invalid_spec("anyone"))))
        applied = kubectl(cluster, "apply", "-f", str(manifest))
        assert applied.returncode != 0
        assert 'webhook "validate-policy.imagegate.dev" denied the request' in applied.stderr
        assert f"{BAD_FIELD}: {BAD_REGEXP}" in applied.stderr
    with pytest.raises(ApiException) as missing:
        policies.get(None, name)
    assert missing.value.status == 404
    # A valid policy goes through the same webhook.
    policies.create(None, cluster_policy(name, {**invalid_spec("anyone"), "sources": [CHAINGUARD]}))
    policies.delete(None, name)


def test_a_new_invalid_policy_that_slips_past_denies_in_its_scope_only(
    api: client.ApiClient, scoped_namespaces: tuple[str, str], image_policy: PolicyFactory
) -> None:
    scoped, other = scoped_namespaces
    name = f"invalid-{scoped}"
    with policy_webhook_bypassed(api):
        current = image_policy(None, name, invalid_spec(scoped), ready="False")
    (ready,) = current["status"]["conditions"]
    assert ready["reason"] == "InvalidDenying"
    assert f"{BAD_FIELD}: {BAD_REGEXP}" in ready["message"]
    assert "every image in this policy's scope is denied" in ready["message"]

    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as denied:
        core.create_namespaced_pod(scoped, pod_body("miner", MINER))
    message = json.loads(denied.value.body)["message"]
    assert f"image {MINER!r} denied by policy {name}: policy {name} cannot be compiled: " in message
    assert BAD_REGEXP in message
    assert f"fix it (kubectl describe cip {name})" in message
    core.create_namespaced_pod(other, pod_body("miner", MINER))  # outside its namespaceSelector


def test_a_replica_started_while_an_edit_is_invalid_denies_in_scope(
    cluster: Cluster,
    api: client.ApiClient,
    scoped_namespaces: tuple[str, str],
    image_policy: PolicyFactory,
    tmp_path: Path,
) -> None:
    scoped, other = scoped_namespaces
    name = f"edited-{scoped}"
    image_policy(
        None,
        name,
        {"namespaceSelector": {"matchLabels": {SCOPE_LABEL: scoped}}, "sources": [CHAINGUARD]},
    )
    custom = client.CustomObjectsApi(api)
    with policy_webhook_bypassed(api):
        custom.patch_cluster_custom_object(
            model.GROUP,
            model.VERSION,
            resources.CLUSTER_PLURAL,
            name,
            {"spec": invalid_spec(scoped)},
        )
    _wait_for(
        lambda: ready_condition(api, name).get("reason") == "InvalidKeptPrevious",
        "the running operator did not keep the previous version",
    )
    with local.operator_process(cluster.kubeconfig, tmp_path / "second") as second:
        try:
            context = second.ssl_context()
            answer = post_review(second.url + "/validate", pod_review(scoped, MINER), context)
            assert answer["allowed"] is False
            assert f"policy {name} cannot be compiled: " in answer["status"]["message"]
            assert BAD_REGEXP in answer["status"]["message"]
            outside = post_review(second.url + "/validate", pod_review(other, MINER), context)
            assert outside["allowed"] is True
            # The stricter report stands: the first replica does not write its view back over it.
            _wait_for(
                lambda: ready_condition(api, name).get("reason") == "InvalidDenying",
                "the new replica did not report InvalidDenying",
            )
            time.sleep(2)
            assert ready_condition(api, name)["reason"] == "InvalidDenying"
        finally:
            print(f"second operator log:\n{processes.tail(second.process.log_path, 40)}")
