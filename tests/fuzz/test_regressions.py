"""Bugs the fuzzer found, each pinned by the smallest example that showed it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from fuzz import harness, strategies
from imagegate.policy import engine, model
from imagegate.signatures.verifier import CosignVerifier

KEYLESS = model.Signatures.model_validate(
    {
        "keyless": [
            {
                "issuer": "https://token.actions.githubusercontent.com",
                "subject": "https://github.com/kubewarden/kubewarden-controller/.github/workflows"
                "/release.yml@refs/tags/v1.34.0",
            }
        ]
    }
)
V03_DIGEST = "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172"
#: Past Python's recursion limit, far below any manifest or blob size bound.
NESTING_BOMB = b'{"mediaType":' + b"[" * 5000


@pytest.fixture
def valid_bundle() -> bytes:
    if not strategies.BUNDLE.is_file():
        pytest.skip(f"shared signature fixtures not found under {strategies.SIGNATURES}")
    return strategies.BUNDLE.read_bytes()


async def _verdict(registry: Any, digest: str) -> engine.SignatureVerdict:
    verifier = CosignVerifier(registry)
    image = f"{harness.HOST}/{harness.REPOSITORY}@{digest}"
    check = engine.SignatureCheck(image, "p", "s", KEYLESS)
    return (await verifier.verify([check], time.monotonic() + 30))[check]


@pytest.mark.parametrize("bomb_first", [True, False], ids=["before", "after"])
async def test_a_nesting_bomb_bundle_does_not_hide_a_valid_one(
    valid_bundle: bytes, bomb_first: bool
) -> None:
    """Found by test_broken_v03_bundles_never_raise_and_never_verify: a referrer blob nested
    past the recursion limit made `cosign._json` raise RecursionError out of the verifier (a 500
    for every Pod of a signed image, from anyone who can push a referrer)."""
    bundles = [NESTING_BOMB, valid_bundle] if bomb_first else [valid_bundle, NESTING_BOMB]
    verdict = await _verdict(harness.Registry([], bundles), V03_DIGEST)
    assert verdict == engine.SignatureVerdict(True, digest=V03_DIGEST)


async def test_a_nesting_bomb_sig_manifest_is_a_denial_not_an_exception() -> None:
    registry = harness.Registry([], [])
    registry.sig_manifest = NESTING_BOMB
    verdict = await _verdict(registry, V03_DIGEST)
    assert not verdict.verified
    assert "no signature found" in verdict.reason
