"""In-toto attestations of an image, verified like its signatures (design.md §9).

The candidates are what `cosign.find_attestations` found (`.att` layers and v0.3 bundles). Those
whose statement names the required predicate type are each verified on its own by the
requirement's authorities, exactly as signatures are (`authorities.AnyOf`: keys, keyless, Rekor,
bound to the digest), with the candidate's expected predicate set to that type: a cosign
signature never passes for an attestation, nor an attestation for a signature. Then
`predicates.judge` reads what the verified ones say.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Sequence
from typing import Any

from imagegate.policy import model
from imagegate.signatures import authorities, cosign, predicates
from imagegate.signatures.failures import (
    AttestationFailure,
    NoAttestation,
    SignatureFailure,
    summed_up,
)


def verify(
    requirement: model.Attestation,
    found: Sequence[cosign.FoundSignature],
    digest: str,
    authority: authorities.Authority,
    now: datetime.datetime,
) -> None:
    """Returns when a verified attestation of the type meets the requirement; raises an
    `AttestationFailure` naming the attestation, the condition and the value found."""
    uri = requirement.predicate_uri
    statements = verified_statements(found, digest, uri, authority)
    vex: list[dict[str, Any]] = []
    if requirement.fail_on_severity is not None:
        try:
            vex = verified_statements(found, digest, model.OPENVEX_TYPE, authority)
        except AttestationFailure:
            vex = []  # no (valid) VEX: every finding counts
    predicates.judge(requirement, statements, vex, now)


def verified_statements(
    found: Sequence[cosign.FoundSignature],
    digest: str,
    predicate_type: str,
    authority: authorities.Authority,
) -> list[dict[str, Any]]:
    """The statements of type `predicate_type` that `authority` verifies for `digest`, each
    judged on its own; raises why none does."""
    candidates = [
        dataclasses.replace(f, expected_predicate=predicate_type)
        for f in found
        if f.malformed is not None or _predicate_type(f.claims) == predicate_type
    ]
    if not candidates:
        raise NoAttestation(f"attestation {predicate_type}: none found")
    statements: list[dict[str, Any]] = []
    failures: list[SignatureFailure] = []
    for candidate in candidates:
        try:
            authority.verify([candidate], digest)
        except SignatureFailure as failure:
            failures.append(failure)
            continue
        statements.append(json.loads(candidate.claims))
    if not statements:
        raise AttestationFailure(
            f"attestation {predicate_type}: {summed_up(failures).user_message}"
        )
    return statements


def _predicate_type(claims: bytes) -> object:
    try:
        statement = json.loads(claims)
    except (ValueError, RecursionError):
        return None
    return statement.get("predicateType") if isinstance(statement, dict) else None
