"""The CustomResourceDefinitions, generated from the pydantic models (the one source of truth).

    python -m imagegate.policy.crd > charts/imagegate/crds/imagegate.dev_crds.yaml

A unit test fails when the chart's file and this output drift apart. pydantic's JSON Schema is
turned into a Kubernetes *structural* schema:

- `$ref`s are inlined (a field's own description wins over its model's), `$defs` disappear;
- an optional field (`anyOf [X, null]`) becomes X, not required and not `nullable`: the API
  server prunes a null it does not allow, so `issuer: null` means what omitting it means, as it
  does in the models (and CEL's `has()` stays exact);
- titles, `additionalProperties: false` and `propertyNames` are dropped (the API server prunes
  unknown fields, and refuses them under kubectl's default strict field validation);
- defaults are kept (`kubectl get -o yaml` shows the effective mode, tag, ...) unless they are
  empty (`""`, `[]`, `{}`): absent and empty mean the same to the models;
- each model's `x-kubernetes-validations` (CEL) and list-type markers are kept, so conflicting
  fields are refused at `kubectl apply` time with a message that names them.

Anything else that cannot be expressed structurally is an error here, not a broken chart.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from imagegate.policy import model, status

CLUSTER_PLURAL = "clusterimagepolicies"
NAMESPACED_PLURAL = "imagepolicies"
CATEGORIES = ["imagegate"]

#: Schema keywords a structural schema may carry, in the order they are written.
_KEYWORDS = (
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
)
#: JSON Schema keywords pydantic writes that mean nothing (or too much) to the API server.
_DROPPED = {"title", "propertyNames", "$defs"}

PRINTER_COLUMNS: list[dict[str, str]] = [
    {
        "name": "Mode",
        "type": "string",
        "description": "enforce, warn or audit",
        "jsonPath": ".spec.mode",
    },
    {
        "name": "Sources",
        "type": "string",
        "description": "The names of the trusted sources",
        "jsonPath": ".spec.sources[*].name",
    },
    {
        "name": "Ready",
        "type": "string",
        "description": "Whether the spec compiled and is enforced",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {
        "name": "Denials",
        "type": "integer",
        "description": "Denials since the policy was created",
        "jsonPath": ".status.denials",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class SchemaError(ValueError):
    """A model whose JSON Schema has no structural equivalent (a bug in the models)."""


def structural(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a pydantic JSON Schema (with `$defs`) into a structural Kubernetes schema."""
    definitions: Mapping[str, Any] = schema.get("$defs", {})

    def convert(node: Mapping[str, Any], path: str) -> dict[str, Any]:
        if "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            merged = {**definitions[name], **{k: v for k, v in node.items() if k != "$ref"}}
            return convert(merged, path)
        if "anyOf" in node:
            choices = [choice for choice in node["anyOf"] if choice.get("type") != "null"]
            if len(choices) != 1 or len(node["anyOf"]) != 2:
                raise SchemaError(f"{path or '.'}: cannot express anyOf {node['anyOf']}")
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            return convert({**choices[0], **rest}, path)
        unknown = set(node) - set(_KEYWORDS) - _DROPPED
        if unknown:
            raise SchemaError(f"{path or '.'}: no structural equivalent for {sorted(unknown)}")
        if "type" not in node:
            raise SchemaError(f"{path or '.'}: no type")
        result: dict[str, Any] = {}
        for key in _KEYWORDS:
            if key not in node:
                continue
            value = node[key]
            if key == "description":
                result[key] = " ".join(str(value).split())
            elif key == "default":
                if value in (None, "", [], {}):
                    continue
                result[key] = value
            elif key == "properties":
                result[key] = {
                    name: convert(child, f"{path}.{name}") for name, child in value.items()
                }
            elif key == "items":
                result[key] = convert(value, f"{path}[]")
            elif key == "additionalProperties":
                if isinstance(value, Mapping):
                    result[key] = convert(value, f"{path}{{}}")
            elif key == "x-kubernetes-validations":
                result[key] = [_rule_first(rule) for rule in value]
            else:
                result[key] = value
        return result

    return convert(schema, "")


def _rule_first(rule: Mapping[str, Any]) -> dict[str, Any]:
    order = ("rule", "message", "messageExpression", "fieldPath", "reason")
    return {key: rule[key] for key in sorted(rule, key=order.index)}


def _schema(kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"{kind}: which images may run, and what to rewrite (imagegate).",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "imagegate.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object"},
            "spec": structural(_documented(model.PolicySpec.model_json_schema(by_alias=True))),
            "status": structural(_documented(status.PolicyStatus.model_json_schema(by_alias=True))),
        },
    }


def _documented(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` with each `model.Spec` field's attribute docstring as its description (unless
    it has one), where pydantic's `use_attribute_docstrings` would put it."""
    classes = {cls.__name__: cls for cls in _spec_models(model.Spec)}
    documented = dict(schema)
    definitions = {name: dict(node) for name, node in schema.get("$defs", {}).items()}
    for node in [documented, *definitions.values()]:
        cls = classes.get(str(node.get("title")))
        if cls is None:
            continue
        docs = attribute_docstrings(cls)
        properties = {key: dict(value) for key, value in node.get("properties", {}).items()}
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if name in docs and key in properties and "description" not in properties[key]:
                properties[key]["description"] = docs[name]
        node["properties"] = properties
    if definitions:
        documented["$defs"] = definitions
    return documented


def _spec_models(base: type[model.Spec]) -> Iterator[type[model.Spec]]:
    for cls in base.__subclasses__():
        yield cls
        yield from _spec_models(cls)


def attribute_docstrings(cls: type[Any]) -> dict[str, str]:
    """Each `name: type` of the class body (and its bases) that a string literal follows."""
    docs: dict[str, str] = {}
    for klass in reversed([c for c in cls.__mro__ if issubclass(c, model.Spec)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        if not isinstance(body, ast.ClassDef):
            raise SchemaError(f"{klass.__name__}: its source is not a class")
        for statement, following in zip(body.body, body.body[1:], strict=False):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _crd(kind: str, plural: str, short: str, scope: str) -> dict[str, Any]:
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
                "categories": list(CATEGORIES),
            },
            "scope": scope,
            "versions": [
                {
                    "name": model.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(column) for column in PRINTER_COLUMNS],
                    "schema": {"openAPIV3Schema": _schema(kind)},
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    """The two CRDs: ClusterImagePolicy (cluster-scoped) and ImagePolicy (namespaced)."""
    return [
        _crd(model.CLUSTER_KIND, CLUSTER_PLURAL, "cip", "Cluster"),
        _crd(model.NAMESPACED_KIND, NAMESPACED_PLURAL, "ip", "Namespaced"),
    ]


def render_crds() -> str:
    """The CRDs as one multi-document YAML file; the same models always give the same bytes."""
    header = (
        "# Generated by `python -m imagegate.policy.crd` from imagegate/policy/model.py.\n"
        "# Do not edit: change the models and regenerate.\n"
    )
    return header + yaml.safe_dump_all(
        crds(), sort_keys=False, width=100, explicit_start=True, allow_unicode=True
    )


def main() -> None:
    sys.stdout.write(render_crds())


if __name__ == "__main__":
    main()
