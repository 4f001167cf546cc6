"""Sigstore trust roots: the public-good root shipped inside sigstore-python, read offline.

No TUF refresh and no network on the admission path: refreshing the root means upgrading
sigstore-python (or, for private Sigstore, naming a custom root).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from importlib.abc import Traversable
from typing import TYPE_CHECKING, Any

from imagegate.signatures import sigstore_internals

if TYPE_CHECKING:
    from sigstore.models import TrustedRoot


def _public_good_file() -> Traversable:
    return sigstore_internals.public_good_root_file()


@functools.cache
def public_good_root() -> TrustedRoot:
    # Imported here (as below): sigstore-python's models, verifier and OIDC stack cost ~12 MiB
    # and 180 modules, and only keyless signatures and bundles need them (design.md "Memory
    # and start-up").
    from sigstore.models import TrustedRoot

    return TrustedRoot.from_file(str(_public_good_file()))


@functools.cache
def public_good_json() -> dict[str, Any]:
    """The same root as plain JSON, for the checks sigstore-python does not make (Rekor SETs)."""
    document: dict[str, Any] = json.loads(_public_good_file().read_text())
    return document


class Root:
    """A trust root as JSON (what imagegate's own checks read) and, when sigstore-python accepts
    it, as its TrustedRoot (for bundles and SCTs), parsed when first asked for."""

    def __init__(self, document: dict[str, Any], parse: Callable[[], TrustedRoot | None]) -> None:
        self.document = document
        self._parse = parse

    @functools.cached_property
    def parsed(self) -> TrustedRoot | None:
        return self._parse()


def public_good() -> Root:
    return Root(public_good_json(), public_good_root)


@functools.lru_cache(maxsize=32)
def custom(text: str) -> Root:
    """A root from a `trusted_root.json` (e.g. a ConfigMap's), parsed once per content."""
    document = json.loads(text)
    if not isinstance(document, dict) or not str(document.get("mediaType", "")).startswith(
        "application/vnd.dev.sigstore.trustedroot"
    ):
        raise ValueError("not a Sigstore trusted_root.json (mediaType)")
    return Root(document, functools.partial(_parsed, text))


def _parsed(text: str) -> TrustedRoot | None:
    from sigstore.models import TrustedRoot
    from sigstore_models.trustroot import v1 as trustroot_v1

    try:
        return TrustedRoot(trustroot_v1.TrustedRoot.from_json(text))
    except Exception:  # sigstore-python refuses some private roots; our own checks still run
        return None
