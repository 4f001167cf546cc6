"""`imagegate migrate --verify` against the real local registries: a target tag that exists is
reported with its digest, a missing one as missing, and `docker login` credentials are used."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from conftest import PRIVATE_REGISTRY_USER
from imagegate.commands.cli import main
from imagegate.testbed.registry import LocalRegistry
from support import push_random_image

MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      containers:
        - {name: app, image: "python:3.12"}
        - {name: old, image: "python:3.11"}
"""


def policy_to(registry: str) -> str:
    return f"""
apiVersion: imagegate.dev/v1alpha1
kind: ClusterImagePolicy
metadata: {{name: to-local}}
spec:
  rewrites:
    - {{from: docker.io/library/python, to: {registry}/hardened/python, tag: keep}}
"""


def verified(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, dict[str, object]]:
    assert main(["migrate", "--verify", "-o", "json", *argv]) == 0
    document = json.loads(capsys.readouterr().out)
    return {
        image["image"]: image["verified"]
        for workload in document["workloads"]
        for image in workload["images"]
    }


@pytest.mark.parametrize("private", [False, True], ids=["anonymous", "docker-login"])
def test_verify_reports_which_targets_exist(
    private: bool,
    registry: LocalRegistry,
    private_registry: LocalRegistry,
    crane: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served = private_registry if private else registry
    docker = tmp_path / "docker"
    docker.mkdir()
    auth = base64.b64encode(":".join(PRIVATE_REGISTRY_USER).encode()).decode()
    (docker / "config.json").write_text(
        json.dumps({"auths": {private_registry.address: {"auth": auth}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    digest = push_random_image(
        crane,
        served.address,
        "hardened/python",
        "3.12",
        tmp_path,
        docker_config=docker if private else None,
    )
    (tmp_path / "policy.yaml").write_text(policy_to(served.address))
    (tmp_path / "web.yaml").write_text(MANIFEST)

    found = verified(
        capsys,
        "-p",
        str(tmp_path / "policy.yaml"),
        "--insecure-registry",
        served.address,
        str(tmp_path / "web.yaml"),
    )
    assert found["python:3.12"] == {"exists": True, "digest": digest, "detail": ""}
    assert found["python:3.11"]["exists"] is False


def test_an_unreachable_registry_is_not_checked_rather_than_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # no config.json: anonymous
    (tmp_path / "policy.yaml").write_text(policy_to("127.0.0.1:1"))
    (tmp_path / "web.yaml").write_text(MANIFEST)
    found = verified(
        capsys,
        "-p",
        str(tmp_path / "policy.yaml"),
        "--insecure-registry",
        "127.0.0.1:1",
        str(tmp_path / "web.yaml"),
    )
    assert found["python:3.12"]["exists"] is None
    assert found["python:3.12"]["detail"]
