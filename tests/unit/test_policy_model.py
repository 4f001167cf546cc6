from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegate import tls
from imagegate.policy import model

ROOT = Path(__file__).resolve().parents[2]
KEY = tls.public_key_pem(tls.new_private_key()).decode()


def _doc(spec: dict[str, Any], kind: str = "ClusterImagePolicy") -> dict[str, Any]:
    return {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "p"},
        "spec": spec,
    }


def test_the_design_example_parses_with_defaults() -> None:
    document = model.parse_policy_document(
        _doc(
            {
                "sources": [
                    {
                        "name": "chainguard",
                        "images": ["cgr.dev/chainguard/**"],
                        "signatures": {
                            "keyless": [{"issuer": "https://i", "subjectRegExp": "https://s/.*"}],
                            "keys": [{"publicKey": KEY}],
                        },
                    }
                ],
                "rewrites": [
                    {"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python"}
                ],
            }
        )
    )
    spec = document.spec
    assert (spec.mode, spec.pin_digests, spec.rewrites[0].tag) == ("enforce", True, "latest")
    assert spec.sources[0].signatures is not None
    assert spec.sources[0].signatures.require_transparency_log is True
    assert document.namespace is None


def test_an_image_policy_applies_in_its_namespace() -> None:
    doc = _doc({"sources": [{"name": "a", "images": ["docker.io/library/*"]}]}, "ImagePolicy")
    doc["metadata"]["namespace"] = "team-a"
    assert model.parse_policy_document(doc).namespace == "team-a"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"mode": "enforcing", "sources": [{"name": "a", "images": ["x.io/*"]}]}, "spec.mode:"),
        ({"sources": [{"name": "a", "images": ["x.io/*", "Bad"]}]}, "spec.sources[0].images[1]:"),
        ({"sources": [{"name": "a", "images": []}]}, "spec.sources[0].images:"),
        ({"sources": [{"name": "A_b", "images": ["x.io/*"]}]}, "spec.sources[0].name:"),
        (
            {"sources": [{"name": "a", "images": ["x.io/*"]}, {"name": "a", "images": ["y.io/*"]}]},
            "source names must be unique: a",
        ),
        ({}, "a policy needs sources, rewrites, or both"),
        ({"sources": [{"name": "a", "images": ["x.io/*"], "extra": 1}]}, "spec.sources[0].extra:"),
        (
            {"sources": [{"name": "a", "images": ["x.io/*"], "signatures": {}}]},
            "at least one authority",
        ),
        (
            {
                "sources": [
                    {
                        "name": "a",
                        "images": ["x.io/*"],
                        "signatures": {
                            "keyless": [{"issuer": "i", "issuerRegExp": "i", "subject": "s"}]
                        },
                    }
                ]
            },
            "exactly one of issuer and issuerRegExp",
        ),
        (
            {
                "sources": [
                    {
                        "name": "a",
                        "images": ["x.io/*"],
                        "signatures": {"keyless": [{"issuer": "i", "subjectRegExp": "(unclosed"}]},
                    }
                ]
            },
            "not a valid regular expression",
        ),
        (
            {
                "sources": [
                    {
                        "name": "a",
                        "images": ["x.io/*"],
                        "signatures": {"keys": [{"publicKey": "not a key"}]},
                    }
                ]
            },
            "publicKey is not a PEM public key",
        ),
        (
            {"rewrites": [{"from": "docker.io/library/x", "to": "cgr.dev/x:latest"}]},
            "rewrites[0].to",
        ),
        ({"rewrites": [{"from": "docker.io/library/x", "to": "cgr.dev/x", "tag": "-x"}]}, ".tag"),
        (
            {
                "namespaceSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]},
                "rewrites": [{"from": "docker.io/library/x", "to": "cgr.dev/x"}],
            },
            "needs at least one value",
        ),
    ],
)
def test_bad_policies_are_refused_naming_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(model.PolicyError) as caught:
        model.parse_policy_document(_doc(spec))
    assert message in caught.value.user_message
    assert caught.value.user_message.startswith("policy p: ")


def test_round_trip_through_the_wire_form() -> None:
    document = model.parse_policy_document(
        _doc({"mode": "warn", "sources": [{"name": "a", "images": ["x.io/**"]}]})
    )
    wire = document.spec.model_dump(by_alias=True, exclude_unset=True)
    assert model.parse_spec(wire) == document.spec


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents
    for document in documents:
        assert model.is_policy_document(document)
        model.parse_policy_document(document)
