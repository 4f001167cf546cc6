"""Attestations (design.md §9) through `CosignVerifier` with an in-memory registry: `.att`
layers and v0.3 bundles, signed with locally made keys, bound to the digest, judged on their
own, and never taken for a signature (nor a signature for one)."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import sigstore_pki as pki
from imagegate.core.workloads import ContainerImage
from imagegate.policy import compile, engine, model
from imagegate.signatures import cosign
from imagegate.signatures.cache import VerdictCache
from imagegate.signatures.failures import SignatureFailure
from imagegate.signatures.verifier import CosignVerifier

HOST, REPOSITORY = "registry.test", "team/app"
IMAGE = f"{HOST}/{REPOSITORY}@{pki.DIGEST}"
PROVENANCE = "https://slsa.dev/provenance/v0.2"
BUILDER = "https://ci.example/builder"
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)

SIGNER = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())


def key_authorities(key: ec.EllipticCurvePrivateKey = SIGNER) -> dict[str, Any]:
    return {
        "keys": [{"publicKey": pki.spki_pem(key.public_key()).decode()}],
        "requireTransparencyLog": False,
    }


def provenance(builder: str = BUILDER) -> dict[str, Any]:
    return {
        "builder": {"id": builder},
        "buildType": "https://ci.example/build@v1",
        "invocation": {"configSource": {"uri": "git+https://git.example/team/app@refs/heads/main"}},
    }


def att(
    predicate_type: str = PROVENANCE,
    predicate: dict[str, Any] | None = None,
    *,
    signer: ec.EllipticCurvePrivateKey = SIGNER,
    digest: str = pki.DIGEST,
) -> tuple[dict[str, Any], bytes]:
    statement = pki.attestation_statement(predicate_type, predicate or provenance(), digest)
    return pki.att_layer(pki.envelope(statement, [signer]))


def requirement(**fields: Any) -> model.Attestation:
    return model.Attestation.model_validate(
        {"predicateType": "slsaprovenance", "authorities": key_authorities(), **fields}
    )


async def verdict(
    registry: pki.Registry,
    attestations: tuple[model.Attestation, ...] = (requirement(),),
    signatures: model.Signatures | None = None,
    *,
    verifier: CosignVerifier | None = None,
) -> engine.SignatureVerdict:
    verifier = verifier or CosignVerifier(registry, now=lambda: NOW)  # type: ignore[arg-type]
    check = engine.SignatureCheck(IMAGE, "p", "s", signatures, None, attestations)
    return (await verifier.verify([check], time.monotonic() + 30))[check]


async def test_a_key_signed_provenance_att_with_the_wanted_builder_is_verified() -> None:
    wanted = requirement(provenance={"builderId": BUILDER})
    result = await verdict(pki.Registry(attestation_layers=[att()]), (wanted,))
    assert result.verified, result.reason
    assert result.digest == pki.DIGEST


async def test_a_wrong_builder_is_denied_naming_attestation_condition_and_value() -> None:
    wanted = requirement(provenance={"builderId": BUILDER})
    layers = [att(predicate=provenance("https://evil.example/builder"))]
    result = await verdict(pki.Registry(attestation_layers=layers), (wanted,))
    assert not result.verified
    assert result.failed == "attestation"
    assert result.reason == (
        f"{pki.DIGEST}: attestation {PROVENANCE}: builder.id is https://evil.example/builder, "
        f"policy wants {BUILDER}"
    )


async def test_a_builder_regexp_is_anchored() -> None:
    wanted = requirement(provenance={"builderIdRegExp": "https://ci\\.example/.*"})
    layers = [att(predicate=provenance("https://evil.example/?https://ci.example/x"))]
    assert not (await verdict(pki.Registry(attestation_layers=layers), (wanted,))).verified
    assert (await verdict(pki.Registry(attestation_layers=[att()]), (wanted,))).verified


async def test_an_attestation_signed_by_another_key_is_denied() -> None:
    result = await verdict(pki.Registry(attestation_layers=[att(signer=OTHER)]))
    assert not result.verified
    assert "signature does not verify with the key" in result.reason


async def test_an_attestation_of_another_image_is_denied() -> None:
    layers = [att(digest="sha256:" + "cd" * 32)]
    result = await verdict(pki.Registry(attestation_layers=layers))
    assert not result.verified
    assert "digest mismatch" in result.reason


async def test_a_malformed_att_layer_is_a_reason_and_hides_no_valid_one() -> None:
    garbled = pki.att_layer(b"{not json")
    assert (await verdict(pki.Registry(attestation_layers=[garbled, att()]))).verified
    alone = await verdict(pki.Registry(attestation_layers=[garbled]))
    assert not alone.verified
    assert "malformed attestation: unreadable DSSE envelope" in alone.reason


async def test_an_att_that_is_only_a_provenance_never_satisfies_a_signature_requirement() -> None:
    signatures = model.Signatures.model_validate(key_authorities())
    registry = pki.Registry(attestation_layers=[att()])
    result = await verdict(registry, (), signatures)
    assert not result.verified
    assert result.failed == "signature"
    # ... nor does the same provenance as a v0.3 bundle referrer.
    statement = pki.attestation_statement(PROVENANCE, provenance())
    bundle = json.dumps(pki.key_bundle([SIGNER], payload=statement)).encode()
    result = await verdict(pki.Registry(bundles=[bundle]), (), signatures)
    assert not result.verified
    assert "not a cosign signature" in result.reason


async def test_a_signature_never_satisfies_an_attestation_requirement() -> None:
    payload = pki.simple_signing()
    signature = SIGNER.sign(payload, ec.ECDSA(pki.hashes.SHA256()))
    bundle = json.dumps(pki.key_bundle([SIGNER])).encode()
    registry = pki.Registry([pki.sig_layer(payload, signature)], [bundle])
    signatures = model.Signatures.model_validate(key_authorities())
    assert (await verdict(registry, (), signatures)).verified  # they are valid signatures
    result = await verdict(registry, (requirement(),), signatures)
    assert not result.verified
    assert result.failed == "attestation"
    assert result.reason == f"{pki.DIGEST}: attestation {PROVENANCE}: none found"


def test_a_legacy_signature_found_as_an_attestation_is_refused() -> None:
    """Defence in depth: even if a `.sig` layer reached the attestation path, it fails."""
    payload = pki.simple_signing()
    found = cosign.FoundSignature("legacy", payload, b"", payload, expected_predicate=PROVENANCE)
    with pytest.raises(cosign.WrongImage, match="a signature, not an attestation"):
        cosign.verify_claims(found, pki.DIGEST)


async def test_a_provenance_in_a_v03_bundle_is_verified() -> None:
    statement = pki.attestation_statement(PROVENANCE, provenance())
    bundle = json.dumps(pki.key_bundle([SIGNER], payload=statement)).encode()
    assert (await verdict(pki.Registry(bundles=[bundle]))).verified


async def test_attestations_default_to_the_sources_signature_authorities() -> None:
    signatures = model.Signatures.model_validate(key_authorities())
    payload = pki.simple_signing()
    sig = pki.sig_layer(payload, SIGNER.sign(payload, ec.ECDSA(pki.hashes.SHA256())))
    bare = model.Attestation.model_validate({"predicateType": "slsaprovenance"})
    registry = pki.Registry([sig], attestation_layers=[att()])
    assert (await verdict(registry, (bare,), signatures)).verified
    registry = pki.Registry([sig], attestation_layers=[att(signer=OTHER)])
    assert not (await verdict(registry, (bare,), signatures)).verified


SBOM = "https://spdx.dev/Document"


async def test_a_stale_sbom_is_denied_with_its_date() -> None:
    wanted = requirement(predicateType="spdx", maxAgeDays=30)
    old = att(
        SBOM, {"spdxVersion": "SPDX-2.3", "creationInfo": {"created": "2026-01-01T00:00:00Z"}}
    )
    result = await verdict(pki.Registry(attestation_layers=[old]), (wanted,))
    assert not result.verified
    assert result.reason.endswith(
        f"attestation {SBOM}: creationInfo.created is 2026-01-01T00:00:00Z (151 days old), "
        "policy wants at most 30 days"
    )
    fresh = att(SBOM, {"creationInfo": {"created": "2026-05-20T00:00:00Z"}})
    assert (await verdict(pki.Registry(attestation_layers=[old, fresh]), (wanted,))).verified


VULN = "https://cosign.sigstore.dev/attestation/vuln/v1"
OPENVEX = "https://openvex.dev/ns"


def scan(finished: str, *findings: tuple[str, str]) -> dict[str, Any]:
    vulnerabilities = [{"VulnerabilityID": i, "Severity": s} for i, s in findings]
    return {
        "scanner": {
            "uri": "trivy",
            "result": {
                "SchemaVersion": 2,
                "Results": [{"Target": "app", "Vulnerabilities": vulnerabilities}],
            },
        },
        "metadata": {"scanStartedOn": finished, "scanFinishedOn": finished},
    }


async def test_a_critical_finding_is_denied_unless_vex_says_not_affected() -> None:
    wanted = requirement(predicateType="vuln", maxAgeDays=7, failOnSeverity="HIGH")
    critical = att(VULN, scan("2026-05-31T00:00:00Z", ("CVE-2026-1", "CRITICAL"), ("CVE-2", "LOW")))
    result = await verdict(pki.Registry(attestation_layers=[critical]), (wanted,))
    assert not result.verified
    assert f"attestation {VULN}: findings CVE-2026-1 (CRITICAL), policy wants none at HIGH" in (
        result.reason
    )
    vex = att(
        OPENVEX,
        {"statements": [{"vulnerability": {"name": "CVE-2026-1"}, "status": "not_affected"}]},
    )
    assert (await verdict(pki.Registry(attestation_layers=[critical, vex]), (wanted,))).verified
    forged = att(
        OPENVEX,
        {"statements": [{"vulnerability": {"name": "CVE-2026-1"}, "status": "not_affected"}]},
        signer=OTHER,
    )
    assert not (
        await verdict(pki.Registry(attestation_layers=[critical, forged]), (wanted,))
    ).verified


async def test_only_the_newest_scan_counts() -> None:
    wanted = requirement(predicateType="vuln", failOnSeverity="CRITICAL")
    clean = att(VULN, scan("2026-05-01T00:00:00Z"))
    newer = att(VULN, scan("2026-05-30T00:00:00Z", ("CVE-2026-9", "CRITICAL")))
    assert not (await verdict(pki.Registry(attestation_layers=[clean, newer]), (wanted,))).verified
    assert (await verdict(pki.Registry(attestation_layers=[clean]), (wanted,))).verified


async def test_a_scan_report_imagegate_cannot_read_is_denied() -> None:
    wanted = requirement(predicateType="vuln", failOnSeverity="CRITICAL")
    odd = att(VULN, {"scanner": {"result": {"whatever": []}}})
    result = await verdict(pki.Registry(attestation_layers=[odd]), (wanted,))
    assert not result.verified
    assert "not a Trivy or Grype report" in result.reason


async def test_verdicts_are_cached_per_digest_and_requirement() -> None:
    registry = pki.Registry(attestation_layers=[att()])
    cache = VerdictCache()
    verifier = CosignVerifier(registry, cache, now=lambda: NOW)  # type: ignore[arg-type]
    assert (await verdict(registry, verifier=verifier)).verified
    calls = registry.manifest_calls
    assert (await verdict(registry, verifier=verifier)).verified
    assert registry.manifest_calls == calls
    assert cache.hits == 1
    other = requirement(provenance={"builderId": "https://other.example"})
    assert not (await verdict(registry, (other,), verifier=verifier)).verified


def test_the_engine_asks_for_attestations_and_names_them_in_the_denial() -> None:
    spec = model.PolicySpec.model_validate(
        {
            "sources": [
                {
                    "name": "s",
                    "images": [f"{HOST}/**"],
                    "attestations": [
                        {"predicateType": "slsaprovenance", "authorities": key_authorities()}
                    ],
                }
            ]
        }
    )
    policy = compile.compile_spec("p", None, spec)
    planned = engine.plan_rewrites(
        [ContainerImage("containers", 0, "c", IMAGE, "/spec/containers/0/image")], [policy]
    )
    (check,) = engine.signature_checks(planned, [policy])
    assert check.requirement is None
    assert check.attestations == spec.sources[0].attestations
    denied = engine.SignatureVerdict(False, "attestation x: none found", failed="attestation")
    decision = engine.evaluate(planned, [policy], {check: denied})
    assert "attestation verification failed for source s: attestation x: none found" in (
        decision.denial_message()
    )
    assert engine.evaluate(planned, [policy], {check: engine.SignatureVerdict(True)}).allowed


def test_the_model_refuses_conditions_that_do_not_fit_the_type() -> None:
    authorities = key_authorities()
    for bad, reason in (
        ({"predicateType": "spdx", "provenance": {"builderId": "x"}}, "only to SLSA"),
        ({"predicateType": "slsaprovenance", "maxAgeDays": 3}, "only to SBOMs"),
        ({"predicateType": "spdx", "failOnSeverity": "HIGH"}, "only to vuln"),
        ({"predicateType": "nonsense"}, "unknown predicate type"),
        ({"predicateType": cosign.COSIGN_PREDICATE}, "not an attestation"),
    ):
        with pytest.raises(ValueError, match=reason):
            model.Attestation.model_validate({**bad, "authorities": authorities})
    with pytest.raises(ValueError, match="name authorities"):
        model.Source.model_validate(
            {"name": "s", "images": ["x/**"], "attestations": [{"predicateType": "spdx"}]}
        )
    assert (
        model.Attestation.model_validate(
            {"predicateType": "slsaprovenance1", "authorities": authorities}
        ).predicate_uri
        == "https://slsa.dev/provenance/v1"
    )


def test_a_v1_provenance_reads_builder_repository_and_ref() -> None:
    from imagegate.signatures import predicates

    v1 = {
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {
                "workflow": {"repository": "https://github.com/team/app", "ref": "refs/tags/v1"}
            },
        },
        "runDetails": {"builder": {"id": "https://github.com/actions/runner"}},
    }
    fields = predicates.provenance_fields(v1)
    assert fields["builderId"] == ("runDetails.builder.id", "https://github.com/actions/runner")
    assert fields["sourceRepository"][1] == "https://github.com/team/app"
    assert fields["ref"][1] == "refs/tags/v1"
    v02 = predicates.provenance_fields(provenance())
    assert v02["sourceRepository"][1] == "https://git.example/team/app"
    assert v02["ref"][1] == "refs/heads/main"


async def test_an_sbom_stored_as_text_is_read_too() -> None:
    """`cosign attest --type spdx` stores the file as a string: JSON or SPDX tag-value."""
    wanted = requirement(predicateType="spdx", maxAgeDays=30)
    statement = pki.attestation_statement(SBOM, {})
    for text, fresh in (
        ("SPDXVersion: SPDX-2.3\nCreated: 2026-05-30T00:00:00Z\n", True),
        ("SPDXVersion: SPDX-2.3\nCreated: 2025-05-30T00:00:00Z\n", False),
        (json.dumps({"creationInfo": {"created": "2026-05-30T00:00:00Z"}}), True),
    ):
        document = {**json.loads(statement), "predicate": text}
        layer = pki.att_layer(pki.envelope(json.dumps(document).encode(), [SIGNER]))
        result = await verdict(pki.Registry(attestation_layers=[layer]), (wanted,))
        assert result.verified is fresh, result.reason


# --- keyless, and the transparency log ----------------------------------------------------------


async def keyless_found(signer: pki.Issued, chain: list[pki.Issued], **annotations: str) -> Any:
    statement = pki.attestation_statement(PROVENANCE, provenance())
    layer = pki.att_layer(
        pki.envelope(statement, [signer.key]),
        certificate=signer.pem,
        chain="".join(c.pem for c in chain),
        **annotations,
    )
    registry = pki.Registry(attestation_layers=[layer])
    return await cosign.find_attestations(registry, HOST, REPOSITORY, pki.DIGEST, deadline=None)  # type: ignore[arg-type]


def keyless_authority(subject: str, root: Any, *, tlog: bool = False) -> Any:
    from imagegate.signatures import authorities

    signers = model.Signatures.model_validate(
        {"keyless": [{"issuer": pki.ISSUER, "subject": subject}], "requireTransparencyLog": tlog}
    )
    return authorities.of_requirement(signers, [], root)


async def test_a_keyless_att_is_verified_by_its_fulcio_identity() -> None:
    from imagegate.signatures import attestations, roots

    fulcio_root = pki.ca("test fulcio root")
    intermediate = pki.ca("test fulcio intermediate", fulcio_root, path_length=0)
    signer = pki.leaf(intermediate)
    root = roots.custom(json.dumps(pki.trust_root([[intermediate, fulcio_root]])))
    found = await keyless_found(signer, [intermediate, fulcio_root])
    wanted = requirement(provenance={"builderId": BUILDER})
    attestations.verify(wanted, found, pki.DIGEST, keyless_authority(pki.SIGNER, root), NOW)
    with pytest.raises(SignatureFailure, match="wrong identity"):
        attestations.verify(wanted, found, pki.DIGEST, keyless_authority("x@y.z", root), NOW)


async def test_an_att_with_an_unreadable_intoto_entry_is_refused_where_a_log_is_required() -> None:
    """design.md §9.8: cosign logs `.att` as `intoto` entries; one whose body says nothing
    (test_rekor_intoto.py has the readable ones) is a reason, never a pass."""
    from imagegate.signatures import attestations, roots

    fulcio_root = pki.ca("test fulcio root")
    intermediate = pki.ca("test fulcio intermediate", fulcio_root, path_length=0)
    signer = pki.leaf(intermediate)
    log = pki.Log()
    root = roots.custom(json.dumps(pki.trust_root([[intermediate, fulcio_root]], [log])))
    promise = log.promise({"apiVersion": "0.0.2", "kind": "intoto", "spec": {}})
    found = await keyless_found(signer, [intermediate, fulcio_root], bundle=json.dumps(promise))
    authority = keyless_authority(pki.SIGNER, root, tlog=True)
    with pytest.raises(SignatureFailure, match="the log entry's body is malformed"):
        attestations.verify(requirement(), found, pki.DIGEST, authority, NOW)


# --- CEL, for anything the named conditions do not say ---------------------------------------


async def test_a_cel_expression_over_the_predicate_must_hold() -> None:
    layers = [att()]
    holds = requirement(cel='predicate.buildType.startsWith("https://ci.example/")')
    assert (await verdict(pki.Registry(attestation_layers=layers), (holds,))).verified
    fails = requirement(cel='predicate.buildType == "https://other.example/"')
    result = await verdict(pki.Registry(attestation_layers=layers), (fails,))
    assert not result.verified
    assert result.reason.endswith(
        f'attestation {PROVENANCE}: cel predicate.buildType == "https://other.example/" is '
        "false, policy wants true"
    )
    missing = requirement(cel="predicate.nothing.here == 1")
    result = await verdict(pki.Registry(attestation_layers=layers), (missing,))
    assert not result.verified
    assert "cannot be evaluated" in result.reason


def test_a_cel_expression_that_does_not_compile_is_refused_with_the_policy() -> None:
    with pytest.raises(ValueError, match="is not a CEL expression"):
        requirement(cel="predicate..x")
