"""The packaging rules that keep `operator/` a folder and not a module."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_operator_folder_is_not_a_package() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    stdlib_operator = importlib.import_module("operator")
    assert stdlib_operator.__file__ is not None
    assert Path(stdlib_operator.__file__).parent == Path(sys.modules["os"].__file__ or "").parent


def test_package_search_is_rooted_at_operator() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["where"] == ["operator"]
    assert project["project"]["scripts"]["imagegate"] == "imagegate.commands.cli:main"


def test_registry_go_source_ships_with_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = project["tool"]["setuptools"]["package-data"]["imagegate.testbed"]
    for name in ("main.go", "go.mod", "go.sum"):
        assert (ROOT / "operator" / "imagegate" / "testbed" / "goreg" / name).is_file()
        assert any(pattern.endswith(name) or pattern.endswith("*.go") for pattern in shipped)


def test_imagegate_run_never_loads_the_test_bed() -> None:
    """What `imagegate run` imports in a cluster: never the test bed (.importlinter checks the
    static imports; this checks what really loads, lazy imports included)."""
    import subprocess

    # What `imagegate run` imports (commands/cli.py's `run` branch), in a fresh interpreter.
    check = (
        "import sys\n"
        "from imagegate.commands import cli\n"
        "from imagegate.admission import server\n"
        "from imagegate.cluster import operator\n"
        "from imagegate.trail import logs\n"
        "cli.build_parser()\n"
        "print(sorted(m for m in sys.modules if m.startswith('imagegate.testbed')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_layer_contracts_are_checked_by_the_test_command() -> None:
    assert "lint-imports" in (ROOT / "scripts" / "test").read_text()
    contracts = (ROOT / ".importlinter").read_text()
    for name in ("layers", "pure-core", "kopf", "no-testbed-at-run-time"):
        assert f"[importlinter:contract:{name}]" in contracts
