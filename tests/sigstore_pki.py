"""A private Sigstore made by the test: Fulcio-like CAs, signing certificates, a Rekor-like log
that signs SETs, and the trusted_root.json naming them. No network: everything is local keys.

Certificates follow Fulcio's profile unless a test asks otherwise (a `Leaf`/`CA` field each), so
that a test changes exactly one thing about an otherwise valid chain.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from imagegate.registry import client
from imagegate.signatures import cosign

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
ISSUER = "https://issuer.example"
SIGNER = "signer@example.com"
DIGEST = "sha256:" + "ab" * 32
FULCIO_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
FULCIO_USERNAME = ObjectIdentifier("1.3.6.1.4.1.57264.1.7")


def der_utf8(text: str) -> bytes:
    data = text.encode()
    assert len(data) < 128
    return bytes([0x0C, len(data)]) + data


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def _builder(
    subject: x509.Name,
    issuer: Issued | None,
    key: ec.EllipticCurvePrivateKey,
    validity: tuple[datetime.datetime, datetime.datetime] | None = None,
) -> x509.CertificateBuilder:
    hour = datetime.timedelta(hours=1)
    not_before, not_after = validity or (NOW - hour, NOW + hour)
    public = key.public_key()
    signer_public = issuer.key.public_key() if issuer else public
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public), critical=False
        )
    )


def ca(
    name: str,
    issuer: Issued | None = None,
    *,
    path_length: int | None = None,
    key_cert_sign: bool = True,
) -> Issued:
    """A CA certificate, self-signed when `issuer` is None."""
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), issuer, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(key_cert_sign=key_cert_sign), critical=True)
    )
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA384()), key)


@dataclass
class Leaf:
    """How a signing certificate differs from Fulcio's profile (nothing, by default)."""

    email: str | None = SIGNER
    issuer: str = ISSUER
    is_ca: bool = False
    digital_signature: bool = True
    other_names: list[x509.OtherName] = field(default_factory=list)
    uris: list[str] = field(default_factory=list)
    extra: list[tuple[x509.ExtensionType, bool]] = field(default_factory=list)
    issuer_value: bytes | None = None
    #: (not before, not after); by default an hour either side of NOW.
    validity: tuple[datetime.datetime, datetime.datetime] | None = None


def leaf(issuer: Issued, shape: Leaf | None = None) -> Issued:
    shape = shape or Leaf()
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    if shape.email is not None:
        names.append(x509.RFC822Name(shape.email))
    names += [x509.UniformResourceIdentifier(uri) for uri in shape.uris]
    names += shape.other_names
    builder = (
        _builder(x509.Name([]), issuer, key, shape.validity)
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .add_extension(_key_usage(digital_signature=shape.digital_signature), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(
                FULCIO_ISSUER_V2, shape.issuer_value or der_utf8(shape.issuer)
            ),
            critical=False,
        )
    )
    if shape.is_ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    for extension, critical in shape.extra:
        builder = builder.add_extension(extension, critical=critical)
    return Issued(builder.sign(issuer.key, hashes.SHA384()), key)


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Log:
    """A Rekor-like log of the test's own: its key signs SETs over entries it is shown."""

    def __init__(self, *, valid_for: dict[str, str] | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.log_id = hashlib.sha256(spki(self.key.public_key())).digest()
        self.valid_for = {"start": "2020-01-01T00:00:00Z"} if valid_for is None else valid_for

    def tlog(self) -> dict[str, Any]:
        return {
            "baseUrl": "https://rekor.invalid",
            "hashAlgorithm": "SHA2_256",
            "logId": {"keyId": base64.b64encode(self.log_id).decode()},
            "publicKey": {
                "rawBytes": base64.b64encode(spki(self.key.public_key())).decode(),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": self.valid_for,
            },
        }

    def promise(
        self, body: dict[str, Any], *, index: int = 7, integrated_time: int | None = None
    ) -> dict[str, Any]:
        """The legacy annotation (`dev.sigstore.cosign/bundle`) for `body`, with a valid SET,
        integrated at NOW unless `integrated_time` says when."""
        encoded = base64.b64encode(json.dumps(body).encode()).decode()
        payload = {
            "body": encoded,
            "integratedTime": int(NOW.timestamp()) if integrated_time is None else integrated_time,
            "logID": self.log_id.hex(),
            "logIndex": index,
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        signed = self.key.sign(canonical, ec.ECDSA(hashes.SHA256()))
        return {"SignedEntryTimestamp": base64.b64encode(signed).decode(), "Payload": payload}

    def bundle_entry(self, body: dict[str, Any], *, index: int = 7) -> dict[str, Any]:
        """The same promise as a v0.3 bundle's `tlogEntries` item."""
        annotation = self.promise(body, index=index)
        payload = annotation["Payload"]
        return {
            "logIndex": str(payload["logIndex"]),
            "logId": {"keyId": base64.b64encode(self.log_id).decode()},
            "kindVersion": {"kind": body.get("kind"), "version": body.get("apiVersion")},
            "integratedTime": str(payload["integratedTime"]),
            "inclusionPromise": {"signedEntryTimestamp": annotation["SignedEntryTimestamp"]},
            "canonicalizedBody": payload["body"],
        }


def hashedrekord(payload: bytes, signature: bytes, signer_pem: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}},
            "signature": {
                "content": base64.b64encode(signature).decode(),
                "publicKey": {"content": base64.b64encode(signer_pem).decode()},
            },
        },
    }


