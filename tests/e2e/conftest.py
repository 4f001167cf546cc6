"""e2e fixtures: the CRDs installed, imagegate's operator running, webhooks registered."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from imagegate.cluster import kube, resources
from imagegate.testbed import build, images, local, processes
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries
from imagegate.testbed.registry import LocalRegistry
from netproxy import Shaping, TcpProxy, ThreadedProxy
from support import Cluster, push_random_image

#: Only namespaces with this label are sent to the webhooks: the tests never lock out anything else.
E2E_LABEL = "imagegate.dev/e2e"


@pytest.fixture(scope="session")
def api(cluster: Cluster) -> client.ApiClient:
    return kube.api_client(cluster.kubeconfig)


#: The optional PolicyReport CRD the chart ships (the background scan writes reports).
POLICY_REPORT_CRD = (
    Path(__file__).resolve().parents[2]
    / "charts"
    / "imagegate"
    / "extra-crds"
    / "wgpolicyk8s.io_policyreports.yaml"
)


@contextlib.contextmanager
def control_plane_of_own(builder: build.Builder, workdir: Path) -> Iterator[ControlPlane]:
    """etcd and kube-apiserver started in `workdir` for the caller alone, without imagegate's
    CRDs, stopped at the end."""
    plane = ControlPlane(ControlPlaneBinaries.resolve(builder), workdir)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def own_control_plane(builder: build.Builder, tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane of the test's own, without imagegate's CRDs: for tests that restart or
    break it, or need it bare."""
    with control_plane_of_own(builder, tmp_path / "plane") as plane:
        yield plane


def install_crds(api: client.ApiClient) -> None:
    """imagegate's CRDs and the PolicyReport CRD the scan writes."""
    local.install_crds(api, extra=[yaml.safe_load(POLICY_REPORT_CRD.read_text())])


@pytest.fixture(scope="session")
def crds(api: client.ApiClient) -> None:
    install_crds(api)


@pytest.fixture(scope="session")
def registry_proxy(registry: LocalRegistry) -> Iterator[TcpProxy]:
    """The local registry behind a proxy that sends its answers in small, paced writes.

    Session-wide because the operator must be told at start that its address is plain HTTP;
    only images named `<proxy address>/...` go through it (test_wire.py).
    """
    host, port = registry.address.rsplit(":", 1)
    with ThreadedProxy(host, int(port), down=Shaping(chunk=(1, 1400), pause=0.001)) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster,
    crds: None,
    registry: LocalRegistry,
    private_registry: LocalRegistry,
    registry_proxy: TcpProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[local.LocalOperator]:
    """`imagegate run` against the cluster, as a process (the test registries are plain HTTP)."""
    workdir = tmp_path_factory.mktemp("operator")
    with local.operator_process(
        cluster.kubeconfig,
        workdir,
        cluster.webhook_host,
        insecure_registries=[registry.address, private_registry.address, registry_proxy.address],
        extra_args=["--log-format=json", "--policy-reports"],
    ) as running:
        try:
            yield running
        finally:
            print(f"operator log:\n{processes.tail(running.process.log_path, 40)}")


@pytest.fixture(scope="session")
def webhooks(api: client.ApiClient, operator: local.LocalOperator) -> Iterator[None]:
    selector = {"matchLabels": {E2E_LABEL: "on"}}
    with local.registered_webhooks(api, operator, "imagegate-e2e", selector):
        yield


@contextlib.contextmanager
def fresh_namespace(
    api: client.ApiClient, prefix: str, labels: dict[str, str] | None = None
) -> Iterator[str]:
    """A namespace of its own for one test (`prefix-<random>`), deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels or {}))
    )
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace the webhooks do not see, deleted afterwards."""
    with fresh_namespace(api, "plain") as name:
        yield name


@pytest.fixture
def gated_namespace(api: client.ApiClient, webhooks: None) -> Iterator[str]:
    """A fresh namespace that the webhooks see."""
    with fresh_namespace(api, "gated", {E2E_LABEL: "on"}) as name:
        yield name


PolicyFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def image_policy(api: client.ApiClient) -> Iterator[PolicyFactory]:
    """Create an ImagePolicy (or ClusterImagePolicy) and wait until the operator reports Ready."""
    policies = resources.PolicyResources(api)
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
        policies.create(namespace, body)
        created.append((namespace, name))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = policies.get(namespace, name)
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
        try:
            policies.delete(namespace, name)
        except client.ApiException as error:
            if error.status != 404:  # a test may have deleted it itself
                raise


@dataclass(frozen=True)
class Hardened:
    """A hardened python stand-in in the local registry: a rewrite target `/mutate` can check
    (it rewrites only to a target the registry has: design.md §5.1)."""

    #: The policy source that trusts it, and the rule that rewrites `python` to it.
    source: dict[str, Any]
    rewrite: dict[str, Any]
    #: `registry/repository:latest`, and its digest.
    image: str
    digest: str


@pytest.fixture(scope="session")
def hardened_python(
    registry: LocalRegistry, crane: Path, tmp_path_factory: pytest.TempPathFactory
) -> Hardened:
    repository = f"{registry.address}/hardened/python"
    workdir = tmp_path_factory.mktemp("hardened")
    digest = push_random_image(crane, registry.address, "hardened/python", "latest", workdir)
    return Hardened(
        {"name": "hardened", "images": [f"{registry.address}/hardened/**"]},
        {"from": "docker.io/library/python", "to": repository},
        f"{repository}:latest",
        digest,
    )


# -- real upstream names through a mirror (design.md §8) -------------------------------------

#: Namespaces only the mirror tests' webhooks see (the session's own select imagegate.dev/e2e).
MIRRORS_LABEL = "imagegate.dev/e2e-mirrors"
#: Upstream names served by stand-ins in the local registry, under the mirror's prefix
#: (`images.stand_in_repository`).
STAND_INS = ("dhi.io/python:3.12", "cgr.dev/chainguard/python:latest")
#: The hosts whose hosts.toml may name the local registry as a mirror.
MIRRORED_HOSTS = ("dhi.io", "cgr.dev")
StandIns = images.StandIns


@pytest.fixture(scope="module")
def offline_upstream() -> Iterator[TcpProxy]:
    """A loopback port that refuses connections: the `server` of every upstream host."""
    threaded = ThreadedProxy("127.0.0.1", 9)
    with threaded as proxy:
        threaded.refuse()
        yield proxy


@pytest.fixture(scope="module")
def stand_ins(
    registry: LocalRegistry, crane: Path, cosign: Path, tmp_path_factory: pytest.TempPathFactory
) -> StandIns:
    """Each name's stand-in pushed under the mirror prefix and signed for its upstream name
    (cosign's docker-reference is the upstream's)."""
    workdir = tmp_path_factory.mktemp("stand-ins")
    return images.push_stand_ins(crane, cosign, registry.address, workdir, signed=STAND_INS)


def hosts_directory(
    directory: Path,
    upstream: TcpProxy,
    registry: LocalRegistry | None,
    offline: tuple[str, ...] = (),
) -> Path:
    """containerd's config_path: for MIRRORED_HOSTS the mirror entry when `registry` is given,
    for them and the `offline` hosts an unreachable server, so nothing leaves loopback."""
    server = f"http://{upstream.address}"
    for host in (*MIRRORED_HOSTS, *offline):
        text = f'server = "{server}"\n'
        if registry is not None and host in MIRRORED_HOSTS:
            text = images.mirror_hosts_toml(registry.url, host, server)
        (directory / host).mkdir(parents=True)
        (directory / host / "hosts.toml").write_text(text)
    return directory


@contextlib.contextmanager
def mirrors_operator(
    api: client.ApiClient, cluster: Cluster, directory: Path, workdir: Path, which: str
) -> Iterator[None]:
    """An operator started with `--registry-mirrors directory`, with webhooks that see only the
    namespaces labelled MIRRORS_LABEL=`which`."""
    with local.operator_process(
        cluster.kubeconfig,
        workdir,
        cluster.webhook_host,
        extra_args=["--log-format=json", f"--registry-mirrors={directory}"],
    ) as running:
        try:
            selector = {"matchLabels": {MIRRORS_LABEL: which}}
            name = f"imagegate-e2e-mirrors-{which}"
            with local.registered_webhooks(api, running, name, selector, policies=False):
                yield
        finally:
            print(f"operator log:\n{processes.tail(running.process.log_path, 40)}")
