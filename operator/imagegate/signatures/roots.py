"""Sigstore trust roots: the public-good root shipped inside sigstore-python, read offline.

No TUF refresh and no network on the admission path: refreshing the root means upgrading
sigstore-python (or, for private Sigstore, naming a custom root).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from importlib.abc import Traversable
from typing import Any

from sigstore.models import TrustedRoot

PUBLIC_GOOD_ROOT = "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev/trusted_root.json"


def _public_good_file() -> Traversable:
    return resources.files("sigstore") / "_store" / PUBLIC_GOOD_ROOT


@functools.cache
def public_good_root() -> TrustedRoot:
    return TrustedRoot.from_file(str(_public_good_file()))


@functools.cache
def public_good_json() -> dict[str, Any]:
    """The same root as plain JSON, for the checks sigstore-python does not make (Rekor SETs)."""
    document: dict[str, Any] = json.loads(_public_good_file().read_text())
    return document
