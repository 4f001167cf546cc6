"""Policy resources: the design's example, defaults, every refusal naming its field, round trips."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, get_args

import pydantic
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from imagegate.policy import model, status

ROOT = Path(__file__).resolve().parents[2]


def _pem(key: Any) -> str:
    data: bytes = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data.decode()


@functools.cache
def _keys() -> dict[str, str]:
    return {
        "p256": _pem(ec.generate_private_key(ec.SECP256R1()).public_key()),
        "ed25519": _pem(ed25519.Ed25519PrivateKey.generate().public_key()),
        "rsa2048": _pem(rsa.generate_private_key(65537, 2048).public_key()),
        "rsa1024": _pem(rsa.generate_private_key(65537, 1024).public_key()),
        "k1": _pem(ec.generate_private_key(ec.SECP256K1()).public_key()),
        "x25519": _pem(x25519.X25519PrivateKey.generate().public_key()),
        "private": ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode(),
    }


#: The original design (../shared/design.md) §3, verbatim but for a real key (and spacing).
DESIGN_EXAMPLE = """
apiVersion: imagegate.dev/v1alpha1
kind: ClusterImagePolicy
metadata: {name: chainguard-and-dvp}
spec:
  mode: enforce   # enforce: deny | warn: admit with a warning | audit: admit, record only
  namespaceSelector: {}      # metav1.LabelSelector; omitted = every namespace the webhook sees
  pinDigests: true           # mutate admitted tags to the digest that was verified (default true)
  sources:                   # an image is trusted when it matches a source and passes its checks
    - name: chainguard
      images: [cgr.dev/chainguard/**, docker.io/chainguard/**]
      signatures:            # optional; when present at least one authority must verify
        keyless:
          - issuer: https://token.actions.githubusercontent.com
            subject: https://github.com/chainguard-images/images/.github/workflows/release.yaml@refs/heads/main
            # or subjectRegExp / issuerRegExp
        keys:
          - publicKey: "KEY"   # cosign ECDSA P-256 key (or secretRef)
        trustRoot: {configMapRef: {name: my-trusted-root}}   # optional trusted_root.json
    - name: docker-official
      images: [docker.io/library/*]
  rewrites:                  # applied by the mutating webhook, before validation
    - from: docker.io/library/python      # glob over registry/repository
      to: cgr.dev/chainguard/python       # repository
      tag: latest                         # a fixed tag, or "keep"; default latest
status:                      # written by the operator
  observedGeneration: 3
  conditions: [{type: Ready, status: "True", reason: Compiled}]
  denials: 12                # counted since the policy was created
  lastDenial: {time: ..., namespace: ..., object: ..., image: ...}
"""


def _design_example() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(DESIGN_EXAMPLE)
    document["spec"]["sources"][0]["signatures"]["keys"][0]["publicKey"] = _keys()["p256"]
    return document


def _doc(spec: dict[str, Any], kind: str = "ClusterImagePolicy") -> dict[str, Any]:
    return {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "p"},
        "spec": spec,
    }


def _source(**fields: Any) -> dict[str, Any]:
    return {"name": "a", "images": ["x.io/*"], **fields}


def _signed(**signatures: Any) -> dict[str, Any]:
    return {"sources": [_source(signatures=signatures)]}


def _selector(**selector: Any) -> dict[str, Any]:
    return {"namespaceSelector": selector, "sources": [_source()]}


def _rewrite(**rule: Any) -> dict[str, Any]:
    return {"rewrites": [{"from": "docker.io/library/x", "to": "cgr.dev/c/x", **rule}]}


def test_the_design_example_parses() -> None:
    document = model.parse_policy_document(_design_example())
    spec = document.spec
    assert (document.kind, document.metadata.name, document.namespace) == (
        "ClusterImagePolicy",
        "chainguard-and-dvp",
        None,
    )
    assert (spec.mode, spec.pin_digests) == ("enforce", True)
    assert spec.namespace_selector == model.LabelSelector.model_validate({})
    chainguard, official = spec.sources
    assert chainguard.name == "chainguard"
    assert chainguard.images == ("cgr.dev/chainguard/**", "docker.io/chainguard/**")
    signatures = chainguard.signatures
    assert signatures is not None
    assert signatures.keyless[0].issuer == "https://token.actions.githubusercontent.com"
    assert signatures.keyless[0].subject is not None
    assert signatures.keyless[0].subject.endswith("release.yaml@refs/heads/main")
    assert signatures.keys[0].public_key == _keys()["p256"]
    assert signatures.trust_root is not None
    assert signatures.trust_root.config_map_ref.name == "my-trusted-root"
    assert signatures.trust_root.config_map_ref.key == "trusted_root.json"
    assert signatures.require_transparency_log is True
    assert (official.name, official.images, official.signatures) == (
        "docker-official",
        ("docker.io/library/*",),
        None,
    )
    rewrite = spec.rewrites[0]
    assert (rewrite.from_, rewrite.to, rewrite.tag) == (
        "docker.io/library/python",
        "cgr.dev/chainguard/python",
        "latest",
    )


def test_the_design_example_status_fits_the_status_model() -> None:
    written = status.PolicyStatus.model_validate(_design_example()["status"])
    assert (written.observed_generation, written.denials) == (3, 12)
    assert written.conditions[0].type == "Ready"
    assert written.conditions[0].status == "True"
    assert written.last_denial is not None
    assert written.last_denial.image == "..."


def test_defaults() -> None:
    spec = model.parse_spec(
        {
            "sources": [
                _source(
                    signatures={
                        "keys": [{"secretRef": {"name": "cosign"}}],
                        "trustRoot": {"configMapRef": {"name": "root"}},
                    }
                )
            ],
            "rewrites": [{"from": "docker.io/library/x", "to": "cgr.dev/c/x"}],
        }
    )
    assert spec.mode == "enforce"
    assert spec.pin_digests is True
    assert spec.namespace_selector.match_labels == {}
    assert spec.namespace_selector.match_expressions == ()
    assert spec.rewrites[0].tag == "latest"
    signatures = spec.sources[0].signatures
    assert signatures is not None
    assert signatures.keyless == ()
    assert signatures.require_transparency_log is True
    secret = signatures.keys[0].secret_ref
    assert secret is not None
    assert (secret.namespace, secret.key) == (None, "cosign.pub")
    assert signatures.trust_root is not None
    assert signatures.trust_root.config_map_ref.key == "trusted_root.json"
    assert model.parse_spec({"rewrites": [_rewrite()["rewrites"][0]]}).sources == ()


def test_modes_are_the_three_the_design_names() -> None:
    assert get_args(model.Mode) == ("enforce", "warn", "audit")
    for mode in get_args(model.Mode):
        assert model.parse_spec({"mode": mode, "sources": [_source()]}).mode == mode


def test_an_image_policy_applies_in_its_namespace_or_default() -> None:
    doc = _doc({"sources": [_source()]}, "ImagePolicy")
    assert model.parse_policy_document(doc).namespace == "default"
    doc["metadata"]["namespace"] = "team-a"
    assert model.parse_policy_document(doc).namespace == "team-a"


def test_status_and_unknown_metadata_never_make_a_policy_invalid() -> None:
    doc = _doc({"sources": [_source()]})
    doc["metadata"].update(uid="1", labels={"a": "b"}, managedFields=[{}], generation=4)
    doc["status"] = {"whatever": ["the", "operator", "wrote"], "denials": "many"}
    document = model.parse_policy_document(doc)
    assert document.metadata.generation == 4


@pytest.mark.parametrize(
    "spec",
    [
        _signed(keyless=[{"issuerRegExp": "https://.*", "subjectRegExp": "^a$"}]),
        _signed(keys=[{"publicKey": "ed25519"}]),
        _signed(keys=[{"publicKey": "rsa2048"}]),
        _signed(keys=[{"secretRef": {"name": "k.eys", "namespace": "ns", "key": "a_b.pub"}}]),
        _signed(keyless=[{"issuer": "i", "subject": "s"}], requireTransparencyLog=False),
        _selector(matchLabels={"app.kubernetes.io/name": "x", "tier": ""}),
        _selector(matchExpressions=[{"key": "tier", "operator": "NotIn", "values": ["a", "b"]}]),
        _selector(matchExpressions=[{"key": "x", "operator": "Exists", "values": []}]),
        _rewrite(tag="keep"),
        _rewrite(tag="1.25-slim"),
        {"rewrites": [{"from": "**", "to": "localhost:5000/a/b"}]},
        {"rewrites": [{"from": "[::1]:5000/*", "to": "[::1]:5000/mirror"}]},
        {"rewrites": [{"from": "r.io/x", "to": "registry:5000/x"}]},
        {"sources": [_source(), _source(name="b")], "pinDigests": False, "mode": "audit"},
    ],
)
def test_valid_variants_parse(spec: dict[str, Any]) -> None:
    spec = copy.deepcopy(spec)
    for source in spec.get("sources", []):
        for key in source.get("signatures", {}).get("keys", []):
            if "publicKey" in key:
                key["publicKey"] = _keys()[key["publicKey"]]
    model.parse_spec(spec)


#: (spec, the field path the message must start with, a fragment of the reason).
INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"mode": "enforcing", "sources": [_source()]}, "spec.mode", "got 'enforcing'"),
    ({"mode": 1, "sources": [_source()]}, "spec.mode", "'enforce', 'warn' or 'audit'"),
    ({"pinDigests": "false", "sources": [_source()]}, "spec.pinDigests", "true or false"),
    ({"sourcez": [], "sources": [_source()]}, "spec.sourcez", "unknown field"),
    ({}, "spec", "a policy needs sources, rewrites, or both"),
    ({"sources": "x.io/*"}, "spec.sources", "must be a list"),
    # sources
    ({"sources": [_source(images=["x.io/*", "Bad/x"])]}, "spec.sources[0].images[1]", "uppercase"),
    ({"sources": [_source(images=["x.io/a:1.0"])]}, "spec.sources[0].images[0]", "never a tag"),
    ({"sources": [_source(images=["x.io/***"])]}, "spec.sources[0].images[0]", "'***'"),
    ({"sources": [_source(images=["x.io//a"])]}, "spec.sources[0].images[0]", "empty path"),
    ({"sources": [_source(images=["x.io/a**"])]}, "spec.sources[0].images[0]", "whole segment"),
    ({"sources": [_source(images=["nginx"])]}, "spec.sources[0].images[0]", "no registry"),
    ({"sources": [_source(images=[])]}, "spec.sources[0].images", "at least 1 item"),
    ({"sources": [_source(images="x.io/*")]}, "spec.sources[0].images", "must be a list"),
    ({"sources": [{"name": "a"}]}, "spec.sources[0].images", "required field is missing"),
    ({"sources": [_source(name="A_b")]}, "spec.sources[0].name", "not a DNS label"),
    ({"sources": [_source(name="a" * 64)]}, "spec.sources[0].name", "at most 63"),
    (
        {"sources": [_source(), _source(images=["y.io/*"])]},
        "spec.sources[1].name",
        "source names must be unique: 'a' is also sources[0]",
    ),
    ({"sources": [_source(extra=1)]}, "spec.sources[0].extra", "unknown field"),
    # signatures
    (_signed(), "spec.sources[0].signatures", "name at least one authority"),
    (
        _signed(keyless=[{"issuer": "i", "issuerRegExp": "i", "subject": "s"}]),
        "spec.sources[0].signatures.keyless[0]",
        "set exactly one of issuer and issuerRegExp, not both",
    ),
    (
        _signed(keyless=[{"issuer": "i"}]),
        "spec.sources[0].signatures.keyless[0]",
        "set exactly one of subject and subjectRegExp",
    ),
    (
        _signed(keyless=[{"issuer": "i", "subjectRegExp": "(unclosed"}]),
        "spec.sources[0].signatures.keyless[0].subjectRegExp",
        "not a valid regular expression",
    ),
    (
        _signed(keyless=[{"issuer": "", "subject": "s"}]),
        "spec.sources[0].signatures.keyless[0].issuer",
        "at least 1 character",
    ),
    (
        _signed(keys=[{"publicKey": "not a key"}]),
        "spec.sources[0].signatures.keys[0].publicKey",
        "is not a PEM public key",
    ),
    (
        _signed(keys=[{"publicKey": "private"}]),
        "spec.sources[0].signatures.keys[0].publicKey",
        "is not a PEM public key",
    ),
    (
        _signed(keys=[{"publicKey": "rsa1024"}]),
        "spec.sources[0].signatures.keys[0].publicKey",
        "1024-bit RSA key",
    ),
    (
        _signed(keys=[{"publicKey": "k1"}]),
        "spec.sources[0].signatures.keys[0].publicKey",
        "secp256k1",
    ),
    (
        _signed(keys=[{"publicKey": "x25519"}]),
        "spec.sources[0].signatures.keys[0].publicKey",
        "not a signing key",
    ),
    (
        _signed(keys=[{"publicKey": "p256", "secretRef": {"name": "s"}}]),
        "spec.sources[0].signatures.keys[0]",
        "set exactly one of publicKey and secretRef, not both",
    ),
    (
        _signed(keys=[{}]),
        "spec.sources[0].signatures.keys[0]",
        "set exactly one of publicKey and secretRef",
    ),
    (
        _signed(keys=[{"secretRef": {"name": "Cosign"}}]),
        "spec.sources[0].signatures.keys[0].secretRef.name",
        "not an object name",
    ),
    (
        _signed(keys=[{"secretRef": {"name": "c", "key": "a/b"}}]),
        "spec.sources[0].signatures.keys[0].secretRef.key",
        "not a data key",
    ),
    (
        _signed(keys=[{"secretRef": {"name": "c"}}], trustRoot={}),
        "spec.sources[0].signatures.trustRoot.configMapRef",
        "required field is missing",
    ),
    (
        _signed(keys=[{"secretRef": {"name": "c"}}], requireTransparencyLog="yes"),
        "spec.sources[0].signatures.requireTransparencyLog",
        "true or false",
    ),
    # rewrites
    (_rewrite(to="cgr.dev/x:latest"), "spec.rewrites[0].to", "has a tag"),
    (_rewrite(to="cgr.dev/x@sha256:" + "a" * 64), "spec.rewrites[0].to", "has a digest"),
    (_rewrite(to="chainguard/python"), "spec.rewrites[0].to", "registry host"),
    (_rewrite(to="cgr.dev"), "spec.rewrites[0].to", "registry host"),
    (_rewrite(to="cgr.dev/Chainguard/x"), "spec.rewrites[0].to", "not a valid repository"),
    (_rewrite(tag="-x"), "spec.rewrites[0].tag", "is not a tag"),
    (_rewrite(tag=1.25), "spec.rewrites[0].tag", "(got 1.25; quote it in YAML)"),
    (_rewrite(**{"from": "python"}), "spec.rewrites[0].from", "no registry"),
    ({"rewrites": [{"from": "docker.io/library/x"}]}, "spec.rewrites[0].to", "missing"),
    # namespaceSelector
    (
        _selector(matchExpressions=[{"key": "k", "operator": "In"}]),
        "spec.namespaceSelector.matchExpressions[0].values",
        "values must be non-empty for operator In",
    ),
    (
        _selector(matchExpressions=[{"key": "k", "operator": "Exists", "values": ["v"]}]),
        "spec.namespaceSelector.matchExpressions[0].values",
        "values must be empty for operator Exists",
    ),
    (
        _selector(matchExpressions=[{"key": "k", "operator": "Equals", "values": ["v"]}]),
        "spec.namespaceSelector.matchExpressions[0].operator",
        "got 'Equals'",
    ),
    (
        _selector(matchExpressions=[{"key": "-k", "operator": "Exists"}]),
        "spec.namespaceSelector.matchExpressions[0].key",
        "not a label key",
    ),
    (
        _selector(matchLabels={"bad key": "v"}),
        'spec.namespaceSelector.matchLabels["bad key"]',
        "not a label key",
    ),
    (
        _selector(matchLabels={"a" * 64: "v"}),
        f'spec.namespaceSelector.matchLabels["{"a" * 64}"]',
        "not a label key",
    ),
    (
        _selector(matchLabels={"tier": "-prod"}),
        'spec.namespaceSelector.matchLabels["tier"]',
        "not a label value",
    ),
]


@pytest.mark.parametrize(("spec", "path", "reason"), INVALID)
def test_bad_policies_are_refused_naming_the_field(
    spec: dict[str, Any], path: str, reason: str
) -> None:
    spec = copy.deepcopy(spec)
    for source in spec.get("sources", []) if isinstance(spec.get("sources"), list) else []:
        for key in source.get("signatures", {}).get("keys", []):
            if key.get("publicKey") in _keys():
                key["publicKey"] = _keys()[key["publicKey"]]
    with pytest.raises(model.PolicyError) as caught:
        model.parse_policy_document(_doc(spec))
    message = caught.value.user_message
    assert message.startswith(f"ClusterImagePolicy p: {path}: "), message
    assert reason in message
    # A sentence for a person, not a pydantic dump.
    assert "\n" not in message
    assert "pydantic" not in message
    assert "Value error" not in message


def test_the_same_refusals_from_parse_spec_start_at_spec() -> None:
    with pytest.raises(model.PolicyError) as caught:
        model.parse_spec({"mode": "x", "sources": [_source()]})
    assert caught.value.user_message.startswith("spec.mode: ")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**_doc({"sources": [_source()]}), "apiVersion": "v1"}, "apiVersion: Input should be"),
        ({**_doc({"sources": [_source()]}), "extra": 1}, "extra: unknown field"),
        ({k: v for k, v in _doc({}).items() if k != "spec"}, "spec: required field is missing"),
        ({**_doc({"sources": [_source()]}), "metadata": {}}, "metadata.name: required field"),
    ],
)
def test_bad_documents_are_refused_naming_the_field(document: dict[str, Any], message: str) -> None:
    with pytest.raises(model.PolicyError) as caught:
        model.parse_policy_document(document)
    assert message in caught.value.user_message


def test_a_namespaced_policy_is_named_with_its_namespace_and_more_problems_are_counted() -> None:
    doc = _doc({"mode": "x", "pinDigests": "x", "sources": [_source(name="A")]}, "ImagePolicy")
    doc["metadata"]["namespace"] = "team-a"
    with pytest.raises(model.PolicyError) as caught:
        model.parse_policy_document(doc)
    message = caught.value.user_message
    assert message.startswith("ImagePolicy team-a/p: spec.mode: ")
    assert message.endswith("(and 2 more problems)")
    problems = caught.value.context["problems"]
    assert isinstance(problems, list)
    assert [problem.split(":")[0] for problem in problems] == [
        "spec.mode",
        "spec.pinDigests",
        "spec.sources[0].name",
    ]


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(model.PolicyError, match=r"^policy: \(document\): must be a mapping"):
        model.parse_policy_document(["not", "a", "policy"])  # type: ignore[arg-type]


def _full_spec() -> dict[str, Any]:
    """A spec that sets every field there is, each away from its default."""
    return {
        "mode": "warn",
        "namespaceSelector": {
            "matchLabels": {"team": "a"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod"]}],
        },
        "pinDigests": False,
        "sources": [
            {
                "name": "signed",
                "images": ["cgr.dev/chainguard/**", "ghcr.io/org/*"],
                "signatures": {
                    "keyless": [
                        {"issuer": "https://i", "subjectRegExp": "https://s/.*"},
                        {"issuerRegExp": "https://.*", "subject": "me@example.com"},
                    ],
                    "keys": [
                        {"publicKey": _keys()["p256"]},
                        {"secretRef": {"name": "k", "namespace": "ns", "key": "k.pub"}},
                    ],
                    "trustRoot": {"configMapRef": {"name": "r", "namespace": "ns", "key": "r"}},
                    "requireTransparencyLog": False,
                },
            },
            {"name": "plain", "images": ["docker.io/library/*"]},
        ],
        "rewrites": [
            {"from": "docker.io/library/python", "to": "cgr.dev/chainguard/python", "tag": "keep"},
            {"from": "docker.io/library/*", "to": "mirror.example/library/x"},
        ],
    }


@pytest.mark.parametrize("spec", [_full_spec, lambda: _design_example()["spec"]])
def test_round_trip_through_the_wire_form(spec: Any) -> None:
    written = spec()
    parsed = model.parse_spec(written)
    wire = parsed.model_dump(by_alias=True, exclude_unset=True)
    assert model.parse_spec(wire) == parsed
    # Exactly what was written, in the YAML's own names.
    assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == written
    everything = parsed.model_dump(by_alias=True, mode="json")
    assert model.parse_spec(everything) == parsed


def test_round_trip_of_a_whole_document() -> None:
    document = model.parse_policy_document(_design_example())
    again = model.parse_policy_document(document.model_dump(by_alias=True, exclude_unset=True))
    assert again == document


def test_models_are_frozen_and_hashable() -> None:
    spec = model.parse_spec(_full_spec())
    with pytest.raises(pydantic.ValidationError):
        spec.mode = "enforce"
    assert hash(spec) == hash(model.parse_spec(_full_spec()))
    assert len({spec, model.parse_spec(_full_spec())}) == 1
