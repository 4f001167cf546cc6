"""Sigstore trust roots: the public-good root shipped inside sigstore-python, read offline.

No TUF refresh and no network on the admission path: refreshing the root means upgrading
sigstore-python (or, for private Sigstore, naming a custom root).
"""

from __future__ import annotations

import functools
import json
from importlib.abc import Traversable
from typing import Any

from sigstore.models import TrustedRoot
from sigstore_models.trustroot import v1 as trustroot_v1

from imagegate.signatures import sigstore_internals


def _public_good_file() -> Traversable:
    return sigstore_internals.public_good_root_file()


@functools.cache
def public_good_root() -> TrustedRoot:
    return TrustedRoot.from_file(str(_public_good_file()))


@functools.cache
def public_good_json() -> dict[str, Any]:
    """The same root as plain JSON, for the checks sigstore-python does not make (Rekor SETs)."""
    document: dict[str, Any] = json.loads(_public_good_file().read_text())
    return document


class Root:
    """A trust root as JSON (what imagegate's own checks read) and, when sigstore-python accepts
    it, as its TrustedRoot (for bundles and SCTs)."""

    def __init__(self, document: dict[str, Any], parsed: TrustedRoot | None) -> None:
        self.document = document
        self.parsed = parsed


def public_good() -> Root:
    return Root(public_good_json(), public_good_root())


@functools.lru_cache(maxsize=32)
def custom(text: str) -> Root:
    """A root from a `trusted_root.json` (e.g. a ConfigMap's), parsed once per content."""
    document = json.loads(text)
    if not isinstance(document, dict) or not str(document.get("mediaType", "")).startswith(
        "application/vnd.dev.sigstore.trustedroot"
    ):
        raise ValueError("not a Sigstore trusted_root.json (mediaType)")
    try:
        parsed: TrustedRoot | None = TrustedRoot(trustroot_v1.TrustedRoot.from_json(text))
    except Exception:  # sigstore-python refuses some private roots; our own checks still run
        parsed = None
    return Root(document, parsed)
