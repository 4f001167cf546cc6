"""cosign signatures in a registry, in both formats cosign writes, checked against keys.

- legacy: tag `sha256-<hex>.sig`, one layer per signature whose blob is the simple-signing
  payload (`critical.image.docker-manifest-digest`) and whose annotations carry the signature;
- cosign v3: a Sigstore bundle v0.3 stored as an OCI referrer of the image, a DSSE envelope around
  an in-toto statement (`predicateType https://sigstore.dev/cosign/sign/v1`) whose subject is the
  image digest.

Every check that binds a signature to *this* image is made here: a valid signature copied from
another image fails on the digest it names.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imagegate.core.keys import PublicKey
from imagegate.registry import client as registry
from imagegate.signatures import rekor, roots

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO = "application/vnd.in-toto+json"
COSIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
REKOR_ANNOTATION = "dev.sigstore.cosign/bundle"
MAX_SIGNATURES = 32


@dataclass(frozen=True)
class FoundSignature:
    """One signature of an image, in whichever format it came."""

    format: str  # "legacy" or "bundle"
    #: What the signature is over: the simple-signing payload, or the DSSE pre-authentication
    #: encoding of the envelope.
    signed: bytes
    signature: bytes
    #: The claims: the payload (legacy) or the in-toto statement (bundle).
    claims: bytes
    certificate: str | None = None
    transparency: object | None = None
    #: The whole Sigstore bundle, for keyless verification (bundle format only).
    bundle: bytes | None = None
    #: The certificate chain (PEM) a legacy keyless signature carries.
    chain: str | None = None


async def find(
    client: registry.RegistryClient,
    registry_host: str,
    repository: str,
    digest: str,
    *,
    deadline: float | None,
) -> list[FoundSignature]:
    """Every cosign signature of `digest` (both formats); none found is an empty list."""
    found = await _legacy(client, registry_host, repository, digest, deadline)
    found += await _bundles(client, registry_host, repository, digest, deadline)
    return found[:MAX_SIGNATURES]


async def _legacy(
    client: registry.RegistryClient, host: str, repository: str, digest: str, deadline: float | None
) -> list[FoundSignature]:
    tag = digest.replace(":", "-") + ".sig"
    try:
        body, _ = await client.manifest(host, repository, tag, deadline=deadline)
    except registry.ManifestUnknown:
        return []
    found = []
    for layer in _json(body).get("layers", [])[:MAX_SIGNATURES]:
        if layer.get("mediaType") != SIMPLE_SIGNING:
            continue
        annotations = layer.get("annotations") or {}
        try:
            signature = base64.b64decode(annotations.get(SIGNATURE_ANNOTATION, ""), validate=True)
        except binascii.Error:
            continue
        payload = await client.blob(host, repository, layer["digest"], deadline=deadline)
        found.append(
            FoundSignature(
                "legacy",
                payload,
                signature,
                payload,
                annotations.get(CERTIFICATE_ANNOTATION),
                annotations.get(REKOR_ANNOTATION),
                chain=annotations.get(CHAIN_ANNOTATION),
            )
        )
    return found


async def _bundles(
    client: registry.RegistryClient, host: str, repository: str, digest: str, deadline: float | None
) -> list[FoundSignature]:
    found = []
    referrers = await client.referrers(
        host, repository, digest, artifact_type=BUNDLE_V03, deadline=deadline
    )
    for descriptor in referrers[:MAX_SIGNATURES]:
        body, _ = await client.manifest(host, repository, descriptor.digest, deadline=deadline)
        for layer in _json(body).get("layers", [])[:1]:
            raw = await client.blob(host, repository, layer["digest"], deadline=deadline)
            parsed = _from_bundle(_json(raw), raw)
            if parsed is not None:
                found.append(parsed)
    return found


def _from_bundle(bundle: dict[str, Any], raw: bytes) -> FoundSignature | None:
    envelope = bundle.get("dsseEnvelope")
    if bundle.get("mediaType") != BUNDLE_V03 or not isinstance(envelope, dict):
        return None
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        signature = base64.b64decode(envelope["signatures"][0]["sig"], validate=True)
        payload_type = str(envelope["payloadType"])
    except (KeyError, IndexError, TypeError, binascii.Error):
        return None
    material = bundle.get("verificationMaterial") or {}
    certificate = (material.get("certificate") or {}).get("rawBytes")
    return FoundSignature(
        "bundle",
        pae(payload_type, payload),
        signature,
        payload if payload_type == IN_TOTO else b"",
        certificate,
        material.get("tlogEntries") or None,
        raw,
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature is computed over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def claims_name(found: FoundSignature, digest: str) -> str | None:
    """Why the signed claims do not name `digest`, or None when they do."""
    claims = _json(found.claims)
    if found.format == "legacy":
        named = claims.get("critical", {}).get("image", {}).get("docker-manifest-digest")
        if named != digest:
            return f"the signature is for {named or 'no image'}, not {digest} (digest mismatch)"
        return None
    if claims.get("predicateType") != COSIGN_PREDICATE:
        return f"the bundle's predicate is {claims.get('predicateType')!r}, not a cosign signature"
    algorithm, hex_digest = digest.split(":", 1)
    subjects = [s.get("digest", {}).get(algorithm) for s in claims.get("subject", [])]
    if hex_digest not in subjects:
        return f"the bundle's subject is not {digest} (digest mismatch)"
    return None


def verify_with_key(
    found: Sequence[FoundSignature],
    key: PublicKey,
    digest: str,
    *,
    require_tlog: bool,
    trusted_root: Mapping[str, Any] | None = None,
) -> str | None:
    """None when one of the signatures verifies with `key` for `digest`; else the reason."""
    if not found:
        return "no signature found"
    reasons = []
    for signature in found:
        if not key.verify(signature.signature, signature.signed):
            reasons.append("signature does not verify with the key")
            continue
        mismatch = claims_name(signature, digest)
        if mismatch is not None:
            reasons.append(mismatch)
            continue
        if require_tlog and signature.transparency is None:
            reasons.append(
                "signed by the key but not in a transparency log (set requireTransparencyLog: "
                "false for keys that sign without one)"
            )
            continue
        if require_tlog:
            root = trusted_root if trusted_root is not None else roots.public_good_json()
            failure = (
                rekor.verify_set(
                    signature.transparency, signature.signed, signature.signature, key.der, root
                )
                if signature.format == "legacy"
                else rekor.verify_bundle_entries(
                    signature.transparency, signature.claims, signature.signature, key.der, root
                )
            )
            if failure is not None:
                reasons.append(failure)
                continue
        return None
    # The most telling reason first: a right-key signature beats "wrong key" noise.
    return sorted(set(reasons), key=lambda r: r.startswith("signature does not verify"))[0]


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
