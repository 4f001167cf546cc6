"""The shipped presets (policies/*.yaml): each compiles, trusts the identities its comments and the
README say, trusts every target it rewrites to, and documents the runtime differences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegate.core import reference
from imagegate.policy import catalog, engine, model
from imagegate.policy.compile import compile_policy

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "policies").glob("*.yaml"))
README = (ROOT / "README.md").read_text()

#: Chainguard's public images (issue 12's facts, the research notes and Chainguard's docs).
CHAINGUARD = {
    "images": ["cgr.dev/chainguard/**", "docker.io/chainguard/**"],
    "signatures": {
        "keyless": [
            {
                "issuer": "https://token.actions.githubusercontent.com",
                "subject": "https://github.com/chainguard-images/images/.github/workflows/"
                "release.yaml@refs/heads/main",
            }
        ]
    },
}
#: Docker Hardened Images: a keyring in one Secret, no transparency log (Docker's docs).
DHI = {
    "images": ["dhi.io/**"],
    "signatures": {
        "keys": [
            {"secretRef": {"name": "dhi-keyring", "key": "key-1.pub"}},
            {"secretRef": {"name": "dhi-keyring", "key": "key-2.pub"}},
        ],
        "requireTransparencyLog": False,
    },
}
CHAINGUARD_ATTESTATIONS = [
    {"predicateType": "https://slsa.dev/provenance/v1"},
    {"predicateType": "https://spdx.dev/Document"},
]
#: preset → {source name → what it must say (a subset of the source as written)}.
EXPECTED_SOURCES: dict[str, dict[str, dict[str, Any]]] = {
    "chainguard-only": {"chainguard": {**CHAINGUARD, "attestations": CHAINGUARD_ATTESTATIONS}},
    "chainguard-org": {
        "chainguard-org": {
            "images": ["cgr.dev/example.com/**"],
            "signatures": {
                "keyless": [
                    {
                        "issuer": "https://issuer.enforce.dev",
                        "subjectRegExp": r"https://issuer\.enforce\.dev/"
                        "(IMAGE_SYNCER_ID|CUSTOM_IMAGE_BUILDER_ID)",
                    }
                ]
            },
            "attestations": CHAINGUARD_ATTESTATIONS,
        }
    },
    "dhi-only": {"dhi": DHI},
    "rewrite-to-dhi": {"dhi": DHI},
    "rewrite-to-chainguard": {"chainguard": CHAINGUARD},
    "rewrite-to-dhi-else-chainguard": {"dhi": DHI, "chainguard": CHAINGUARD},
    "trusted-publishers": {"chainguard": CHAINGUARD},
}
#: Presets that trust hardened images: their comments must warn about running them.
HARDENED = sorted(set(EXPECTED_SOURCES) - {"trusted-publishers"})


def _document(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "policies" / f"{name}.yaml").read_text())
    return data


def _compiled(name: str) -> engine.CompiledPolicy:
    return compile_policy(model.parse_policy_document(_document(name)))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_is_one_policy_that_compiles_under_its_file_name(path: Path) -> None:
    (document,) = [d for d in yaml.safe_load_all(path.read_text()) if d]  # the chart needs one
    assert model.is_policy_document(document)
    policy = compile_policy(model.parse_policy_document(document))
    assert policy.broken is None
    assert policy.name == path.stem
    assert policy.mode is engine.Mode.ENFORCE or path.stem == "onboarding-warn"


def test_every_preset_has_an_expectation_here_or_is_known_to_trust_no_identity() -> None:
    assert {p.stem for p in PRESETS} == {*EXPECTED_SOURCES, "onboarding-warn"}


@pytest.mark.parametrize(("name", "sources"), sorted(EXPECTED_SOURCES.items()))
def test_each_preset_trusts_the_documented_identities(
    name: str, sources: dict[str, dict[str, Any]]
) -> None:
    written = {source["name"]: source for source in _document(name)["spec"]["sources"]}
    for source_name, expected in sources.items():
        source = written[source_name]
        for field, value in expected.items():
            assert source.get(field) == value, f"{name}: sources[{source_name}].{field}"


def _comments(name: str) -> str:
    return " ".join(
        line.lstrip("# ").strip()
        for line in (ROOT / "policies" / f"{name}.yaml").read_text().splitlines()
        if line.startswith("#")
    )


@pytest.mark.parametrize("name", ["chainguard-only", "chainguard-org", "dhi-only"])
def test_the_comments_name_what_the_preset_reads(name: str) -> None:
    """The predicate types and issuer the comments say were verified, and the Secret and data
    keys the comments' kubectl line creates, are the ones the preset uses."""
    comments = _comments(name)
    for source in _document(name)["spec"]["sources"]:
        for attestation in source.get("attestations", []):
            assert attestation["predicateType"] in comments
        for keyless in source["signatures"].get("keyless", []):
            assert keyless["issuer"] in comments
        for key in source["signatures"].get("keys", []):
            assert f"secret generic {key['secretRef']['name']}" in comments
            assert f"--from-file={key['secretRef']['key']}=" in comments


