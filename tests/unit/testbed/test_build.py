"""The builder's cache logic and its error messages, exercised with stand-in recipes.

The real Go builds are exercised by every other tier (they need the binaries); here the recipe is a
tiny function that writes a shell script, so each cache decision can be tested in milliseconds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from imagegate.commands.cli import main
from imagegate.errors import BuildError
from imagegate.testbed import build, recipes


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _fake_tool(version: str = "v1.2.3", builds: list[str] | None = None) -> build.Tool:
    def recipe(builder: build.Builder, tool: build.Tool, output: Path) -> None:
        if builds is not None:
            builds.append(tool.name)
        _script(output, f"echo fake {tool.version}")

    return build.Tool("fake", version, recipe, ("--version",))


@pytest.fixture
def fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `go` on PATH that reports a supported version and fails every other command."""
    bindir = tmp_path / "gobin"
    bindir.mkdir()
    _script(
        bindir / "go",
        'if [ "$1 $2" = "env GOVERSION" ]; then echo go1.26.8; exit 0; fi\n'
        'echo "main.go:3:1: syntax error: unexpected }"; exit 1',
    )
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin:/bin")
    return bindir / "go"


def test_builds_once_then_uses_the_cache(tmp_path: Path, fake_go: Path) -> None:
    builds: list[str] = []
    builder = build.Builder(tmp_path / "cache", log=lambda _: None)
    tool = _fake_tool(builds=builds)
    first = builder.ensure(tool)
    second = builder.ensure(tool)
    assert first == second == tmp_path / "cache" / "bin" / "fake" / "v1.2.3" / "fake"
    assert builds == ["fake"]


def test_a_new_version_is_built_beside_the_old_one(tmp_path: Path, fake_go: Path) -> None:
    builder = build.Builder(tmp_path, log=lambda _: None)
    old = builder.ensure(_fake_tool("v1.0.0"))
    new = builder.ensure(_fake_tool("v2.0.0"))
    assert old != new
    assert old.is_file()
    assert new.is_file()


def test_stale_cache_is_detected_and_rebuilt(tmp_path: Path, fake_go: Path) -> None:
    said: list[str] = []
    builds: list[str] = []
    builder = build.Builder(tmp_path, log=said.append)
    tool = _fake_tool(builds=builds)
    binary = builder.ensure(tool)
    # Someone replaced the binary with one that is not what the stamp says (a half-copied cache,
    # a different build): it no longer reports its version, so it must be rebuilt.
    _script(binary, "echo something else")
    assert not builder.is_current(tool)
    builder.ensure(tool)
    assert builds == ["fake", "fake"]
    assert any("stale" in line for line in said)
    assert builder.is_current(tool)


def test_a_stamp_from_an_older_recipe_is_stale(tmp_path: Path, fake_go: Path) -> None:
    builder = build.Builder(tmp_path, log=lambda _: None)
    tool = _fake_tool()
    binary = builder.ensure(tool)
    binary.with_name("fake.stamp").write_text('{"recipe": 0}')
    assert not builder.is_current(tool)


def test_no_go_toolchain_is_one_actionable_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    builder = build.Builder(tmp_path / "cache", log=lambda _: None)
    with pytest.raises(BuildError) as caught:
        builder.ensure(_fake_tool())
    message = caught.value.user_message
    assert "\n" not in message
    assert message.startswith("no Go toolchain on PATH: install Go >= 1.26")


def test_a_failing_go_build_names_the_tool_the_log_and_its_tail(
    tmp_path: Path, fake_go: Path
) -> None:
    builder = build.Builder(tmp_path, log=lambda _: None)
    with pytest.raises(BuildError) as caught:
        builder.ensure(build.ETCD)  # the real recipe, against the failing stand-in `go`
    first, *rest = caught.value.user_message.splitlines()
    assert first.startswith(f"building etcd {build.ETCD.version} failed: `go mod` failed")
    assert str(tmp_path / "logs" / f"build-etcd-{build.ETCD.version}.log") in first
    assert any("syntax error: unexpected }" in line for line in rest)
    assert not builder.binary_path(build.ETCD).exists()


def test_too_old_go_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _script(bindir / "go", "echo go1.22.1")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin:/bin")
    with pytest.raises(BuildError, match=r"Go 1\.22 is too old for the test bed"):
        build.Builder(tmp_path / "cache", log=lambda _: None).ensure(_fake_tool())


def test_cli_reports_a_build_failure_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("IMAGEGATE_CACHE", str(tmp_path / "cache"))
    assert main(["testbed", "build"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("imagegate: no Go toolchain on PATH")
    assert "Traceback" not in err


def test_kubernetes_ldflags_stamp_the_version() -> None:
    flags = recipes._kubernetes_ldflags()
    assert f"-X k8s.io/component-base/version.gitVersion={build.versions.KUBERNETES}" in flags
    assert "-X k8s.io/component-base/version.gitMinor=37" in flags


def test_go_install_finds_the_binary_of_a_major_version_module() -> None:
    # `go install github.com/tsenart/vegeta/v12@...` writes `vegeta`, not `v12`.
    assert recipes._command_name("github.com/tsenart/vegeta/v12") == "vegeta"
    assert recipes._command_name("helm.sh/helm/v3/cmd/helm") == "helm"


def test_the_benchmark_tools_are_not_part_of_the_test_bed() -> None:
    # scripts/test and CI build ALL_TOOLS: the load generator and the peer must stay out.
    assert build.VEGETA not in build.ALL_TOOLS
    assert build.POLICY_CONTROLLER not in build.ALL_TOOLS