def dsse(payload: bytes, signed: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """A `dsse` body for the envelope's payload and its (signature, verifier PEM) pairs."""
    return {
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": "00" * 32},
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": [
                {
                    "signature": base64.b64encode(signature).decode(),
                    "verifier": base64.b64encode(verifier).decode(),
                }
                for signature, verifier in signed
            ],
        },
    }


def _sha256(data: bytes) -> dict[str, str]:
    return {"algorithm": "sha256", "value": hashlib.sha256(data).hexdigest()}


def intoto_v001(envelope_json: bytes, signer_pem: bytes) -> dict[str, Any]:
    """The `intoto` 0.0.1 body Rekor logs for a DSSE envelope (the `.att` layer's bytes) and
    its signer's PEM (certificate or key)."""
    payload = base64.b64decode(json.loads(envelope_json)["payload"])
    return {
        "apiVersion": "0.0.1",
        "kind": "intoto",
        "spec": {
            "content": {"hash": _sha256(envelope_json), "payloadHash": _sha256(payload)},
            "publicKey": base64.b64encode(signer_pem).decode(),
        },
    }


def intoto_v002(envelope_json: bytes, signer_pems: list[bytes]) -> dict[str, Any]:
    """The `intoto` 0.0.2 body for a DSSE envelope and the PEM of each of its signers: each
    `sig` is the base64 of the envelope's (already base64) `sig` text, each key its PEM's."""
    document = json.loads(envelope_json)
    signatures = [
        {
            "keyid": entry.get("keyid", ""),
            "sig": base64.b64encode(entry["sig"].encode()).decode(),
            "publicKey": base64.b64encode(pem).decode(),
        }
        for entry, pem in zip(document["signatures"], signer_pems, strict=True)
    ]
    return {
        "apiVersion": "0.0.2",
        "kind": "intoto",
        "spec": {
            "content": {
                "envelope": {"payloadType": document["payloadType"], "signatures": signatures},
                "hash": _sha256(envelope_json),
                "payloadHash": _sha256(base64.b64decode(document["payload"])),
            }
        },
    }


