"""The only module that reads sigstore-python's private API (pinned `sigstore~=4.5`).

sigstore-python has no public call for two things imagegate needs:
- checking a certificate's SCT against a trust root's CT logs, for legacy cosign signatures that
  sigstore-python's `Verifier` will not take (fulcio.py);
- the path of the public-good `trusted_root.json` it ships, to read it offline (roots.py).

Keeping them here means one file to read on an upgrade, and `tests/unit/signatures/
test_sigstore_internals.py` fails loudly, naming what moved, before anything else breaks.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:
    from sigstore.models import TrustedRoot

#: Where sigstore-python keeps the public-good root it ships (its `_store` folder).
PUBLIC_GOOD_ROOT = "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev/trusted_root.json"


class SCTError(Exception):
    """The certificate has no SCT from a CT log of the trust root; the message says why."""


def public_good_root_file() -> Traversable:
    return resources.files("sigstore") / "_store" / PUBLIC_GOOD_ROOT


def verify_sct(leaf: x509.Certificate, chain: list[x509.Certificate], root: TrustedRoot) -> None:
    """Raise `SCTError` unless `leaf` carries a valid SCT from one of `root`'s CT logs."""
    # Imported here: sigstore's keyless stack is loaded only once a keyless signature is checked.
    from sigstore._internal import sct as _sct
    from sigstore._internal.trust import KeyringPurpose as _KeyringPurpose
    from sigstore.errors import Error as SigstoreError

    try:
        _sct.verify_sct(leaf, chain, root.ct_keyring(_KeyringPurpose.VERIFY))
    except SigstoreError as error:
        raise SCTError(str(error)) from error
