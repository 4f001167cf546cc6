"""The chart's `logAdmits` value: rendered as `--log-admits`, checked by the values schema."""

from __future__ import annotations

import yaml

from support import Helm


def args_of(rendered: str) -> list[str]:
    (deployment,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_log_admits_defaults_to_sampled_and_follows_the_value(helm: Helm) -> None:
    default = helm.render()
    assert default.returncode == 0, default.stderr
    assert "--log-admits=sampled" in args_of(default.stdout)
    every = helm.render("--set", "logAdmits=all")
    assert "--log-admits=all" in args_of(every.stdout)


def test_the_schema_refuses_an_unknown_log_admits(helm: Helm) -> None:
    refused = helm.render("--set", "logAdmits=some")
    assert refused.returncode != 0
    assert "logAdmits" in refused.stderr
