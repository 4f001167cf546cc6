"""What verified attestations say, judged against a policy's conditions. Pure: no I/O.

design.md §9. Each condition reads one field of the predicate and, when it fails, says which
field, the value found and what the policy wants, so a denial can be acted on:
`attestation https://slsa.dev/provenance/v0.2: builder.id is https://evil.example/b, policy
wants https://ci.example/b`. What cannot be read fails (a missing field is a value too: none).

Which statement counts: any verified one that meets every condition, except for vulnerability
scans, where only the newest verified scan (by scanFinishedOn) is judged, so an older clean scan
cannot hide a newer finding.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from imagegate.core import expressions, patterns
from imagegate.policy import model
from imagegate.signatures.failures import UnmetCondition

Statement = Mapping[str, Any]
#: A check of one predicate: the reason it fails, or None.
Check = Callable[[Mapping[str, Any]], str | None]
SEVERITY_RANK = {name: rank for rank, name in enumerate(model.SEVERITIES)}


def judge(
    requirement: model.Attestation,
    statements: Sequence[Statement],
    vex: Sequence[Statement],
    now: datetime.datetime,
) -> None:
    """Returns when the statements (verified, of the requirement's type) meet its conditions;
    raises UnmetCondition naming the condition and the value found."""
    uri = requirement.predicate_uri
    checks = _checks(requirement, vex, now)
    if uri == model.VULN_TYPE:
        statements = [max(statements, key=lambda s: _scan_time(_predicate(s)) or _EPOCH)]
    reasons: list[str] = []
    for statement in statements:
        failed = [r for r in (check(_predicate(statement)) for check in checks) if r is not None]
        if not failed:
            return
        reasons.append(", ".join(failed))
    raise UnmetCondition(f"attestation {uri}: {'; '.join(sorted(set(reasons)))}")


_EPOCH = datetime.datetime.min.replace(tzinfo=datetime.UTC)


def _predicate(statement: Statement) -> Mapping[str, Any]:
    """The predicate as an object. `cosign attest --type spdx` stores the SBOM file as a string
    (JSON, or SPDX tag-value, whose `Created:` line is all a condition reads)."""
    predicate = statement.get("predicate")
    if isinstance(predicate, str):
        return _from_text(predicate)
    return predicate if isinstance(predicate, Mapping) else {}


def _from_text(text: str) -> Mapping[str, Any]:
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        created = [line[8:].strip() for line in text.splitlines() if line.startswith("Created:")]
        return {"creationInfo": {"created": created[0]}} if created else {}
    return parsed if isinstance(parsed, Mapping) else {}


def _checks(
    requirement: model.Attestation, vex: Sequence[Statement], now: datetime.datetime
) -> list[Check]:
    checks: list[Check] = []
    if requirement.provenance is not None:
        checks += _provenance_checks(requirement.provenance)
    if requirement.max_age_days is not None:
        checks.append(_age_check(requirement.predicate_uri, requirement.max_age_days, now))
    if requirement.fail_on_severity is not None:
        checks.append(_severity_check(requirement.fail_on_severity, not_affected(vex)))
    if requirement.cel is not None:
        checks.append(_cel_check(requirement.cel))
    return checks


def _cel_check(expression: str) -> Check:
    def check(predicate: Mapping[str, Any]) -> str | None:
        try:
            expressions.holds(expression, {"predicate": dict(predicate)})
        except expressions.ExpressionError as error:
            return f"cel {error.user_message}"
        return None

    return check


# -- SLSA provenance ---------------------------------------------------------------------------


def _field(document: object, *path: str) -> object:
    for name in path:
        document = document.get(name) if isinstance(document, Mapping) else None
    return document


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _list(value: object) -> list[object]:
    """A list in a (signed, but not necessarily well-formed) predicate; anything else: empty."""
    return value if isinstance(value, list) else []


def provenance_fields(predicate: Mapping[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Each condition's (field as named in the predicate, value) for SLSA v0.2 or v1."""
    if "runDetails" in predicate or "buildDefinition" in predicate:  # v1
        workflow = _field(predicate, "buildDefinition", "externalParameters", "workflow")
        dependencies = _field(predicate, "buildDefinition", "resolvedDependencies")
        first = dependencies[0] if isinstance(dependencies, list) and dependencies else {}
        repository, ref = _split_source(_text(_field(first, "uri")))
        if isinstance(workflow, Mapping):
            repository = _text(workflow.get("repository")) or repository
            ref = _text(workflow.get("ref")) or ref
        return {
            "builderId": (
                "runDetails.builder.id",
                _text(_field(predicate, "runDetails", "builder", "id")),
            ),
            "buildType": (
                "buildDefinition.buildType",
                _text(_field(predicate, "buildDefinition", "buildType")),
            ),
            "sourceRepository": ("source repository", repository),
            "ref": ("source ref", ref),
        }
    repository, ref = _split_source(_text(_field(predicate, "invocation", "configSource", "uri")))
    return {
        "builderId": ("builder.id", _text(_field(predicate, "builder", "id"))),
        "buildType": ("buildType", _text(predicate.get("buildType"))),
        "sourceRepository": ("invocation.configSource.uri", repository),
        "ref": ("invocation.configSource.uri ref", ref),
    }


def _split_source(uri: str | None) -> tuple[str | None, str | None]:
    """`git+https://github.com/o/r@refs/heads/main` → (https://github.com/o/r, refs/heads/main)."""
    if uri is None:
        return None, None
    uri = uri.removeprefix("git+")
    repository, at, ref = uri.rpartition("@")
    if not at or "://" not in repository:  # no ref, or the @ of ssh://git@host
        return uri, None
    return repository, ref


def _provenance_checks(conditions: model.ProvenanceConditions) -> list[Check]:
    checks: list[Check] = []
    for name in ("builderId", "sourceRepository", "ref", "buildType"):
        exact, pattern = conditions.exact_and_pattern(name)
        if exact is not None or pattern is not None:
            checks.append(_match_check(name, exact, pattern))
    return checks


def _match_check(name: str, exact: str | None, pattern: str | None) -> Check:
    wants = exact if exact is not None else f"a match of {pattern}"

    def check(predicate: Mapping[str, Any]) -> str | None:
        where, value = provenance_fields(predicate)[name]
        if value is not None and (
            value == exact if exact is not None else patterns.fullmatches(str(pattern), value)
        ):
            return None
        return f"{where} is {value if value is not None else 'missing'}, policy wants {wants}"

    return check


# -- age ---------------------------------------------------------------------------------------


def timestamp(text: object) -> datetime.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)


