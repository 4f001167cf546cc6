"""The chart's `logAdmits` value: rendered as `--log-admits`, checked by the values schema."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegate.testbed import build

CHART = Path(__file__).resolve().parents[2] / "charts" / "imagegate"


@pytest.fixture(scope="module")
def helm(builder: build.Builder, tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary, home = builder.ensure(build.HELM), tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),  # helm template never needs a cluster
    }

    def template(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), "template", "ig", str(CHART), "--namespace", "imagegate", *args],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=120,
        )

    return template


def args_of(rendered: str) -> list[str]:
    (deployment,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_log_admits_defaults_to_sampled_and_follows_the_value(helm: Any) -> None:
    default = helm()
    assert default.returncode == 0, default.stderr
    assert "--log-admits=sampled" in args_of(default.stdout)
    every = helm("--set", "logAdmits=all")
    assert "--log-admits=all" in args_of(every.stdout)


def test_the_schema_refuses_an_unknown_log_admits(helm: Any) -> None:
    refused = helm("--set", "logAdmits=some")
    assert refused.returncode != 0
    assert "logAdmits" in refused.stderr
