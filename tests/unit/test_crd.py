"""The generated CRDs: structural schemas, the chart's copy in step, names, columns, CEL rules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegate.policy import crd, glob, model

ROOT = Path(__file__).resolve().parents[2]
CHART_CRDS = ROOT / "charts/imagegate/crds/imagegate.dev_crds.yaml"
RENDER = "python -m imagegate.policy.crd > charts/imagegate/crds/imagegate.dev_crds.yaml"

#: Keywords that hold value validations only (no types, defaults or descriptions inside).
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
#: What a structural schema node may carry besides `type` (apiextensions' JSONSchemaProps).
_ALLOWED = {
    "type",
    "description",
    "enum",
    "default",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
    *_JUNCTORS,
}


def _schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    for document in crd.crds():
        version = document["spec"]["versions"][0]
        yield document["spec"]["names"]["kind"], version["schema"]["openAPIV3Schema"]


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node (not the value validations under a junctor), with its path."""
    yield path or ".", node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def _structural_problems(schema: dict[str, Any]) -> list[str]:
    """Every place that breaks Kubernetes' structural-schema rules (or imagegate's own)."""
    problems = []
    for path, node in _nodes(schema):
        exempt = node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        if "type" not in node and not exempt:
            problems.append(f"{path}: no type")
        for key in set(node) - _ALLOWED:
            problems.append(f"{path}: {key} is not allowed")  # $ref, $defs, title, nullable...
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties false")
        for name in node.get("required", []):
            if name not in node.get("properties", {}):
                problems.append(f"{path}: required {name} is not a property")
        for junctor in _JUNCTORS:
            for validation in _as_list(node.get(junctor)):
                for key in ("type", "description", "default", "nullable", "additionalProperties"):
                    if key in validation:
                        problems.append(f"{path}: {key} inside {junctor}")
        if path == "." and any(junctor in node for junctor in _JUNCTORS):
            problems.append(".: a junctor at the root")
    return problems


def _as_list(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def test_schemas_are_structural() -> None:
    for kind, schema in _schemas():
        assert _structural_problems(schema) == [], kind


def test_the_structural_check_can_fail() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/A"},
            "b": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "c": {"type": "string", "nullable": True},
            "d": {"type": "object", "additionalProperties": False},
        },
        "required": ["e"],
    }
    assert set(_structural_problems(bad)) == {
        ".a: no type",
        ".a: $ref is not allowed",
        ".b: no type",
        ".b: type inside anyOf",
        ".c: nullable is not allowed",
        ".d: additionalProperties false",
        ".: required e is not a property",
    }


def test_structural_refuses_what_it_cannot_express() -> None:
    with pytest.raises(crd.SchemaError, match="cannot express anyOf"):
        crd.structural({"anyOf": [{"type": "string"}, {"type": "integer"}]})
    with pytest.raises(crd.SchemaError, match="no structural equivalent"):
        crd.structural({"type": "object", "patternProperties": {"x": {"type": "string"}}})


def test_every_field_is_described_for_kubectl_explain() -> None:
    for kind, schema in _schemas():
        for path, node in _nodes(schema["properties"]["spec"], ".spec"):
            if not path.endswith("[]") and not path.endswith("{}"):
                assert node.get("description"), f"{kind} {path}"


def test_the_spec_schema_carries_enums_patterns_and_defaults() -> None:
    for _, schema in _schemas():
        spec = schema["properties"]["spec"]
        assert schema["required"] == ["spec"]
        assert spec["properties"]["mode"]["enum"] == ["enforce", "warn", "audit"]
        assert spec["properties"]["mode"]["default"] == "enforce"
        assert spec["properties"]["pinDigests"]["default"] is True
        source = spec["properties"]["sources"]["items"]
        assert source["required"] == ["name", "images"]
        assert source["properties"]["images"]["items"]["pattern"] == glob.PATTERN
        rewrite = spec["properties"]["rewrites"]["items"]
        assert rewrite["properties"]["from"]["pattern"] == glob.PATTERN
        assert rewrite["properties"]["tag"]["default"] == "latest"
        # Empty defaults are not written: absent and empty mean the same.
        assert "default" not in spec["properties"]["sources"]
        assert "default" not in spec["properties"]["namespaceSelector"]


def test_every_pattern_is_python_and_re2_compatible() -> None:
    for kind, schema in _schemas():
        for path, node in _nodes(schema):
            if "pattern" in node:
                re.compile(node["pattern"])
                for construct in ("(?=", "(?!", "(?<", "(?>", "\\1", "*+", "++"):
                    assert construct not in node["pattern"], f"{kind} {path}"


