"""Fails loudly, naming what moved, when a sigstore-python upgrade changes the private API that
signatures/sigstore_internals.py (the only user of it) reads."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import tomllib
from pathlib import Path

from sigstore._internal import sct
from sigstore._internal.trust import KeyringPurpose
from sigstore.models import TrustedRoot

from imagegate.signatures import sigstore_internals

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "operator" / "imagegate"


def test_the_private_api_read_is_still_where_it_was() -> None:
    assert list(inspect.signature(sct.verify_sct).parameters)[:3] == ["cert", "chain", "ct_keyring"]
    assert KeyringPurpose.VERIFY
    assert hasattr(TrustedRoot, "ct_keyring")


def test_the_shipped_public_good_root_is_where_it_was() -> None:
    document = json.loads(sigstore_internals.public_good_root_file().read_text())
    assert document["mediaType"].startswith("application/vnd.dev.sigstore.trustedroot")
    assert document["ctlogs"]
    assert document["certificateAuthorities"]
    assert document["tlogs"]


def test_the_pinned_versions_are_the_ones_installed() -> None:
    """`sigstore~=4.5` admits 4.x only from 4.5 on: a 5.0 could move any private name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {d.split("~=")[0].split(">=")[0]: d for d in project["dependencies"]}
    assert declared["sigstore"] == "sigstore~=4.5"
    assert "sigstore-models" in declared  # imported by roots.py, so declared
    major, minor = (int(p) for p in importlib.metadata.version("sigstore").split(".")[:2])
    assert major == 4
    assert minor >= 5


def test_no_other_module_reads_sigstore_private_api() -> None:
    readers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "sigstore._internal" in path.read_text() or '"_store"' in path.read_text()
    )
    assert readers == ["signatures/sigstore_internals.py"]