def trust_root(
    chains: list[list[Issued]], logs: list[Log] | None = None, *, ct: bool = False
) -> dict[str, Any]:
    """A trusted_root.json: each chain (leaf-most CA first) a Fulcio CA, each log a tlog."""
    return {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [log.tlog() for log in logs or []],
        "certificateAuthorities": [
            {
                "subject": {"organization": "test", "commonName": "test"},
                "uri": "https://fulcio.invalid",
                "certChain": {
                    "certificates": [{"rawBytes": base64.b64encode(c.der).decode()} for c in chain]
                },
                "validFor": {"start": "2020-01-01T00:00:00Z"},
            }
            for chain in chains
        ],
        "ctlogs": [] if not ct else [{"placeholder": True}],
        "timestampAuthorities": [],
    }


def simple_signing(digest: str = DIGEST) -> bytes:
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "registry.invalid/app"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()


def legacy(
    signer: Issued,
    chain: list[Issued],
    log: Log | None = None,
    *,
    digest: str = DIGEST,
) -> cosign.FoundSignature:
    """A legacy `.sig` keyless signature by `signer`, logged (hashedrekord) when `log` is given."""
    payload = simple_signing(digest)
    signature = signer.key.sign(payload, ec.ECDSA(hashes.SHA256()))
    transparency = (
        json.dumps(log.promise(hashedrekord(payload, signature, signer.pem.encode())))
        if log
        else None
    )
    return cosign.FoundSignature(
        "legacy",
        payload,
        signature,
        payload,
        certificate=signer.pem,
        transparency=transparency,
        chain="".join(c.pem for c in chain),
    )


def statement(digest: str = DIGEST) -> bytes:
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "registry.invalid/app", "digest": {"sha256": digest[7:]}}],
            "predicateType": cosign.COSIGN_PREDICATE,
            "predicate": {},
        }
    ).encode()


def key_bundle(
    signers: list[ec.EllipticCurvePrivateKey],
    log: Log | None = None,
    *,
    digest: str = DIGEST,
    payload: bytes | None = None,
) -> dict[str, Any]:
    """A key-signed v0.3 bundle whose envelope holds one signature per signer, logged (one
    `dsse` entry naming every signature and its key) when `log` is given. `payload`: another
    in-toto statement than a cosign signature's (an attestation)."""
    payload = payload if payload is not None else statement(digest)
    signed = cosign.pae(cosign.IN_TOTO, payload)
    signatures = [s.sign(signed, ec.ECDSA(hashes.SHA256())) for s in signers]
    pairs = [(sig, spki_pem(s.public_key())) for sig, s in zip(signatures, signers, strict=True)]
    return {
        "mediaType": cosign.BUNDLE_V03,
        "verificationMaterial": {
            "publicKey": {"hint": ""},
            "tlogEntries": [log.bundle_entry(dsse(payload, pairs))] if log else [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": cosign.IN_TOTO,
            "signatures": [{"sig": base64.b64encode(sig).decode()} for sig in signatures],
        },
    }


def attestation_statement(
    predicate_type: str, predicate: dict[str, Any], digest: str = DIGEST
) -> bytes:
    """An in-toto statement of `predicate_type` about `digest`, as `cosign attest` writes it."""
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "subject": [{"name": "registry.invalid/app", "digest": {"sha256": digest[7:]}}],
            "predicateType": predicate_type,
            "predicate": predicate,
        }
    ).encode()


def envelope(payload: bytes, signers: list[ec.EllipticCurvePrivateKey]) -> dict[str, Any]:
    """A DSSE envelope around an in-toto `payload`, one signature per signer."""
    signed = cosign.pae(cosign.IN_TOTO, payload)
    return {
        "payloadType": cosign.IN_TOTO,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {
                "keyid": "",
                "sig": base64.b64encode(s.sign(signed, ec.ECDSA(hashes.SHA256()))).decode(),
            }
            for s in signers
        ],
    }


