"""The rewrite presets with the real hardened names (issue 12's "Done when"): a Deployment of
`python:3.12-slim` is stored as written (mutation scope Pods) and the Pod made from it runs
`dhi.io/python:3.12@sha256:…` under policies/rewrite-to-dhi.yaml, or
`cgr.dev/chainguard/python:latest@sha256:…` under policies/rewrite-to-chainguard.yaml.

The names are served through a mirror (design.md §8) by the local registry, as stand-ins signed
by the real cosign (conftest.STAND_INS); every upstream, docker.io included, is a loopback port
that refuses connections. The presets are applied as they ship, as ImagePolicies, except that
Chainguard's keyless identity is replaced by the stand-ins' key (no test can sign as Chainguard);
the DHI preset's keyring Secret holds the stand-ins' key beside another one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from imagegate.testbed.registry import LocalRegistry
from netproxy import TcpProxy
from support import Cluster, cosign_key_pair

from .conftest import (
    MIRRORS_LABEL,
    PolicyFactory,
    StandIns,
    fresh_namespace,
    hosts_directory,
    mirrors_operator,
)
from .test_admission import kubectl, pod_body, workload
from .test_mutation_scope import pod_of, replica_set_of
from .test_rewrite_targets import create_pod

pytestmark = [pytest.mark.controlplane, pytest.mark.registry, pytest.mark.cosign]

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL = "python:3.12-slim"
#: The label value this module's webhooks select.
WHICH = "hardened-names"


def preset_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "policies" / f"{name}.yaml").read_text())["spec"]
    return spec


@pytest.fixture(scope="module")
def mirrored(
    api: client.ApiClient,
    cluster: Cluster,
    crds: None,
    registry: LocalRegistry,
    offline_upstream: TcpProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """An operator reading dhi.io and cgr.dev through the local registry (docker.io: nowhere)."""
    workdir = tmp_path_factory.mktemp("operator-hardened")
    directory = hosts_directory(
        workdir / "certs.d", offline_upstream, registry, offline=("docker.io",)
    )
    with mirrors_operator(api, cluster, directory, workdir, WHICH):
        yield


@pytest.fixture
def hardened_namespace(api: client.ApiClient, mirrored: None) -> Iterator[str]:
    with fresh_namespace(api, "hardened", {MIRRORS_LABEL: WHICH}) as namespace:
        yield namespace


@pytest.fixture
def other_key(cosign: Path, tmp_path: Path) -> str:
    """A cosign public key that signed nothing."""
    cosign_key_pair(cosign, tmp_path)
    return (tmp_path / "cosign.pub").read_text()


def create_keyring(api: client.ApiClient, namespace: str, *keys: str) -> None:
    """The DHI presets' Secret `dhi-keyring`, holding key-1.pub and key-2.pub."""
    data = {"key-1.pub": keys[0], "key-2.pub": keys[1]}
    body = {"metadata": {"name": "dhi-keyring"}, "stringData": data}
    client.CoreV1Api(api).create_namespaced_secret(namespace, body)


def chainguard_preset(public_key: str) -> dict[str, Any]:
    """rewrite-to-chainguard as shipped, trusting the stand-ins' key instead of the keyless
    identity."""
    spec = preset_spec("rewrite-to-chainguard")
    (source,) = spec["sources"]
    source["signatures"] = {"keys": [{"publicKey": public_key}], "requireTransparencyLog": False}
    return spec


def run_deployment(
    api: client.ApiClient, cluster: Cluster, namespace: str, tmp_path: Path
) -> tuple[str, Any]:
    """Create the Deployment of ORIGINAL with kubectl, check it is stored as written, and make
    its Pod as the controllers would; (kubectl's stderr, the Pod as stored)."""
    _, body = workload("Deployment", ORIGINAL)
    manifest = tmp_path / "deployment.json"
    manifest.write_text(json.dumps(body))
    created = kubectl(cluster, "-n", namespace, "create", "-f", str(manifest))
    assert created.returncode == 0, created.stderr
    apps = client.AppsV1Api(api)
    deployment = apps.read_namespaced_deployment("w", namespace)
    assert deployment.spec.template.spec.containers[0].image == ORIGINAL  # no GitOps drift
    replica_set = apps.create_namespaced_replica_set(namespace, replica_set_of(api, deployment))
    pod = client.CoreV1Api(api).create_namespaced_pod(namespace, pod_of(api, replica_set))
    return created.stderr, pod


