"""Registry credentials end to end: a private registry read with the kubelet's own credentials.

The registry answers 401 without HTTP Basic auth (`private_registry`). imagegate must read the
image and its signature with the Pod's imagePullSecrets, its ServiceAccount's, or the Secrets a
policy names, and deny, saying so, when it has none.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import PRIVATE_REGISTRY_USER
from imagegate.testbed import local
from imagegate.testbed.registry import LocalRegistry
from support import cosign_key_pair, cosign_sign, docker_config_json, push_random_image

from .conftest import PolicyFactory
from .test_admission import pod_body

pytestmark = pytest.mark.controlplane


@pytest.fixture
def signed_private_image(
    private_registry: LocalRegistry, crane: Path, cosign: Path, tmp_path: Path
) -> tuple[str, str, str]:
    """(image, digest, public key PEM) of a key-signed image in the private registry."""
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(
        docker_config_json(private_registry.address, *PRIVATE_REGISTRY_USER)
    )
    # A repository per test: the operator caches tag → digest for a while (pinning.TAG_TTL).
    repository = f"private/{uuid.uuid4().hex[:8]}"
    digest = push_random_image(
        crane, private_registry.address, repository, "v1", tmp_path, docker_config=config
    )
    cosign_key_pair(cosign, tmp_path)
    image = f"{private_registry.address}/{repository}"
    cosign_sign(cosign, tmp_path / "cosign.key", f"{image}@{digest}", docker_config=config)
    return f"{image}:v1", digest, (tmp_path / "cosign.pub").read_text()


def signed_only(image: str, public_key: str, **extra: Any) -> dict[str, Any]:
    return {
        "sources": [
            {
                "name": "private",
                "images": [image.rsplit(":", 1)[0]],
                "signatures": {
                    "keys": [{"publicKey": public_key}],
                    "requireTransparencyLog": False,
                },
            }
        ],
        **extra,
    }


def pull_secret(core: client.CoreV1Api, namespace: str, name: str, registry: str) -> None:
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            type="kubernetes.io/dockerconfigjson",
            string_data={".dockerconfigjson": docker_config_json(registry, *PRIVATE_REGISTRY_USER)},
        ),
    )


def test_without_credentials_the_denial_says_the_registry_wants_them(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    signed_private_image: tuple[str, str, str],
) -> None:
    image, _, public_key = signed_private_image
    image_policy(gated_namespace, "private", signed_only(image, public_key))
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(api).create_namespaced_pod(gated_namespace, pod_body("p", image))
    message = json.loads(denied.value.body)["message"]
    assert "wants credentials and imagegate has none" in message
    assert "imagePullSecret" in message


def test_the_pods_image_pull_secrets_are_used(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    signed_private_image: tuple[str, str, str],
    private_registry: LocalRegistry,
) -> None:
    image, digest, public_key = signed_private_image
    image_policy(gated_namespace, "private", signed_only(image, public_key))
    core = client.CoreV1Api(api)
    pull_secret(core, gated_namespace, "regcred", private_registry.address)
    body = pod_body("p", image)
    body["spec"]["imagePullSecrets"] = [{"name": "missing"}, {"name": "regcred"}]
    core.create_namespaced_pod(gated_namespace, body)
    # Pinned: the tag was resolved with the same credentials.
    assert core.read_namespaced_pod("p", gated_namespace).spec.containers[0].image == (
        f"{image}@{digest}"
    )


def test_the_service_accounts_image_pull_secrets_are_used_for_a_deployment(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    signed_private_image: tuple[str, str, str],
    private_registry: LocalRegistry,
) -> None:
    """A Deployment names only its ServiceAccount; the account holds the pull secret."""
    image, digest, public_key = signed_private_image
    # Scope All: the Deployment itself is pinned, with its ServiceAccount's credentials.
    image_policy(
        gated_namespace, "private", signed_only(image, public_key, mutation={"scope": "All"})
    )
    core = client.CoreV1Api(api)
    pull_secret(core, gated_namespace, "builder-pull", private_registry.address)
    core.create_namespaced_service_account(
        gated_namespace,
        client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(name="builder"),
            image_pull_secrets=[client.V1LocalObjectReference(name="builder-pull")],
        ),
    )
    labels = {"app": "p"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "p"},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": "builder",
                    "containers": [{"name": "app", "image": image}],
                },
            },
        },
    }
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(gated_namespace, deployment)
    stored = apps.read_namespaced_deployment("p", gated_namespace)
    assert stored.spec.template.spec.containers[0].image == f"{image}@{digest}"


def test_a_policy_can_name_its_own_pull_secret(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    signed_private_image: tuple[str, str, str],
    private_registry: LocalRegistry,
) -> None:
    """The admin's Secret, in the policy's namespace: workloads need no credentials of theirs
    for imagegate to verify (the kubelet still needs them to pull)."""
    image, _, public_key = signed_private_image
    core = client.CoreV1Api(api)
    pull_secret(core, gated_namespace, "imagegate-reader", private_registry.address)
    image_policy(
        gated_namespace,
        "private",
        signed_only(image, public_key, pullSecrets=[{"name": "imagegate-reader"}]),
    )
    core.create_namespaced_pod(gated_namespace, pod_body("p", image))


def test_no_password_or_token_reaches_the_operator_log(
    api: client.ApiClient,
    gated_namespace: str,
    image_policy: PolicyFactory,
    signed_private_image: tuple[str, str, str],
    private_registry: LocalRegistry,
    operator: local.LocalOperator,
) -> None:
    """The credentials imagegate used, in any form it holds them, never appear in its log: the
    password, the Basic header value, and the docker config's `auth` (both base64)."""
    image, _, public_key = signed_private_image
    image_policy(gated_namespace, "private", signed_only(image, public_key))
    core = client.CoreV1Api(api)
    pull_secret(core, gated_namespace, "regcred", private_registry.address)
    body = pod_body("logged", image)
    body["spec"]["imagePullSecrets"] = [{"name": "regcred"}]
    core.create_namespaced_pod(gated_namespace, body)
    # Plain admits are sampled in the log (--log-admits); a denial is always logged.
    with pytest.raises(ApiException):
        core.create_namespaced_pod(gated_namespace, pod_body("refused", "evil.example/x:1"))
    user, password = PRIVATE_REGISTRY_USER
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    log = operator.process.log_path.read_text()
    # The log covers this namespace's admissions (decision lines name the object): the right one.
    assert f"{gated_namespace}/Pod/refused" in log
    for secret in (password, basic):
        assert secret not in log
