"""The Dockerfile, kept honest without a Docker engine: what it copies exists, what it runs is
a real entry point, and it follows the rules a reviewer would check by hand."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from imagegate.commands import cli

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def _args() -> dict[str, str]:
    return dict(
        line.removeprefix("ARG ").split("=", 1)
        for line in INSTRUCTIONS
        if line.startswith("ARG ") and "=" in line
    )


def test_both_stages_are_chainguard_python_pinned_by_digest() -> None:
    bases = [line.split()[1] for line in INSTRUCTIONS if line.startswith("FROM ")]
    assert len(bases) == 2
    args = _args()
    resolved = [args.get(base.strip("${}"), base) for base in bases]
    assert resolved[0].startswith("cgr.dev/chainguard/python:latest-dev@sha256:")
    assert resolved[1].startswith("cgr.dev/chainguard/python:latest@sha256:")
    for image in resolved:
        assert re.fullmatch(r"[^@]+@sha256:[0-9a-f]{64}", image), image


def test_every_copied_source_exists() -> None:
    for line in INSTRUCTIONS:
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        sources = [word for word in line.split()[1:-1] if not word.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{line}: {source} is not in the repository"


def test_dependencies_come_from_the_lockfile_without_dev_tools() -> None:
    assert "uv sync --frozen --no-dev --no-editable" in DOCKERFILE
    assert not any(line.startswith("ADD ") for line in INSTRUCTIONS)


def test_the_image_runs_as_non_root() -> None:
    users = [line.split()[1] for line in INSTRUCTIONS if line.startswith("USER ")]
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] not in ("0", "root")
    final_stage = DOCKERFILE.rsplit("FROM ", 1)[1]
    assert "USER " in final_stage


def test_the_entrypoint_is_the_packages_console_script_and_cmd_a_real_command() -> None:
    entrypoint = next(line for line in INSTRUCTIONS if line.startswith("ENTRYPOINT "))
    command = next(line for line in INSTRUCTIONS if line.startswith("CMD "))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert yaml.safe_load(entrypoint.removeprefix("ENTRYPOINT ")) == ["imagegate"]
    assert project["scripts"]["imagegate"] == "imagegate.commands.cli:main"
    subcommand = yaml.safe_load(command.removeprefix("CMD "))[0]
    with pytest.raises(SystemExit) as shown:
        cli.build_parser().parse_args([subcommand, "--help"])
    assert shown.value.code == 0


def test_the_chart_runs_what_the_image_provides() -> None:
    deployment = (ROOT / "charts" / "imagegate" / "templates" / "deployment.yaml").read_text()
    assert 'command: ["imagegate"]' in deployment