def test_under_the_dhi_preset_the_pod_runs_dhi_python_3_12_pinned_and_verified(
    api: client.ApiClient,
    cluster: Cluster,
    hardened_namespace: str,
    image_policy: PolicyFactory,
    stand_ins: StandIns,
    other_key: str,
    tmp_path: Path,
) -> None:
    # Any key of the keyring may sign: the stand-ins' is the second.
    create_keyring(api, hardened_namespace, other_key, stand_ins.public_key)
    image_policy(hardened_namespace, "rewrite-to-dhi", preset_spec("rewrite-to-dhi"))
    warnings, pod = run_deployment(api, cluster, hardened_namespace, tmp_path)
    assert (
        f"Warning: imagegate: Pods of Deployment/w will run dhi.io/python:3.12 instead of "
        f"{ORIGINAL} (policy {hardened_namespace}/rewrite-to-dhi, mutation scope Pods)"
    ) in warnings
    # The stand-in's digest: resolved through the mirror, verified with the keyring's 2nd key.
    assert (
        pod.spec.containers[0].image
        == f"dhi.io/python:3.12@{stand_ins.digests['dhi.io/python:3.12']}"
    )
    originals = json.loads(pod.metadata.annotations["imagegate.dev/original-images"])
    assert originals == {"containers/app": ORIGINAL}


def test_under_the_chainguard_preset_the_pod_runs_latest_and_the_warning_names_3_12_slim(
    api: client.ApiClient,
    cluster: Cluster,
    hardened_namespace: str,
    image_policy: PolicyFactory,
    stand_ins: StandIns,
    tmp_path: Path,
) -> None:
    spec = chainguard_preset(stand_ins.public_key)
    image_policy(hardened_namespace, "rewrite-to-chainguard", spec)
    target = "cgr.dev/chainguard/python:latest"
    warnings, pod = run_deployment(api, cluster, hardened_namespace, tmp_path)
    assert (
        f"Warning: imagegate: Pods of Deployment/w will run {target} instead of {ORIGINAL} "
        f"(policy {hardened_namespace}/rewrite-to-chainguard, mutation scope Pods, dropping "
        "version 3.12-slim, as the target serves only latest)"
    ) in warnings
    assert pod.spec.containers[0].image == f"{target}@{stand_ins.digests[target]}"
    # A Pod of its own says the same when it is rewritten.
    pod_warnings = create_pod(api, hardened_namespace, pod_body("p", ORIGINAL))
    assert any(
        f"rewrote {ORIGINAL} to {target}, dropping version 3.12-slim" in w for w in pod_warnings
    ), pod_warnings


def test_a_missing_dhi_target_is_not_rewritten_and_the_warning_says_why(
    api: client.ApiClient,
    cluster: Cluster,
    hardened_namespace: str,
    image_policy: PolicyFactory,
    stand_ins: StandIns,
    other_key: str,
    tmp_path: Path,
) -> None:
    create_keyring(api, hardened_namespace, other_key, stand_ins.public_key)
    image_policy(hardened_namespace, "rewrite-to-dhi", preset_spec("rewrite-to-dhi"))
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps(pod_body("p", "node:20")))  # no dhi.io/node stand-in
    created = kubectl(cluster, "-n", hardened_namespace, "create", "-f", str(manifest))
    assert created.returncode != 0  # left as written: the preset trusts dhi.io only
    assert (
        "Warning: imagegate: not rewriting node:20 to dhi.io/node:20: not found in its "
        "registry; validation decides"
    ) in created.stderr
    assert "docker.io/library/node is not from a source this policy trusts" in created.stderr


def test_a_dhi_target_signed_by_no_key_of_the_keyring_is_not_run(
    api: client.ApiClient,
    cluster: Cluster,
    hardened_namespace: str,
    image_policy: PolicyFactory,
    other_key: str,
    tmp_path: Path,
) -> None:
    """The preset verifies what it rewrites to: with the stand-ins' key out of the keyring, the
    Pod of the Deployment is not rewritten (and the Deployment, judged as its Pods would run,
    is denied naming both keys)."""
    create_keyring(api, hardened_namespace, other_key, other_key)
    image_policy(hardened_namespace, "rewrite-to-dhi", preset_spec("rewrite-to-dhi"))
    _, body = workload("Deployment", ORIGINAL)
    manifest = tmp_path / "deployment.json"
    manifest.write_text(json.dumps(body))
    created = kubectl(cluster, "-n", hardened_namespace, "create", "-f", str(manifest))
    assert created.returncode != 0
    both = "keys[0]: signature does not verify with the key; keys[1]: signature does not verify"
    assert "signature verification failed for source dhi: sha256:" in created.stderr
    assert both in created.stderr
    manifest.write_text(json.dumps(pod_body("p", ORIGINAL)))
    created = kubectl(cluster, "-n", hardened_namespace, "create", "-f", str(manifest))
    assert created.returncode != 0
    (warning,) = [line for line in created.stderr.splitlines() if "not rewriting" in line]
    assert warning.startswith(
        f"Warning: imagegate: not rewriting {ORIGINAL} to dhi.io/python:3.12: signature not "
        f"verified by policy {hardened_namespace}/rewrite-to-dhi, source dhi: "
    )
    # The API server cuts a warning past 256 characters: the first key's reason is what is sure.
    assert "keys[0]: signature does not verify with the key" in warning