def _rules(schema: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    return {
        path: node["x-kubernetes-validations"]
        for path, node in _nodes(schema)
        if "x-kubernetes-validations" in node
    }


def test_conflicting_fields_have_cel_rules_that_name_them() -> None:
    _, schema = next(_schemas())
    rules = _rules(schema)
    keyless = ".spec.sources[].signatures.keyless[]"
    assert rules[keyless] == [
        {
            "rule": "has(self.issuer) != has(self.issuerRegExp)",
            "message": "set exactly one of issuer and issuerRegExp",
        },
        {
            "rule": "has(self.subject) != has(self.subjectRegExp)",
            "message": "set exactly one of subject and subjectRegExp",
        },
    ]
    assert rules[".spec.sources[].signatures.keys[]"][0]["message"] == (
        "set exactly one of publicKey and secretRef"
    )
    assert rules[".spec.sources[].signatures"][0]["message"] == (
        "name at least one authority under keyless or keys"
    )
    assert rules[".spec.sources"][0]["message"] == "source names must be unique"
    assert rules[".spec"][0]["message"] == "a policy needs sources, rewrites, or both"
    assert [rule["message"] for rule in rules[".spec.rewrites[]"]] == [
        "set either from and to, or catalog",
        "allowLatestOnly applies only with catalog",
        "tag applies only with from and to: the catalogue maps tags itself",
    ]
    assert set(rules) == {
        ".spec",
        ".spec.rewrites[]",
        ".spec.namespaceSelector.matchExpressions[]",
        ".spec.sources",
        ".spec.sources[].signatures",
        ".spec.sources[].signatures.keyless[]",
        ".spec.sources[].signatures.keys[]",
        ".spec.sources[]",
        ".spec.sources[].attestations[].authorities",
        ".spec.sources[].attestations[].authorities.keyless[]",
        ".spec.sources[].attestations[].authorities.keys[]",
    }


def test_cel_rules_name_only_fields_of_their_object() -> None:
    for kind, schema in _schemas():
        for path, rules in _rules(schema).items():
            node = dict(_nodes(schema))[path]
            fields = set(node.get("properties", {}))
            for rule in rules:
                assert set(rule) == {"rule", "message"}
                for name in re.findall(r"\bself\.(\w+)", rule["rule"]):
                    if node["type"] == "object":
                        assert name in fields, f"{kind} {path}: {rule['rule']}"
                    else:  # on a list, `self` is the list and b.name is an item's field
                        assert name in ("all", "exists_one"), f"{kind} {path}: {rule['rule']}"


def test_lists_walked_by_cel_are_bounded() -> None:
    """The API server refuses a CRD whose CEL rules it cannot cost: lists need maxItems."""
    _, schema = next(_schemas())
    nodes = dict(_nodes(schema))
    for path in (".spec.sources", ".spec.rewrites", ".spec.sources[].signatures.keyless"):
        assert nodes[path]["maxItems"] > 0
    assert nodes[".spec.sources[].name"]["maxLength"] == 63


def test_names_scopes_printer_columns_and_status() -> None:
    cluster, namespaced = crd.crds()
    for document, kind, plural, short, scope in (
        (cluster, "ClusterImagePolicy", "clusterimagepolicies", "cip", "Cluster"),
        (namespaced, "ImagePolicy", "imagepolicies", "ip", "Namespaced"),
    ):
        spec = document["spec"]
        assert document["metadata"]["name"] == f"{plural}.imagegate.dev"
        assert spec["group"] == model.GROUP
        assert spec["scope"] == scope
        assert spec["names"] == {
            "kind": kind,
            "listKind": f"{kind}List",
            "plural": plural,
            "singular": kind.lower(),
            "shortNames": [short],
            "categories": ["imagegate"],
        }
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == (
            model.VERSION,
            True,
            True,
        )
        assert version["subresources"] == {"status": {}}
        columns = {
            c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]
        }
        assert columns == {
            "Mode": ("string", ".spec.mode"),
            "Sources": ("string", ".spec.sources[*].name"),
            "Ready": ("string", '.status.conditions[?(@.type=="Ready")].status'),
            "Denials": ("integer", ".status.denials"),
            "Age": ("date", ".metadata.creationTimestamp"),
        }
        assert list(columns) == ["Mode", "Sources", "Ready", "Denials", "Age"]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["properties"]["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_rendering_is_deterministic_yaml_of_the_crds(capsys: pytest.CaptureFixture[str]) -> None:
    rendered = crd.render_crds()
    assert rendered == crd.render_crds()
    assert rendered.startswith("# Generated by `python -m imagegate.policy.crd`")
    assert list(yaml.safe_load_all(rendered)) == crd.crds()
    crd.main()
    assert capsys.readouterr().out == rendered


def test_the_chart_crds_are_generated_from_the_models() -> None:
    if not CHART_CRDS.exists():
        pytest.skip(f"{CHART_CRDS.relative_to(ROOT)} is not in the repository yet: run `{RENDER}`")
    assert CHART_CRDS.read_text() == crd.render_crds(), (
        f"{CHART_CRDS.relative_to(ROOT)} drifted from the models: run `{RENDER}`"
    )
