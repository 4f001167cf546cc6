"""sigstore-conformance-style cases, run through the whole verifier (`CosignVerifier`).

sigstore-conformance drives a client with bundles and a trust root and asks for "verifies" or
"fails". Its material comes from a live Sigstore; here each case is built by the test from
locally made CAs, keys and a log of its own (named by a trust root served as a ConfigMap), or
from the public-good trust root where the case is about that root. No network.

Each case names what it covers; a refusal names the reason the verdict must contain.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ObjectIdentifier

import sigstore_pki as pki
from imagegate.policy import engine, model
from imagegate.signatures import cosign, roots
from imagegate.signatures.verifier import CosignVerifier


@dataclass
class Scenario:
    registry: pki.Registry
    needs: dict[str, Any]
    #: The trusted_root.json the policy names; None for the public-good root.
    trust_root: dict[str, Any] | None


class ConfigMaps:
    """The cluster material the verifier reads: only the policy's trust root."""

    def __init__(self, trust_root: dict[str, Any]) -> None:
        self.text = json.dumps(trust_root)

    async def read(self, namespace: str, name: str, key: str) -> bytes:
        raise AssertionError("no Secret is read in these cases")

    async def read_config_map(self, namespace: str, name: str, key: str) -> str:
        return self.text


async def run(scenario: Scenario) -> engine.SignatureVerdict:
    needs = dict(scenario.needs)
    secrets = None
    if scenario.trust_root is not None:
        needs["trustRoot"] = {"configMapRef": {"name": "sigstore-root"}}
        secrets = ConfigMaps(scenario.trust_root)
    verifier = CosignVerifier(scenario.registry, secrets=secrets)  # type: ignore[arg-type]
    check = engine.SignatureCheck(
        f"registry.invalid/app@{pki.DIGEST}", "p", "s", model.Signatures.model_validate(needs)
    )
    return (await verifier.verify([check], time.monotonic() + 30))[check]


def keyless_needs(subject: str = pki.SIGNER, issuer: str = pki.ISSUER) -> dict[str, Any]:
    return {"keyless": [{"issuer": issuer, "subject": subject}]}


def key_needs(key: ec.EllipticCurvePrivateKey, **more: Any) -> dict[str, Any]:
    return {"keys": [{"publicKey": pki.spki_pem(key.public_key()).decode()}], **more}


def served(found: cosign.FoundSignature) -> pki.Registry:
    assert isinstance(found.transparency, str | None)
    layer = pki.sig_layer(
        found.signed,
        found.signature,
        certificate=found.certificate,
        chain=found.chain,
        bundle=found.transparency,
    )
    return pki.Registry([layer])


def bundles(*documents: dict[str, Any]) -> pki.Registry:
    return pki.Registry(bundles=[json.dumps(d).encode() for d in documents])


# --- keyless, legacy `.sig` -----------------------------------------------------------------


def _fulcio() -> tuple[pki.Issued, pki.Issued]:
    root = pki.ca("conformance fulcio root")
    return root, pki.ca("conformance fulcio intermediate", root, path_length=0)


def keyless_case(
    shape: pki.Leaf | None = None,
    *,
    needs: dict[str, Any] | None = None,
    log: pki.Log | None = None,
) -> Scenario:
    root, intermediate = _fulcio()
    log = log or pki.Log()
    signer = pki.leaf(intermediate, shape)
    found = pki.legacy(signer, [intermediate, root], log)
    return Scenario(
        served(found), needs or keyless_needs(), pki.trust_root([[intermediate, root]], [log])
    )


def rogue_root() -> Scenario:
    """The signer made a root and intermediate of their own, named like the trusted ones."""
    root, intermediate = _fulcio()
    rogue = pki.ca("conformance fulcio root")
    rogue_intermediate = pki.ca("conformance fulcio intermediate", rogue, path_length=0)
    log = pki.Log()
    found = pki.legacy(pki.leaf(rogue_intermediate), [rogue_intermediate, rogue], log)
    return Scenario(served(found), keyless_needs(), pki.trust_root([[intermediate, root]], [log]))


def local_chain_against_public_good() -> Scenario:
    """A locally made Fulcio look-alike is not the public-good Fulcio."""
    root, intermediate = _fulcio()
    found = pki.legacy(pki.leaf(intermediate), [intermediate, root], None)
    needs = {**keyless_needs(), "requireTransparencyLog": False}
    return Scenario(served(found), needs, None)


