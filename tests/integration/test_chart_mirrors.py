"""The chart's `registryMirrors.hosts`: a ConfigMap laid out as containerd's config_path, mounted,
passed as `--registry-mirrors`, and readable by the operator's own parser."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from imagegate.registry import mirrors
from support import Helm

HUB = '[host."https://mirror.internal/v2/hub"]\n  capabilities = ["pull", "resolve"]\n'
LOCAL = 'server = "http://10.0.0.9:5000"\n'


def rendered(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return {d["kind"]: d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] != "Role"}


def test_no_mirrors_render_nothing(helm: Helm) -> None:
    objects = rendered(helm.render())
    assert "ConfigMap" not in objects
    pod = objects["Deployment"]["spec"]["template"]
    assert not any(a.startswith("--registry-mirrors") for a in pod["spec"]["containers"][0]["args"])
    assert "checksum/registry-mirrors" not in (pod["metadata"].get("annotations") or {})


def test_hosts_become_a_config_path_directory_the_operator_reads(
    helm: Helm, tmp_path: Path
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump({"registryMirrors": {"hosts": {"docker.io": HUB, "10.0.0.9:5000": LOCAL}}})
    )
    objects = rendered(helm.render("-f", str(values)))
    pod = objects["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert "--registry-mirrors=/etc/imagegate/certs.d" in container["args"]
    assert {
        "name": "registry-mirrors",
        "mountPath": "/etc/imagegate/certs.d",
        "readOnly": True,
    } in (container["volumeMounts"])
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "registry-mirrors"]
    assert volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert "checksum/registry-mirrors" in pod["metadata"]["annotations"]
    # Lay the ConfigMap out as the kubelet would, and read it with the operator's parser.
    data = objects["ConfigMap"]["data"]
    for item in volume["configMap"]["items"]:
        (tmp_path / "certs.d" / item["path"]).parent.mkdir(parents=True)
        (tmp_path / "certs.d" / item["path"]).write_text(data[item["key"]])
    read = mirrors.read_directory(tmp_path / "certs.d")
    assert [e.api_root for e in read.endpoints_for("docker.io")] == [
        "https://mirror.internal/v2/hub/v2",
        "https://registry-1.docker.io/v2",
    ]
    assert [e.api_root for e in read.endpoints_for("10.0.0.9:5000")] == ["http://10.0.0.9:5000/v2"]


def test_the_schema_refuses_a_host_that_is_not_one(helm: Helm) -> None:
    done = helm.render("--set-string", "registryMirrors.hosts.docker\\.io/library=x")
    assert done.returncode != 0
    assert "'docker.io/library' does not match pattern" in done.stderr
