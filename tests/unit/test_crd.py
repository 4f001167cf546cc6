from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from imagegate.policy import crd

CHART_CRDS = Path(__file__).resolve().parents[2] / "charts/imagegate/crds/imagegate.dev_crds.yaml"


def test_the_chart_crds_are_generated_from_the_models() -> None:
    assert CHART_CRDS.read_text() == crd.render_crds(), (
        "charts/imagegate/crds drifted from the models: run "
        "`python -m imagegate.policy.crd > charts/imagegate/crds/imagegate.dev_crds.yaml`"
    )


def _walk(node: Any, path: str = "") -> list[str]:
    """Every place that breaks the structural-schema rules (Kubernetes' apiextensions)."""
    problems = []
    if isinstance(node, dict):
        for banned in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title"):
            if banned in node:
                problems.append(f"{path}: {banned}")
        if ("properties" in node or "items" in node) and "type" not in node:
            problems.append(f"{path}: no type")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties false")
        for key, value in node.items():
            if key in ("properties",):
                for name, child in value.items():
                    problems += _walk(child, f"{path}.{name}")
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                problems += _walk(value, f"{path}[]")
    return problems


def test_schemas_are_structural_with_types_everywhere() -> None:
    for document in crd.crds():
        schema = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert _walk(schema) == []
        spec = schema["properties"]["spec"]
        assert spec["type"] == "object"
        assert spec["properties"]["mode"]["enum"] == ["enforce", "warn", "audit"]


def test_names_scopes_and_printer_columns() -> None:
    cluster, namespaced = crd.crds()
    assert (cluster["spec"]["scope"], cluster["spec"]["names"]["shortNames"]) == (
        "Cluster",
        ["cip"],
    )
    assert (namespaced["spec"]["scope"], namespaced["spec"]["names"]["shortNames"]) == (
        "Namespaced",
        ["ip"],
    )
    columns = [c["name"] for c in cluster["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Mode", "Sources", "Ready", "Denials", "Age"]


def test_conflicting_fields_have_cel_rules() -> None:
    rendered = yaml.safe_load_all(crd.render_crds())
    text = yaml.safe_dump(list(rendered))
    assert "has(self.issuer) != has(self.issuerRegExp)" in text
    assert "has(self.publicKey) != has(self.secretRef)" in text
