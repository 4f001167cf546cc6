"""Session fixtures shared by every tier: the real test bed and the shared fixtures folder.

The bed is built from Go modules on first use (`imagegate testbed build`, which the test command
runs before pytest so its progress is visible). Set IMAGEGATE_E2E_USE_EXISTING_CLUSTER=true to run
the e2e tier against the cluster in $KUBECONFIG (kind on a laptop) instead of the local one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegate.testbed import build
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries
from imagegate.testbed.registry import LocalRegistry
from support import Cluster, Helm

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """../shared/fixtures: real material from other projects' test suites (never copied here)."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_FIXTURES} (they live beside the repo)")
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def builder() -> build.Builder:
    return build.Builder()


@pytest.fixture(scope="session")
def cluster(builder: build.Builder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.environ.get("IMAGEGATE_E2E_USE_EXISTING_CLUSTER", "").lower() in {"1", "true", "yes"}:
        kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
        host = os.environ.get("IMAGEGATE_E2E_WEBHOOK_HOST")
        if not host:
            pytest.fail(
                "IMAGEGATE_E2E_USE_EXISTING_CLUSTER needs IMAGEGATE_E2E_WEBHOOK_HOST: an address "
                "of this machine that the cluster's API server can reach (for kind: the docker "
                "network gateway, e.g. 172.18.0.1)"
            )
        yield Cluster(Path(kubeconfig), host, None)
        return
    plane = ControlPlane(
        ControlPlaneBinaries.resolve(builder), tmp_path_factory.mktemp("controlplane")
    )
    plane.start()
    try:
        yield Cluster(plane.kubeconfig, "127.0.0.1", plane)
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def registry(
    builder: build.Builder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRegistry]:
    local = LocalRegistry(builder.ensure(build.REGISTRY), tmp_path_factory.mktemp("registry"))
    local.start()
    try:
        yield local
    finally:
        local.stop()


#: The credentials of `private_registry`.
PRIVATE_REGISTRY_USER = ("puller", "s3cret-pull")


@pytest.fixture(scope="session")
def private_registry(
    builder: build.Builder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRegistry]:
    """A second local registry that answers 401 without HTTP Basic credentials."""
    local = LocalRegistry(
        builder.ensure(build.REGISTRY),
        tmp_path_factory.mktemp("private-registry"),
        extra_args=("-basic-auth", ":".join(PRIVATE_REGISTRY_USER)),
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def cosign(builder: build.Builder) -> Path:
    return builder.ensure(build.COSIGN)


@pytest.fixture(scope="session")
def crane(builder: build.Builder) -> Path:
    return builder.ensure(build.CRANE)


@pytest.fixture(scope="session")
def helm(builder: build.Builder, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The real helm, built by the test bed, with its state in a temporary folder."""
    return Helm(builder.ensure(build.HELM), tmp_path_factory.mktemp("helm-home"))