def _scan_time(predicate: Mapping[str, Any]) -> datetime.datetime | None:
    return timestamp(_field(predicate, "metadata", "scanFinishedOn"))


def _made_at(uri: str, predicate: Mapping[str, Any]) -> tuple[str, object]:
    """(field name, raw value) of when the SBOM or scan was made."""
    if uri == model.VULN_TYPE:
        return "metadata.scanFinishedOn", _field(predicate, "metadata", "scanFinishedOn")
    if uri == "https://cyclonedx.org/bom":
        return "metadata.timestamp", _field(predicate, "metadata", "timestamp")
    return "creationInfo.created", _field(predicate, "creationInfo", "created")


def _age_check(uri: str, max_days: int, now: datetime.datetime) -> Check:
    def check(predicate: Mapping[str, Any]) -> str | None:
        name, raw = _made_at(uri, predicate)
        made = timestamp(raw)
        if made is None:
            return f"{name} is {raw if isinstance(raw, str) else 'missing'}, policy wants a time"
        age = (now - made).total_seconds() / 86400
        if age <= max_days:
            return None
        return f"{name} is {raw} ({int(age)} days old), policy wants at most {max_days} days"

    return check


# -- vulnerability scans -----------------------------------------------------------------------


def findings(predicate: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    """(vulnerability id, severity upper-cased) of a Trivy or Grype report in scanner.result;
    None when the report is neither."""
    result = _field(predicate, "scanner", "result")
    if not isinstance(result, Mapping):
        return None
    found: list[tuple[str, str]] = []
    if "Results" in result or "SchemaVersion" in result:  # Trivy JSON
        for target in _list(result.get("Results")):
            for vulnerability in _list(_field(target, "Vulnerabilities")):
                found.append(_finding(vulnerability, "VulnerabilityID", "Severity"))
        return found
    if "matches" in result:  # Grype JSON
        for match in _list(result.get("matches")):
            found.append(_finding(_field(match, "vulnerability"), "id", "severity"))
        return found
    return None


def _finding(entry: object, id_key: str, severity_key: str) -> tuple[str, str]:
    name = _text(_field(entry, id_key)) or "(unnamed)"
    return name, (_text(_field(entry, severity_key)) or "UNKNOWN").upper()


def not_affected(vex: Sequence[Statement]) -> frozenset[str]:
    """Vulnerabilities whose latest OpenVEX statement (in verified VEX attestations) says
    not_affected."""
    latest: dict[str, tuple[datetime.datetime, str]] = {}
    for document in (_predicate(s) for s in vex):
        default_time = timestamp(document.get("timestamp")) or _EPOCH
        for entry in _list(document.get("statements")):
            if not isinstance(entry, Mapping):
                continue
            when = timestamp(entry.get("timestamp")) or default_time
            status = _text(entry.get("status")) or ""
            for name in _vex_names(entry.get("vulnerability")):
                if name not in latest or latest[name][0] <= when:
                    latest[name] = (when, status)
    return frozenset(name for name, (_, status) in latest.items() if status == "not_affected")


def _vex_names(vulnerability: object) -> list[str]:
    if isinstance(vulnerability, str):
        return [vulnerability]
    if not isinstance(vulnerability, Mapping):
        return []
    names = [_text(vulnerability.get("name"))]
    aliases = vulnerability.get("aliases")
    names += [_text(a) for a in aliases] if isinstance(aliases, list) else []
    return [name for name in names if name]


def _severity_check(threshold: str, excused: frozenset[str]) -> Check:
    floor = SEVERITY_RANK[threshold]

    def check(predicate: Mapping[str, Any]) -> str | None:
        found = findings(predicate)
        if found is None:
            return "scanner.result is not a Trivy or Grype report, policy wants one"
        blocking = sorted(
            {
                (name, severity)
                for name, severity in found
                if SEVERITY_RANK.get(severity, -1) >= floor and name not in excused
            }
        )
        if not blocking:
            return None
        listed = ", ".join(f"{name} ({severity})" for name, severity in blocking[:5])
        more = f" and {len(blocking) - 5} more" if len(blocking) > 5 else ""
        return (
            f"findings {listed}{more}, policy wants none at {threshold} or above "
            "(unless an OpenVEX statement says not_affected)"
        )

    return check