def fulcio_ca_without_start() -> Scenario:
    """A trust root whose Fulcio CA has no validFor.start: it cannot vouch for any time."""
    scenario = keyless_case()
    assert scenario.trust_root is not None
    for authority in scenario.trust_root["certificateAuthorities"]:
        authority["validFor"] = {}
    return scenario


def expired_at_signing() -> Scenario:
    hour = datetime.timedelta(hours=1)
    return keyless_case(pki.Leaf(validity=(pki.NOW - 3 * hour, pki.NOW - 2 * hour)))


# --- key signatures, legacy `.sig` with a SET -------------------------------------------------


def key_legacy(
    *,
    log: pki.Log | None = None,
    body: Callable[[bytes, bytes, bytes], dict[str, Any]] = pki.hashedrekord,
    signer_pem: Callable[[ec.EllipticCurvePrivateKey], bytes] | None = None,
    payload_digest: str = pki.DIGEST,
    public_good: bool = False,
    signer: ec.EllipticCurvePrivateKey | None = None,
) -> Scenario:
    log = log or pki.Log()
    signer = signer or ec.generate_private_key(ec.SECP256R1())
    payload = pki.simple_signing(payload_digest)
    signature = signer.sign(payload, ec.ECDSA(hashes.SHA256()))
    logged_pem = signer_pem(signer) if signer_pem else pki.spki_pem(signer.public_key())
    annotation = log.promise(body(payload, signature, logged_pem))
    found = cosign.FoundSignature(
        "legacy", payload, signature, payload, transparency=json.dumps(annotation)
    )
    root = None if public_good else pki.trust_root([], [log])
    return Scenario(served(found), key_needs(signer), root)


def sha512_hashedrekord(payload: bytes, signature: bytes, pem: bytes) -> dict[str, Any]:
    body = pki.hashedrekord(payload, signature, pem)
    body["spec"]["data"]["hash"]["algorithm"] = "sha512"
    return body


class _PublicRekorImpostor(pki.Log):
    """A log key of the test's own that claims to be public-good Rekor (its logID)."""

    def __init__(self) -> None:
        super().__init__()
        rekor = roots.public_good_json()["tlogs"][0]["logId"]["keyId"]
        self.log_id = base64.b64decode(rekor)


def logged_with_certificate() -> Scenario:
    """`cosign sign --key k --certificate c`: the entry carries c, whose key is k."""
    certified = pki.leaf(pki.ca("any ca"))
    return key_legacy(signer=certified.key, signer_pem=lambda _: certified.pem.encode())


def logged_with_another_certificate() -> Scenario:
    stranger = pki.leaf(pki.ca("any ca"))
    return key_legacy(signer_pem=lambda _: stranger.pem.encode())


# --- key-signed v0.3 bundles --------------------------------------------------------------------


def key_bundle(
    edit: Callable[[dict[str, Any], pki.Log, list[ec.EllipticCurvePrivateKey]], None] | None = None,
    *,
    signers: int = 1,
    policy_key: int = 0,
    digest: str = pki.DIGEST,
) -> Scenario:
    log = pki.Log()
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(signers)]
    document = pki.key_bundle(keys, log, digest=digest)
    if edit:
        edit(document, log, keys)
    return Scenario(bundles(document), key_needs(keys[policy_key]), pki.trust_root([], [log]))


def _bad_entry_first(document: dict[str, Any], *_: Any) -> None:
    entries = document["verificationMaterial"]["tlogEntries"]
    bad = json.loads(json.dumps(entries[0]))
    bad["logIndex"] = str(int(bad["logIndex"]) + 1)
    entries.insert(0, bad)


def _no_envelope_hash(
    document: dict[str, Any], log: pki.Log, keys: list[ec.EllipticCurvePrivateKey]
) -> None:
    envelope = document["dsseEnvelope"]
    pairs = [
        (base64.b64decode(s["sig"]), pki.spki_pem(k.public_key()))
        for s, k in zip(envelope["signatures"], keys, strict=True)
    ]
    body = pki.dsse(base64.b64decode(envelope["payload"]), pairs)
    del body["spec"]["envelopeHash"]
    document["verificationMaterial"]["tlogEntries"] = [log.bundle_entry(body)]


def _no_entries(document: dict[str, Any], *_: Any) -> None:
    document["verificationMaterial"]["tlogEntries"] = []


