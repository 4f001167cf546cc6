"""Every real signature under /work/shared/fixtures/signatures, tampered one part at a time.

For each fixture the untampered signature is the control (it verifies, or it is refused for the
reason its README gives); then a byte is flipped in its signature, its payload, its certificate
and its SET, and its log entry's integratedTime and logIndex are moved by one. Every variant
must be refused with a reason:

- by the check itself, which must raise a `SignatureFailure` (any other exception is a crash a
  verdict would only hide as "malformed"), and
- by the whole verifier (`CosignVerifier` on a registry serving the tampered signature), whose
  verdict must be a denial that names a reason.

A part a fixture does not have (a key signature has no certificate) yields no variant; the test
of the part list makes sure each fixture still gets every part it has.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import sigstore_pki as pki
from imagegate.core import keys
from imagegate.policy import engine, model
from imagegate.signatures import cosign, fulcio, keyless, roots
from imagegate.signatures.failures import SignatureFailure
from imagegate.signatures.verifier import CosignVerifier

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "signatures"
OAUTH = "https://github.com/login/oauth"
GITHUB_ACTIONS = "https://token.actions.githubusercontent.com"
PARTS = ("signature", "payload", "certificate", "SET", "integratedTime", "logIndex")


@dataclasses.dataclass(frozen=True)
class Case:
    """One real signature, how imagegate checks it, and what the untampered one gets."""

    found: cosign.FoundSignature
    digest: str
    needs: model.Signatures
    #: None when the untampered signature verifies; else the start of its refusal.
    refused_because: str | None = None


def _keyed(
    payload: bytes, signature_b64: str, key: Path, *, transparency: str | None = None
) -> Case:
    found = cosign.FoundSignature(
        "legacy", payload, base64.b64decode(signature_b64), payload, transparency=transparency
    )
    needs = model.Signatures.model_validate(
        {
            "keys": [{"publicKey": key.read_text()}],
            "requireTransparencyLog": transparency is not None,
        }
    )
    return Case(found, _legacy_digest(payload), needs)


def _legacy_digest(payload: bytes) -> str:
    return str(json.loads(payload)["critical"]["image"]["docker-manifest-digest"])


def _identity(issuer: str, **subject: str) -> model.Signatures:
    return model.Signatures.model_validate({"keyless": [{"issuer": issuer, **subject}]})


def _keyless_legacy(
    folder: Path, subject: str, *, payload: str = "payload.json", refused: str | None = None
) -> Case:
    chain = folder / "chain.pem"
    body = (folder / payload).read_bytes()
    signature = folder / "signature.b64"
    found = cosign.FoundSignature(
        "legacy",
        body,
        base64.b64decode(signature.read_text().strip()) if signature.exists() else b"",
        body,
        certificate=(folder / "cert.pem").read_text(),
        transparency=(folder / "bundle.json").read_text(),
        chain=chain.read_text() if chain.exists() and "BEGIN" in chain.read_text() else None,
    )
    digest = _legacy_digest(body) if refused is None else "sha256:" + "0" * 64
    return Case(found, digest, _identity(OAUTH, subject=subject), refused)


def _bundle(path: Path, digest: str, needs: model.Signatures, refused: str | None) -> Case:
    raw = path.read_bytes()
    return Case(cosign._from_bundle(json.loads(raw), raw)[0], digest, needs, refused)


def _cases(folder: Path) -> dict[str, Case]:
    connaisseur = folder / "connaisseur-keyed-testimage"
    cases = {}
    for digest, signers in (
        ("sha256:bfec161fecb0a887df7cb85e4da327c65986ccda7060cf3cd92171c6c90d7533", 3),
        ("sha256:071bf7a986f1ca9cb2a1f0bc8392822a7777f90d58f2d2c6f271913e08de7c81", 1),
    ):
        manifest = json.loads((connaisseur / f"{digest.replace(':', '-')}.sig.json").read_text())
        for layer, signer in zip(
            manifest["layers"], ["alice", "bob", "charlie"][:signers], strict=True
        ):
            payload = (connaisseur / f"payload-{layer['digest'].split(':')[1]}.json").read_bytes()
            signature = layer["annotations"][cosign.SIGNATURE_ANNOTATION]
            cases[f"connaisseur-keyed-{signer}-{digest[7:15]}"] = _keyed(
                payload, signature, connaisseur / f"{signer}.pub"
            )
    ratify = folder / "ratify-keyed-hello-world"
    for kind in ("ECDSAP256", "ECDSAP384", "RSA256", "RSA384"):
        cases[f"ratify-{kind}"] = _keyed(
            (ratify / "payload.json").read_bytes(),
            (ratify / f"signature-{kind}.b64").read_text().strip(),
            ratify / f"valid{kind}PubKey.pem",
        )
    rekor_keyed = folder / "containers-image-dir-img-cosign-key-rekor-valid"
    cases["containers-key-rekor"] = _keyed(
        (rekor_keyed / "payload.json").read_bytes(),
        (rekor_keyed / "signature.b64").read_text().strip(),
        rekor_keyed / "cosign2.pub",
        transparency=(rekor_keyed / "bundle.json").read_text(),
    )
    cases["connaisseur-keyless"] = _keyless_legacy(
        folder / "connaisseur-keyless-rekor-test", "philipp.belitz@securesystems.de"
    )
    cases["containers-fulcio-rekor"] = _keyless_legacy(
        folder / "containers-image-dir-img-cosign-fulcio-rekor-valid", "mitr@redhat.com"
    )
    cases["sigstore-rs-2021-no-sct"] = dataclasses.replace(
        _keyless_legacy(
            folder / "sigstore-rs-2021-rekord-disallow-service-nodeport", "flavio@castelli.me"
        ),
        refused_because="untrusted certificate: no valid SCT",
    )
    cases["slsa-attestation-as-sig"] = _keyless_legacy(
        folder / "slsa-verifier-container-provenance-v1.4.0",
        "unused",
        payload="dsse-envelope.json",
        refused="the signature does not verify with its certificate",
    )
    kubewarden = folder / "sigstore-rs-kubewarden-controller-v1.34.0-bundle-v0.3"
    cases["kubewarden-bundle"] = _bundle(
        kubewarden / "bundle_v03.json",
        "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172",
        _identity(
            GITHUB_ACTIONS,
            subject="https://github.com/kubewarden/kubewarden-controller/.github/workflows/"
            "release.yml@refs/tags/v1.34.0",
        ),
        None,
    )
    cases["cosign-attestation-bundle"] = _bundle(
        folder / "cosign-oci-attestation-bundle" / "oci-attestation.sigstore.json",
        "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4",
        _identity(OAUTH, subject="cody@soyland.com"),
        "the bundle's predicate is 'https://cosign.sigstore.dev/attestation/v1'",
    )
    return cases


CASES = _cases(FIXTURES) if FIXTURES.is_dir() else {}
pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"shared fixtures not found at {FIXTURES}"
)


# --- tampering ----------------------------------------------------------------------------------


def flip(data: bytes, at: int) -> bytes:
    """`data` with one bit of the byte at `at` flipped."""
    position = at % len(data)
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def _flip_b64(text: str, at: int) -> str:
    return base64.b64encode(flip(base64.b64decode(text), at)).decode()


def _pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def _tampered_legacy(found: cosign.FoundSignature, part: str) -> cosign.FoundSignature | None:
    replace = dataclasses.replace
    if part == "signature":
        return replace(found, signature=flip(found.signature, -1)) if found.signature else None
    if part == "payload":
        payload = flip(found.signed, len(found.signed) // 2)
        return replace(found, signed=payload, claims=payload)
    if part == "certificate":
        if found.certificate is None:
            return None
        der = x509.load_pem_x509_certificate(found.certificate.encode()).public_bytes(Encoding.DER)
        # The last byte is the CA's signature over the certificate: it still parses.
        return replace(found, certificate=_pem(flip(der, -1)))
    if not isinstance(found.transparency, str):
        return None
    annotation = json.loads(found.transparency)
    if part == "SET":
        annotation["SignedEntryTimestamp"] = _flip_b64(annotation["SignedEntryTimestamp"], -1)
    else:
        annotation["Payload"][part] += 1
    return replace(found, transparency=json.dumps(annotation))


def _tampered_bundle(found: cosign.FoundSignature, part: str) -> cosign.FoundSignature | None:
    assert found.bundle is not None
    bundle: dict[str, Any] = copy.deepcopy(json.loads(found.bundle))
    envelope, material = bundle["dsseEnvelope"], bundle["verificationMaterial"]
    entry = material["tlogEntries"][0]
    if part == "signature":
        envelope["signatures"][0]["sig"] = _flip_b64(envelope["signatures"][0]["sig"], -1)
    elif part == "payload":
        payload = base64.b64decode(envelope["payload"])
        envelope["payload"] = base64.b64encode(flip(payload, len(payload) // 2)).decode()
    elif part == "certificate":
        material["certificate"]["rawBytes"] = _flip_b64(material["certificate"]["rawBytes"], -1)
    elif part == "SET":
        promise = entry["inclusionPromise"]
        promise["signedEntryTimestamp"] = _flip_b64(promise["signedEntryTimestamp"], -1)
    else:
        entry[part] = str(int(entry[part]) + 1)
    raw = json.dumps(bundle).encode()
    return cosign._from_bundle(bundle, raw)[0]


def tampered(found: cosign.FoundSignature, part: str) -> cosign.FoundSignature | None:
    if found.format == "bundle":
        return _tampered_bundle(found, part)
    return _tampered_legacy(found, part)


VARIANTS = [
    pytest.param(name, part, id=f"{name}-{part}")
    for name, case in CASES.items()
    for part in PARTS
    if tampered(case.found, part) is not None
]


# --- the checks -----------------------------------------------------------------------------


def check(case: Case, found: cosign.FoundSignature) -> None:
    """The per-signature check the verifier makes for this requirement (no `any_passes` around
    it, so an exception other than a SignatureFailure surfaces)."""
    needs = case.needs
    if needs.keys:
        key = keys.load_public_key(str(needs.keys[0].public_key))
        cosign.verify_one_with_key(
            found, key, case.digest, require_tlog=needs.require_transparency_log
        )
    elif found.bundle is not None:
        keyless.verify_bundle(found.bundle, case.digest, needs.keyless[0], roots.public_good_root())
    else:
        fulcio.verify_legacy(
            found,
            case.digest,
            needs.keyless[0],
            roots.public_good_json(),
            roots.public_good_root(),
        )


def registry_serving(found: cosign.FoundSignature) -> pki.Registry:
    if found.bundle is not None:
        return pki.Registry(bundles=[found.bundle])
    layer = pki.sig_layer(
        found.signed,
        found.signature,
        certificate=found.certificate,
        chain=found.chain,
        bundle=found.transparency if isinstance(found.transparency, str) else None,
    )
    return pki.Registry([layer])


async def verdict(case: Case, found: cosign.FoundSignature) -> engine.SignatureVerdict:
    verifier = CosignVerifier(registry_serving(found))  # type: ignore[arg-type]
    request = engine.SignatureCheck(f"registry.invalid/app@{case.digest}", "p", "s", case.needs)
    return (await verifier.verify([request], time.monotonic() + 60))[request]


def _refusal(run: Callable[[], None]) -> str:
    with pytest.raises(SignatureFailure) as refused:
        run()
    reason = refused.value.user_message
    assert reason, "a refusal without a reason"
    return reason


@pytest.mark.parametrize("name", list(CASES))
async def test_the_untampered_fixture_is_the_control(name: str) -> None:
    case = CASES[name]
    result = await verdict(case, case.found)
    if case.refused_because is None:
        check(case, case.found)
        assert result == engine.SignatureVerdict(True, digest=case.digest)
    else:
        assert _refusal(lambda: check(case, case.found)).startswith(case.refused_because)
        assert not result.verified
        assert case.refused_because in result.reason


@pytest.mark.parametrize(("name", "part"), VARIANTS)
async def test_a_tampered_fixture_is_refused_with_a_reason(name: str, part: str) -> None:
    case = CASES[name]
    variant = tampered(case.found, part)
    assert variant is not None
    reason = _refusal(lambda: check(case, variant))
    if case.refused_because is not None and not name.startswith("slsa"):
        # Refused before: the tampering must be what is caught now, not the old reason again.
        assert not reason.startswith(case.refused_because), reason
    result = await verdict(case, variant)
    assert not result.verified
    assert result.reason.startswith(f"{case.digest}: ")
    assert len(result.reason) > len(f"{case.digest}: ") + 10, result.reason


def test_every_fixture_gets_a_variant_for_each_part_it_has() -> None:
    """The variants exist: a key signature without a log still has a signature and payload,
    one with a log its SET, times and index, a keyless one all six."""
    parts: dict[str, set[str]] = {}
    for variant in VARIANTS:
        name, part = variant.values
        parts.setdefault(str(name), set()).add(str(part))
    for name, case in CASES.items():
        expected = {"payload"}
        if case.found.signature or case.found.bundle:
            expected.add("signature")
        if case.found.certificate is not None:
            expected.add("certificate")
        if case.found.transparency is not None:
            expected |= {"SET", "integratedTime", "logIndex"}
        assert parts[name] == expected, name
    folders = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    covered = {re.sub(r"-.*", "", name) for name in CASES}
    assert {re.sub(r"-.*", "", folder) for folder in folders} <= covered | {"public"}


def _flip_key_byte(certificate_b64: str) -> str:
    der = base64.b64decode(certificate_b64)
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(flip(der, der.index(spki) + len(spki) - 1)).decode()


# --- the trust root fixture ---------------------------------------------------------------------

TRUST_ROOT_PARTS = {
    "the Rekor key": ("tlogs", "publicKey", "bad SET: "),
    "the Fulcio CA": ("certificateAuthorities", "certChain", "untrusted CA"),
    "the CT log key": ("ctlogs", "publicKey", "untrusted certificate: no valid SCT"),
}


@pytest.mark.parametrize("part", TRUST_ROOT_PARTS)
def test_a_tampered_public_good_root_refuses_a_real_signature(part: str) -> None:
    """public-good-trusted_root.json with a byte flipped in one of the keys or certificates a
    real legacy keyless signature relies on."""
    section, field, reason = TRUST_ROOT_PARTS[part]
    document: dict[str, Any] = json.loads((FIXTURES / "public-good-trusted_root.json").read_text())
    for item in document[section]:
        if field == "certChain":
            # In the CA's key: an anchor's own signature is never checked, its key is what counts.
            for certificate in item["certChain"]["certificates"]:
                certificate["rawBytes"] = _flip_key_byte(certificate["rawBytes"])
        else:
            item["publicKey"]["rawBytes"] = _flip_b64(item["publicKey"]["rawBytes"], -1)
    case = CASES["connaisseur-keyless"]
    text = json.dumps(document)
    root = roots.custom(text)
    found = _refusal(
        lambda: fulcio.verify_legacy(
            case.found, case.digest, case.needs.keyless[0], root.document, root.parsed
        )
    )
    assert reason in found, found
    untouched = roots.custom((FIXTURES / "public-good-trusted_root.json").read_text())
    fulcio.verify_legacy(
        case.found, case.digest, case.needs.keyless[0], untouched.document, untouched.parsed
    )