def att_layer(
    body: dict[str, Any] | bytes,
    *,
    certificate: str | None = None,
    chain: str | None = None,
    bundle: str | None = None,
) -> tuple[dict[str, Any], bytes]:
    """An `.att` manifest layer and its blob (a DSSE envelope, or raw bytes a hostile layer
    carries), with cosign's annotations (its signature annotation is empty, as cosign's)."""
    blob = body if isinstance(body, bytes) else json.dumps(body).encode()
    annotations = {cosign.SIGNATURE_ANNOTATION: ""}
    for name, value in (
        (cosign.CERTIFICATE_ANNOTATION, certificate),
        (cosign.CHAIN_ANNOTATION, chain),
        (cosign.REKOR_ANNOTATION, bundle),
    ):
        if value is not None:
            annotations[name] = value
    descriptor = {
        "mediaType": cosign.DSSE_ENVELOPE,
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "annotations": annotations,
    }
    return descriptor, blob


class Registry:
    """Serves an image's signatures the way cosign stores them: `.sig` layers (legacy), `.att`
    layers (legacy attestations) and v0.3 bundles as referrers. Only what `cosign.find` and
    `cosign.find_attestations` ask for; no network."""

    def __init__(
        self,
        legacy_layers: list[tuple[dict[str, Any], bytes]] | None = None,
        bundles: list[bytes] | None = None,
        attestation_layers: list[tuple[dict[str, Any], bytes]] | None = None,
    ) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        layers = []
        for descriptor, blob in legacy_layers or []:
            self.blobs[descriptor["digest"]] = blob
            layers.append(descriptor)
        self.sig_manifest = json.dumps({"layers": layers}).encode() if layers else None
        for descriptor, blob in attestation_layers or []:
            self.blobs[descriptor["digest"]] = blob
        att = [descriptor for descriptor, _ in attestation_layers or []]
        self.att_manifest = json.dumps({"layers": att}).encode() if att else None
        self.manifest_calls = 0
        self.referrer_digests = []
        for raw in bundles or []:
            blob_digest = self._digest(raw)
            self.blobs[blob_digest] = raw
            manifest = json.dumps(
                {"layers": [{"mediaType": cosign.BUNDLE_V03, "digest": blob_digest}]}
            ).encode()
            self.manifests[self._digest(manifest)] = manifest
            self.referrer_digests.append(self._digest(manifest))

    @staticmethod
    def _digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    async def manifest(self, _host: str, _repository: str, ref: str, **_: Any) -> tuple[bytes, Any]:
        self.manifest_calls += 1
        if ref.endswith(".att"):
            if self.att_manifest is None:
                raise client.ManifestUnknown(f"{ref} not found")
            return self.att_manifest, None
        if ref.endswith(".sig"):
            if self.sig_manifest is None:
                raise client.ManifestUnknown(f"{ref} not found")
            return self.sig_manifest, None
        return self.manifests[ref], None

    async def blob(self, _host: str, _repository: str, digest: str, **_: Any) -> bytes:
        return self.blobs[digest]

    async def referrers(self, *_: str, **__: Any) -> list[Any]:
        return [
            client.Descriptor(cosign.BUNDLE_V03, digest, 0, cosign.BUNDLE_V03)
            for digest in self.referrer_digests
        ]


def sig_layer(
    payload: bytes,
    signature: bytes | str,
    *,
    certificate: str | None = None,
    chain: str | None = None,
    bundle: str | None = None,
) -> tuple[dict[str, Any], bytes]:
    """A `.sig` manifest layer and its blob, with cosign's annotations. `signature` is the raw
    signature, or (a str) the annotation's text as written, which a hostile layer may garble."""
    text = signature if isinstance(signature, str) else base64.b64encode(signature).decode()
    annotations = {cosign.SIGNATURE_ANNOTATION: text}
    for name, value in (
        (cosign.CERTIFICATE_ANNOTATION, certificate),
        (cosign.CHAIN_ANNOTATION, chain),
        (cosign.REKOR_ANNOTATION, bundle),
    ):
        if value is not None:
            annotations[name] = value
    descriptor = {
        "mediaType": cosign.SIMPLE_SIGNING,
        "digest": "sha256:" + hashlib.sha256(payload + text.encode()).hexdigest(),
        "annotations": annotations,
    }
    return descriptor, payload
