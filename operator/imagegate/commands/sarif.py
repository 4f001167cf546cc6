"""`imagegate check -o sarif`: the findings as a SARIF 2.1.0 log, for code-scanning UIs.

One result per denied image, per warning and per unreadable file, each at `file:line` with the
object (and field) it is about as a logical location (docs/design.md §6.1). Admitted images are
not findings. Section numbers below are the OASIS SARIF 2.1.0 specification's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from imagegate import __version__

SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
#: (id, level, description); a result's ruleIndex is its rule's place here (§3.27.6).
RULES = (
    ("image-denied", "error", "An image no applicable policy admits"),
    ("policy-warning", "warning", "A warn-mode policy's violation or would-be rewrite"),
    ("object-malformed", "error", "An object whose pod spec cannot be read"),
    ("file-unreadable", "error", "A manifest file that is not YAML or JSON objects"),
)
_INDEX = {rule_id: index for index, (rule_id, _, _) in enumerate(RULES)}


def _uri(file: str) -> str:
    """A relative URI reference for a path as given (§3.4.3); `-` is standard input."""
    return "stdin" if file == "-" else quote(file.replace("\\", "/"))


def _location(file: str, line: int, logical: str | None) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(file)}}
    if line >= 1:  # startLine is 1-based (§3.30.5); 0 means "unknown": no region
        physical["region"] = {"startLine": line}
    location: dict[str, Any] = {"physicalLocation": physical}
    if logical:
        location["logicalLocations"] = [{"fullyQualifiedName": logical, "kind": "resource"}]
    return location


def _result(rule_id: str, text: str, location: dict[str, Any]) -> dict[str, Any]:
    return {
        "ruleId": rule_id,
        "ruleIndex": _INDEX[rule_id],
        "level": RULES[_INDEX[rule_id]][1],
        "message": {"text": text},
        "locations": [location],
    }


def _object_results(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    label = f"{obj['kind']}/{obj['namespace']}/{obj['name']}"
    results = []
    if "error" in obj:
        results.append(
            _result(
                "object-malformed",
                f"{label}: {obj['error']}",
                _location(obj["file"], obj["line"], label),
            )
        )
    for image in obj["images"]:
        if not image["allowed"]:
            results.append(
                _result(
                    "image-denied",
                    f"{label} {image['container']}: {image['image']}: {image['reason']}",
                    _location(obj["file"], image["line"], label + image["path"]),
                )
            )
    for warning in obj["warnings"]:
        results.append(
            _result(
                "policy-warning", f"{label}: {warning}", _location(obj["file"], obj["line"], label)
            )
        )
    return results


def log(
    objects: Sequence[Mapping[str, Any]], bad_files: Sequence[Mapping[str, Any]], summary: str
) -> dict[str, Any]:
    """The SARIF log (§3.13) of one `imagegate check` run."""
    results = [result for obj in objects for result in _object_results(obj)]
    results += [
        _result("file-unreadable", bad["error"], _location(bad["file"], bad["line"], None))
        for bad in bad_files
    ]
    rules = [
        {
            "id": rule_id,
            "shortDescription": {"text": text},
            "defaultConfiguration": {"level": level},
        }
        for rule_id, level, text in RULES
    ]
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "imagegate", "version": __version__, "rules": rules}},
                "invocations": [
                    {
                        "executionSuccessful": not bad_files,
                        "toolExecutionNotifications": [
                            {"message": {"text": summary}, "level": "note"}
                        ],
                    }
                ],
                "results": results,
            }
        ],
    }
