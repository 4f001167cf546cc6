"""cosign signatures in a registry, in both formats cosign writes, checked against keys.

- legacy: tag `sha256-<hex>.sig`, one layer per signature whose blob is the simple-signing
  payload (`critical.image.docker-manifest-digest`) and whose annotations carry the signature;
- legacy attestations (design.md §9): tag `sha256-<hex>.att`, one layer per attestation whose
  blob is a DSSE envelope around an in-toto statement, with the same annotations as `.sig`;
- cosign v3: a Sigstore bundle v0.3 stored as an OCI referrer of the image, a DSSE envelope around
  an in-toto statement (`predicateType https://sigstore.dev/cosign/sign/v1`) whose subject is the
  image digest.

Every check that binds a signature to *this* image is made here: a valid signature copied from
another image fails on the digest it names. Checks raise a `failures.SignatureFailure` with the
reason. Anyone who can push to the repository can add signatures, so each is judged on its own
(`each_signature`): a layer or bundle that cannot be read is found as `malformed`, and fails
alone without hiding a valid signature beside it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imagegate.core.keys import PublicKey
from imagegate.registry import client as registry
from imagegate.signatures import rekor, roots
from imagegate.signatures.failures import (
    BadTransparencyLogEntry,
    MalformedSignature,
    WrongImage,
    WrongKey,
    any_passes,
)

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO = "application/vnd.in-toto+json"
COSIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
REKOR_ANNOTATION = "dev.sigstore.cosign/bundle"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
MAX_SIGNATURES = 32


@dataclass(frozen=True)
class FoundSignature:
    """One signature of an image, in whichever format it came."""

    format: str  # "legacy" (.sig), "attestation" (.att) or "bundle"
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
    #: Why this layer or bundle could not be read (then it is no signature, only a reason).
    malformed: str | None = None
    #: The predicate type the in-toto statement must carry to count: a cosign signature's, or
    #: the attestation's a policy asks for (attestations.py sets it). Never both.
    expected_predicate: str = COSIGN_PREDICATE
    #: The DSSE envelope as an `.att` layer stores it, byte for byte: what its Rekor `intoto`
    #: entry hashes (design.md §9.8). None for every other format.
    envelope: bytes | None = None


def _unreadable(format: str, reason: str) -> FoundSignature:
    return FoundSignature(format, b"", b"", b"", malformed=reason)


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


#: A layer of a legacy tag: its digest and annotations, or None when it cannot be read.
TaggedLayer = tuple[str, Mapping[str, Any]] | None


async def _tagged_layers(
    client: registry.RegistryClient,
    host: str,
    repository: str,
    tag: str,
    media_type: str,
    deadline: float | None,
) -> list[TaggedLayer]:
    """The layers of `media_type` in the manifest at `tag` (none when the tag is missing),
    bounded by MAX_SIGNATURES; a layer without annotations or digest is None, so the caller
    can judge it as its own unreadable signature."""
    try:
        body, _ = await client.manifest(host, repository, tag, deadline=deadline)
    except registry.ManifestUnknown:
        return []
    layers = _json(body).get("layers")
    found: list[TaggedLayer] = []
    for layer in (layers if isinstance(layers, list) else [])[:MAX_SIGNATURES]:
        if not isinstance(layer, dict) or layer.get("mediaType") != media_type:
            continue
        annotations, digest = layer.get("annotations"), layer.get("digest")
        if isinstance(annotations, dict) and isinstance(digest, str):
            found.append((digest, annotations))
        else:
            found.append(None)
    return found


async def _legacy(
    client: registry.RegistryClient, host: str, repository: str, digest: str, deadline: float | None
) -> list[FoundSignature]:
    tag = digest.replace(":", "-") + ".sig"
    found = []
    for layer in await _tagged_layers(client, host, repository, tag, SIMPLE_SIGNING, deadline):
        if layer is None:
            found.append(_unreadable("legacy", "malformed signature: unreadable layer"))
            continue
        blob_digest, annotations = layer
        try:
            signature = base64.b64decode(annotations.get(SIGNATURE_ANNOTATION, ""), validate=True)
        except (binascii.Error, ValueError, TypeError):
            found.append(_unreadable("legacy", "malformed signature: not base64"))
            continue
        payload = await client.blob(host, repository, blob_digest, deadline=deadline)
        found.append(
            FoundSignature(
                "legacy",
                payload,
                signature,
                payload,
                _text(annotations.get(CERTIFICATE_ANNOTATION)),
                annotations.get(REKOR_ANNOTATION),
                chain=_text(annotations.get(CHAIN_ANNOTATION)),
            )
        )
    return found


async def find_attestations(
    client: registry.RegistryClient,
    registry_host: str,
    repository: str,
    digest: str,
    *,
    deadline: float | None,
) -> list[FoundSignature]:
    """Every in-toto statement signed for `digest`: `.att` layers and v0.3 bundle referrers
    (signature bundles among them: their predicate type tells them apart)."""
    found = await _legacy_attestations(client, registry_host, repository, digest, deadline)
    found += await _bundles(client, registry_host, repository, digest, deadline)
    return found[:MAX_SIGNATURES]


async def _legacy_attestations(
    client: registry.RegistryClient, host: str, repository: str, digest: str, deadline: float | None
) -> list[FoundSignature]:
    tag = digest.replace(":", "-") + ".att"
    found = []
    for layer in await _tagged_layers(client, host, repository, tag, DSSE_ENVELOPE, deadline):
        if layer is None:
            found.append(_unreadable("attestation", "malformed attestation: unreadable layer"))
            continue
        blob_digest, annotations = layer
        raw = await client.blob(host, repository, blob_digest, deadline=deadline)
        found += _from_envelope(
            _json(raw),
            "attestation",
            certificate=_text(annotations.get(CERTIFICATE_ANNOTATION)),
            chain=_text(annotations.get(CHAIN_ANNOTATION)),
            transparency=annotations.get(REKOR_ANNOTATION),
            envelope_bytes=raw,
        )
    return found


def _from_envelope(
    envelope: dict[str, Any],
    format: str,
    *,
    certificate: str | None,
    chain: str | None,
    transparency: object | None,
    bundle: bytes | None = None,
    envelope_bytes: bytes | None = None,
) -> list[FoundSignature]:
    """One signature per signature of a DSSE envelope (a bundle's or an `.att` layer's, whose
    bytes are `envelope_bytes`)."""
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        payload_type = str(envelope["payloadType"])
        listed = envelope["signatures"]
        if not isinstance(listed, list) or not listed:
            raise ValueError("no signatures")
        signatures = [
            base64.b64decode(entry["sig"], validate=True) for entry in listed[:MAX_SIGNATURES]
        ]
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error):
        noun = "signature" if format == "bundle" else "attestation"
        return [_unreadable(format, f"malformed {noun}: unreadable DSSE envelope")]
    return [
        FoundSignature(
            format,
            pae(payload_type, payload),
            signature,
            payload if payload_type == IN_TOTO else b"",
            certificate,
            transparency,
            bundle,
            chain,
            envelope=envelope_bytes,
        )
        for signature in signatures
    ]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


async def _bundles(
    client: registry.RegistryClient, host: str, repository: str, digest: str, deadline: float | None
) -> list[FoundSignature]:
    found = []
    referrers = await client.referrers(
        host, repository, digest, artifact_type=BUNDLE_V03, deadline=deadline
    )
    for descriptor in referrers[:MAX_SIGNATURES]:
        body, _ = await client.manifest(host, repository, descriptor.digest, deadline=deadline)
        layers = _json(body).get("layers")
        for layer in (layers if isinstance(layers, list) else [])[:1]:
            if not isinstance(layer, dict) or not isinstance(layer.get("digest"), str):
                found.append(_unreadable("bundle", "malformed signature: unreadable layer"))
                continue
            raw = await client.blob(host, repository, layer["digest"], deadline=deadline)
            found += _from_bundle(_json(raw), raw)
    return found


def _from_bundle(bundle: dict[str, Any], raw: bytes) -> list[FoundSignature]:
    """One signature per signature of the bundle's DSSE envelope: any one of them, by the
    authority, is a signature of the image (a valid one placed second counts too)."""
    envelope = bundle.get("dsseEnvelope")
    if bundle.get("mediaType") != BUNDLE_V03 or not isinstance(envelope, dict):
        return [
            _unreadable("bundle", "malformed signature: not a v0.3 bundle with a DSSE envelope")
        ]
    material = bundle.get("verificationMaterial")
    material = material if isinstance(material, dict) else {}
    certificate = material.get("certificate")
    certificate = certificate.get("rawBytes") if isinstance(certificate, dict) else None
    return _from_envelope(
        envelope,
        "bundle",
        certificate=_text(certificate),
        chain=None,
        transparency=material.get("tlogEntries") or None,
        bundle=raw,
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature is computed over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def verify_claims(found: FoundSignature, digest: str) -> None:
    """Raises WrongImage unless the signed claims name `digest`."""
    claims = _json(found.claims)
    if found.format == "legacy":
        if found.expected_predicate != COSIGN_PREDICATE:
            raise WrongImage("a signature, not an attestation")
        named = _field(claims, "critical", "image", "docker-manifest-digest")
        if named != digest:
            raise WrongImage(
                f"the signature is for {named or 'no image'}, not {digest} (digest mismatch)"
            )
        return
    wanted = found.expected_predicate
    if claims.get("predicateType") != wanted:
        what = "a cosign signature" if wanted == COSIGN_PREDICATE else wanted
        raise WrongImage(f"the bundle's predicate is {claims.get('predicateType')!r}, not {what}")
    algorithm, hex_digest = digest.split(":", 1)
    subjects = claims.get("subject")
    named_digests = [
        _field(s, "digest", algorithm) for s in (subjects if isinstance(subjects, list) else [])
    ]
    if hex_digest not in named_digests:
        raise WrongImage(f"the bundle's subject is not {digest} (digest mismatch)")


def _field(document: object, *path: str) -> object:
    """document[path[0]][path[1]]..., or None where a step is missing or not an object."""
    for name in path:
        document = document.get(name) if isinstance(document, dict) else None
    return document


def each_signature(
    found: Sequence[FoundSignature], check: Callable[[FoundSignature], None]
) -> None:
    """Returns when one signature passes `check`; raises why each failed otherwise."""

    def readable_and(signature: FoundSignature) -> None:
        if signature.malformed is not None:
            raise MalformedSignature(signature.malformed)
        check(signature)

    any_passes(found, readable_and)


def verify_with_key(
    found: Sequence[FoundSignature],
    key: PublicKey,
    digest: str,
    *,
    require_tlog: bool,
    trusted_root: Mapping[str, Any] | None = None,
) -> None:
    """Returns when one of the signatures verifies with `key` for `digest`; raises why not."""

    def check(signature: FoundSignature) -> None:
        verify_one_with_key(
            signature, key, digest, require_tlog=require_tlog, trusted_root=trusted_root
        )

    each_signature(found, check)


def verify_one_with_key(
    signature: FoundSignature,
    key: PublicKey,
    digest: str,
    *,
    require_tlog: bool,
    trusted_root: Mapping[str, Any] | None = None,
) -> None:
    if not key.verify(signature.signature, signature.signed):
        raise WrongKey("signature does not verify with the key")
    verify_claims(signature, digest)
    if not require_tlog:
        return
    if signature.transparency is None:
        raise BadTransparencyLogEntry(
            "signed by the key but not in a transparency log (set requireTransparencyLog: "
            "false for keys that sign without one)"
        )
    root = trusted_root if trusted_root is not None else roots.public_good_json()
    if signature.format in ("legacy", "attestation"):  # a SET in the layer's annotation
        rekor.verify_set(
            signature.transparency,
            signature.signed,
            signature.signature,
            key.der,
            root,
            envelope=signature.envelope,
        )
    else:
        rekor.verify_bundle_entries(
            signature.transparency, signature.claims, signature.signature, key.der, root
        )


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # attacker's bytes: nesting past the recursion limit too
        return {}
    return value if isinstance(value, dict) else {}