CASES: dict[str, tuple[Callable[[], Scenario], str | None]] = {
    # keyless
    "keyless legacy signature, chain and SET valid": (keyless_case, None),
    "keyless: another subject": (
        lambda: keyless_case(needs=keyless_needs("other@example.com")),
        "wrong identity: certificate subject is signer@example.com",
    ),
    "keyless: another issuer": (
        lambda: keyless_case(needs=keyless_needs(issuer="https://other.example")),
        "wrong identity: certificate issuer is 'https://issuer.example'",
    ),
    "keyless: identity only in a foreign otherName": (
        lambda: keyless_case(
            pki.Leaf(
                email=None,
                other_names=[
                    x509.OtherName(
                        ObjectIdentifier("1.3.6.1.4.1.99999.7"), pki.der_utf8(pki.SIGNER)
                    )
                ],
            )
        ),
        "wrong identity: certificate subject is empty",
    ),
    "keyless: leaf expired before integratedTime": (
        expired_at_signing,
        "untrusted certificate: not valid when the log saw the signature",
    ),
    "keyless: leaf is a CA": (
        lambda: keyless_case(pki.Leaf(is_ca=True)),
        "untrusted certificate: a CA certificate",
    ),
    "keyless: leaf without digitalSignature": (
        lambda: keyless_case(pki.Leaf(digital_signature=False)),
        "untrusted certificate: not issued for digital signatures",
    ),
    "keyless: rogue self-signed root in the presented chain": (
        rogue_root,
        "untrusted CA: the certificate does not chain to a trusted root",
    ),
    "keyless: local CA against the public-good root": (
        local_chain_against_public_good,
        "untrusted CA: the certificate does not chain to a trusted root",
    ),
    "keyless: log key without validFor.start": (
        lambda: keyless_case(log=pki.Log(valid_for={})),
        "no validFor.start",
    ),
    "keyless: Fulcio CA without validFor.start": (
        fulcio_ca_without_start,
        "untrusted CA: the certificate does not chain to a trusted root",
    ),
    # key, legacy
    "key legacy signature with a valid SET": (key_legacy, None),
    "key: SET by an impostor claiming public-good Rekor's logID": (
        lambda: key_legacy(log=_PublicRekorImpostor(), public_good=True),
        "bad SET: the log's signature does not verify",
    ),
    "key: log key that expired before integratedTime": (
        lambda: key_legacy(
            log=pki.Log(valid_for={"start": "2020-01-01T00:00:00Z", "end": "2021-01-01T00:00:00Z"})
        ),
        "bad SET: the log that signed it is not in the trust root (or was not valid then)",
    ),
    "key: log key without validFor.start": (
        lambda: key_legacy(log=pki.Log(valid_for={})),
        "no validFor.start",
    ),
    "key: hashedrekord hash algorithm sha512": (
        lambda: key_legacy(body=sha512_hashedrekord),
        "payload hash is 'sha512', not sha256",
    ),
    "key: signed for another image": (
        lambda: key_legacy(payload_digest="sha256:" + "cd" * 32),
        "(digest mismatch)",
    ),
    "key: logged with the signer's certificate": (logged_with_certificate, None),
    "key: logged with another key's certificate": (
        logged_with_another_certificate,
        "bad SET: the log entry names another key",
    ),
    # key, bundles
    "key-signed bundle with a valid entry": (key_bundle, None),
    "key bundle: a bad entry before a good one": (
        lambda: key_bundle(_bad_entry_first),
        "bad SET: the log's signature does not verify (log entry 1 of 2)",
    ),
    "key bundle: the policy key's signature is second in the envelope": (
        lambda: key_bundle(signers=2, policy_key=1),
        None,
    ),
    "key bundle: dsse entry without envelopeHash": (
        lambda: key_bundle(_no_envelope_hash),
        "bad SET: the log entry's body is malformed",
    ),
    "key bundle: no log entry": (
        lambda: key_bundle(_no_entries),
        "not in a transparency log",
    ),
    "key bundle: signed for another image": (
        lambda: key_bundle(digest="sha256:" + "cd" * 32),
        "(digest mismatch)",
    ),
    "no signature at all": (
        lambda: Scenario(pki.Registry(), keyless_needs(), None),
        "no signature found",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_conformance_case(name: str) -> None:
    build, refusal = CASES[name]
    verdict = await run(build())
    if refusal is None:
        assert verdict == engine.SignatureVerdict(True, digest=pki.DIGEST), verdict.reason
    else:
        assert not verdict.verified
        assert refusal in verdict.reason, verdict.reason
