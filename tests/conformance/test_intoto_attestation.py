"""A real legacy `.att` attestation logged in Rekor as an `intoto` 0.0.1 entry (design.md §9.8):
slsa-verifier's container provenance fixture (keyless, GitHub Actions, public-good Rekor,
integrated 2023-01-11), under /work/shared/fixtures/signatures.

The untampered layer verifies through `CosignVerifier` with `requireTransparencyLog: true`.
Tampered, it is refused with the reason of the part changed: with the real SET where the change
leaves the SET valid (the layer's bytes, its payload, its certificate), and with the real body
changed and re-signed by the test's own log (a trust root that is public-good's with that log
instead of Rekor) where only the entry is changed.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

import sigstore_pki as pki
from imagegate.policy import engine, model
from imagegate.signatures import attestations, authorities, cosign, roots
from imagegate.signatures.failures import SignatureFailure
from imagegate.signatures.verifier import CosignVerifier

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "signatures"
FOLDER = FIXTURES / "slsa-verifier-container-provenance-v1.4.0"
DIGEST = "sha256:a74d89d8dd863ca5dae4a29e0feede81ddf59197849a80784af5a02ab7786925"
IMAGE = f"ghcr.io/slsa-framework/example-package.verifier-e2e.all.tag.main.default.slsa3@{DIGEST}"
SIGNER = (
    "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/"
    "generator_container_slsa3.yml@refs/tags/v1.4.0"
)
GITHUB_ACTIONS = "https://token.actions.githubusercontent.com"
INTEGRATED_AT = 1673455977  # the fixture's Rekor integratedTime (2023-01-11 16:52:57 UTC)

pytestmark = pytest.mark.skipif(not FOLDER.is_dir(), reason=f"shared fixture not found at {FOLDER}")

SIGNERS = model.Signatures.model_validate(
    {"keyless": [{"issuer": GITHUB_ACTIONS, "subject": SIGNER}], "requireTransparencyLog": True}
)
WANTED = model.Attestation.model_validate(
    {
        "predicateType": "slsaprovenance",
        "authorities": SIGNERS.model_dump(by_alias=True, exclude_none=True),
    }
)


def real_layer() -> tuple[dict[str, Any], bytes]:
    """The `.att` manifest's layer (with cosign's annotations) and its blob, the envelope."""
    manifest = json.loads((FOLDER / "atts-manifest.json").read_text())
    return manifest["layers"][0], (FOLDER / "dsse-envelope.json").read_bytes()


def layer_of(blob: bytes, changes: dict[str, str] | None = None) -> tuple[dict[str, Any], bytes]:
    """The real layer storing `blob` instead, with its real annotations but for `changes`."""
    descriptor, _ = pki.att_layer(blob)
    descriptor["annotations"] = {**real_layer()[0]["annotations"], **(changes or {})}
    return descriptor, blob


async def verdict(layer: tuple[dict[str, Any], bytes]) -> engine.SignatureVerdict:
    verifier = CosignVerifier(pki.Registry(attestation_layers=[layer]))  # type: ignore[arg-type]
    check = engine.SignatureCheck(IMAGE, "p", "s", None, None, (WANTED,))
    return (await verifier.verify([check], time.monotonic() + 60))[check]


async def test_the_real_intoto_attestation_verifies_with_the_log_required() -> None:
    result = await verdict(real_layer())
    assert result.verified, result.reason
    assert result.digest == DIGEST


def _statement_changed() -> bytes:
    envelope = json.loads(real_layer()[1])
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["builder"]["id"] = "https://evil.example/builder"
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(envelope).encode()


def _respaced() -> bytes:
    """The same envelope (payload, signature) in other bytes than those Rekor hashed."""
    return json.dumps(json.loads(real_layer()[1]), indent=2).encode()


def _other_certificate() -> dict[str, str]:
    """Another real Fulcio certificate (another signer's) in the certificate annotation."""
    other = FIXTURES / "containers-image-dir-img-cosign-fulcio-rekor-valid" / "cert.pem"
    return {cosign.CERTIFICATE_ANNOTATION: other.read_text()}


def _body_changed_under_the_real_set() -> dict[str, str]:
    annotation = json.loads(real_layer()[0]["annotations"][cosign.REKOR_ANNOTATION])
    body = json.loads(base64.b64decode(annotation["Payload"]["body"]))
    body["spec"]["content"]["hash"]["value"] = "00" * 32
    annotation["Payload"]["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return {cosign.REKOR_ANNOTATION: json.dumps(annotation)}


WITH_THE_REAL_SET = {
    "payload changed": (
        lambda: layer_of(_statement_changed()),
        "the signature does not verify with its certificate",
    ),
    "layer re-serialised": (
        lambda: layer_of(_respaced()),
        "the log entry is for another envelope (content.hash)",
    ),
    "other cert": (
        lambda: layer_of(real_layer()[1], _other_certificate()),
        "the signature does not verify with its certificate",
    ),
    "envelope hash changed in the body": (
        lambda: layer_of(real_layer()[1], _body_changed_under_the_real_set()),
        "bad SET: the log's signature does not verify",
    ),
}


@pytest.mark.parametrize("name", WITH_THE_REAL_SET)
async def test_the_tampered_real_attestation_is_denied_with_its_reason(name: str) -> None:
    """Beside the untampered one, which verifies: a denial where every intoto entry is
    refused would say nothing about the part tampered."""
    make, reason = WITH_THE_REAL_SET[name]
    assert (await verdict(real_layer())).verified
    result = await verdict(make())
    assert not result.verified
    assert result.failed == "attestation"
    assert reason in result.reason, result.reason


# --- the real body, changed and re-signed by a log of the test's -------------------------------

LOG = pki.Log()


def _root_with_the_test_log() -> roots.Root:
    document = json.loads((FIXTURES / "public-good-trusted_root.json").read_text())
    document["tlogs"] = [LOG.tlog()]
    return roots.custom(json.dumps(document))


def _real_body() -> dict[str, Any]:
    annotation = json.loads(real_layer()[0]["annotations"][cosign.REKOR_ANNOTATION])
    body: dict[str, Any] = json.loads(base64.b64decode(annotation["Payload"]["body"]))
    return body


async def _verify_resigned(body: dict[str, Any]) -> None:
    """Verifies the real layer whose log entry is `body`, signed by LOG at the real time."""
    promise = LOG.promise(body, index=10957770, integrated_time=INTEGRATED_AT)
    layer = layer_of(real_layer()[1], {cosign.REKOR_ANNOTATION: json.dumps(promise)})
    registry = pki.Registry(attestation_layers=[layer])
    found = await cosign.find_attestations(registry, "ghcr.io", "x", DIGEST, deadline=None)  # type: ignore[arg-type]
    authority = authorities.of_requirement(SIGNERS, [], _root_with_the_test_log())
    attestations.verify(WANTED, found, DIGEST, authority, pki.NOW)


async def test_the_real_body_re_signed_by_the_test_log_verifies() -> None:
    """The control: re-signing changes nothing but the log key."""
    await _verify_resigned(_real_body())


def _changed(path: tuple[str, ...], value: object) -> dict[str, Any]:
    body = copy.deepcopy(_real_body())
    target = body
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    return body


def _other_cert_pem() -> str:
    other = FIXTURES / "containers-image-dir-img-cosign-fulcio-rekor-valid" / "cert.pem"
    return base64.b64encode(other.read_bytes()).decode()


RE_SIGNED = {
    "envelope hash changed in the body": (
        ("spec", "content", "hash", "value"),
        "00" * 32,
        "the log entry is for another envelope (content.hash)",
    ),
    "payload hash changed in the body": (
        ("spec", "content", "payloadHash", "value"),
        "00" * 32,
        "the log entry is for another payload",
    ),
    "other cert in the body": (
        ("spec", "publicKey"),
        None,  # set below: read from another fixture
        "the log entry names another key",
    ),
    "sha512 in the body": (
        ("spec", "content", "hash", "algorithm"),
        "sha512",
        "the log entry's hashes are 'sha512', not sha256",
    ),
    "no publicKey in the body": (
        ("spec", "publicKey"),
        {"not": "base64"},
        "the log entry's body is malformed",
    ),
}


@pytest.mark.parametrize("name", RE_SIGNED)
async def test_the_real_body_changed_and_re_signed_is_refused_with_its_reason(name: str) -> None:
    path, value, reason = RE_SIGNED[name]
    body = _changed(path, _other_cert_pem() if value is None else value)
    with pytest.raises(SignatureFailure) as refused:
        await _verify_resigned(body)
    assert reason in refused.value.user_message, refused.value.user_message