@pytest.mark.parametrize("name", HARDENED)
def test_each_hardened_preset_documents_the_runtime_differences(name: str) -> None:
    comments = _comments(name)
    for words in ("non-root", "no shell", "entrypoints"):
        assert words in comments, f"{name}: say '{words}'"


def test_the_readme_lists_every_preset_with_its_chart_key() -> None:
    values = yaml.safe_load((ROOT / "charts" / "imagegate" / "values.yaml").read_text())
    keys = set(values["presets"])
    rows = [line for line in README.splitlines() if line.startswith("| `")]
    for path in PRESETS:
        row = next((r for r in rows if r.startswith(f"| `{path.stem}` (")), None)
        assert row is not None, f"README: no row for {path.stem}"
        key = row.split("(`", 1)[1].split("`)", 1)[0]
        assert key in keys
    assert len(keys) == len(PRESETS)


@pytest.mark.parametrize(
    ("name", "image", "expected", "dropped"),
    [
        ("rewrite-to-dhi", "python:3.12-slim", "dhi.io/python:3.12", None),
        (
            "rewrite-to-chainguard",
            "python:3.12-slim",
            "cgr.dev/chainguard/python:latest",
            "3.12-slim",
        ),
        ("rewrite-to-dhi-else-chainguard", "python:3.12-slim", "dhi.io/python:3.12", None),
        # DHI has no curlimages/curl: the second rule, Chainguard's, takes it.
        (
            "rewrite-to-dhi-else-chainguard",
            "curlimages/curl:8.5.0",
            "cgr.dev/chainguard/curl:latest",
            "8.5.0",
        ),
    ],
)
def test_the_rewrite_presets_map_as_their_comments_say(
    name: str, image: str, expected: str, dropped: str | None
) -> None:
    rewritten = _compiled(name).rewrite_of(reference.parse(image))
    assert rewritten is not None
    assert str(rewritten.image) == expected
    assert rewritten.dropped_version == dropped
    comments = (ROOT / "policies" / f"{name}.yaml").read_text()
    # The example the comments give is what happens.
    assert image in comments
    assert expected in comments


@pytest.mark.parametrize(
    "name", ["rewrite-to-dhi", "rewrite-to-chainguard", "rewrite-to-dhi-else-chainguard"]
)
def test_a_rewrite_preset_trusts_every_target_it_rewrites_to(name: str) -> None:
    """Else its rewrites would be denied by the preset itself."""
    policy = _compiled(name)
    entries = catalog.load().images
    assert entries
    for entry in entries:
        rewritten = policy.rewrite_of(reference.parse(f"{entry.source}:1.0"))
        if rewritten is not None:
            assert engine.trusted_by_sources(rewritten.image, [policy]), (name, entry.source)
