"""The CustomResourceDefinitions, generated from the pydantic models (the one source of truth).

    python -m imagegate.policy.crd > charts/imagegate/crds/imagegate.dev_crds.yaml

A unit test fails when the chart's file and this output drift apart. pydantic's JSON Schema is
turned into a Kubernetes *structural* schema: references inlined, `anyOf [X, null]` collapsed to
X, titles and `additionalProperties: false` dropped (the API server rejects unknown fields under
strict field validation, kubectl's default). Rules that need two fields at once become CEL
`x-kubernetes-validations`, so a conflicting policy is refused at `kubectl apply` time.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import yaml

from imagegate.policy import model

_KEEP = {
    "type",
    "description",
    "properties",
    "items",
    "required",
    "enum",
    "default",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minimum",
    "additionalProperties",
    "format",
}

#: CEL rules per model (by its JSON Schema title), each with the message kubectl shows.
_RULES: Mapping[str, list[dict[str, str]]] = {
    "KeylessAuthority": [
        {
            "rule": "has(self.issuer) != has(self.issuerRegExp)",
            "message": "set exactly one of issuer and issuerRegExp",
        },
        {
            "rule": "has(self.subject) != has(self.subjectRegExp)",
            "message": "set exactly one of subject and subjectRegExp",
        },
    ],
    "KeyAuthority": [
        {
            "rule": "has(self.publicKey) != has(self.secretRef)",
            "message": "set exactly one of publicKey and secretRef",
        }
    ],
    "Signatures": [
        {
            "rule": "size(self.keyless) + size(self.keys) > 0",
            "message": "name at least one authority under keyless or keys",
        }
    ],
    "PolicySpec": [
        {
            "rule": "size(self.sources) + size(self.rewrites) > 0",
            "message": "a policy needs sources, rewrites, or both",
        },
        {
            "rule": "self.sources.all(a, self.sources.exists_one(b, b.name == a.name))",
            "message": "source names must be unique",
        },
    ],
}

_PRINTER_COLUMNS = [
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
    {"name": "Sources", "type": "string", "jsonPath": ".spec.sources[*].name"},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Denials", "type": "integer", "jsonPath": ".status.denials"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a pydantic JSON Schema (with `$defs`) into a structural Kubernetes schema."""
    definitions = schema.get("$defs", {})

    def convert(node: Mapping[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            merged = {**definitions[name], **{k: v for k, v in node.items() if k != "$ref"}}
            return convert(merged)
        if "anyOf" in node:
            choices = [c for c in node["anyOf"] if c.get("type") != "null"]
            if len(choices) != 1:
                raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            return convert({**choices[0], **rest})
        result: dict[str, Any] = {}
        for key, value in node.items():
            if key not in _KEEP or (key == "default" and value is None):
                continue
            if key == "properties":
                result[key] = {name: convert(child) for name, child in value.items()}
            elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
                result[key] = convert(value)
            elif key == "additionalProperties":
                continue  # `false`: not allowed in structural schemas
            else:
                result[key] = value
        if node.get("title") in _RULES:
            result["x-kubernetes-validations"] = _RULES[node["title"]]
        return result

    return convert(schema)


def _crd(kind: str, plural: str, short: str, scope: str) -> dict[str, Any]:
    spec_schema = structural(model.PolicySpec.model_json_schema(by_alias=True))
    status_schema = structural(model.PolicyStatus.model_json_schema(by_alias=True))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{model.GROUP}"},
        "spec": {
            "group": model.GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["imagegate"],
            },
            "scope": scope,
            "versions": [
                {
                    "name": model.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"{kind}: which images may run, and what to rewrite.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [
        _crd(model.CLUSTER_KIND, "clusterimagepolicies", "cip", "Cluster"),
        _crd(model.NAMESPACED_KIND, "imagepolicies", "ip", "Namespaced"),
    ]


def render_crds() -> str:
    header = "# Generated by `python -m imagegate.policy.crd` from imagegate/policy/model.py.\n"
    return header + yaml.safe_dump_all(crds(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(render_crds())


if __name__ == "__main__":
    main()
