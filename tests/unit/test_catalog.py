"""The catalogue of hardened equivalents: the shipped file, tag mapping, policies that use it by
name (model, compile, engine texts), and `imagegate catalog`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegate.commands.cli import main
from imagegate.core import reference, workloads
from imagegate.policy import catalog, engine, model
from imagegate.policy.compile import compile_policy

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "operator" / "imagegate" / "policy" / "catalog.yaml"
DIGEST = "sha256:" + "a" * 64


def _shipped() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SHIPPED.read_text())
    return data


# -- the shipped file ---------------------------------------------------------------------------


def test_the_shipped_catalogue_validates_and_is_loaded_once() -> None:
    known = catalog.load()
    assert known is catalog.load()
    assert known.version == 1
    assert len(known.images) >= 60
    assert catalog.parse(_shipped()) == known


def test_the_catalogue_is_package_data() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"imagegate.policy" = ["catalog.yaml"]' in pyproject


def test_every_official_image_is_also_known_under_ecr_publics_mirror() -> None:
    known = catalog.load()
    for entry in known.images:
        if entry.source.startswith("docker.io/library/"):
            name = entry.source.removeprefix("docker.io/library/")
            assert known.entry_for(f"public.ecr.aws/docker/library/{name}") is entry


def test_every_tag_map_turns_official_variants_into_valid_tags() -> None:
    for tag, expected in [
        ("3.12-slim", "3.12"),
        ("3.12-slim-bookworm", "3.12"),
        ("20-bookworm-slim", "20"),
        ("20-alpine3.19", "20"),
        ("1.27-alpine-slim", "1.27"),
        ("alpine", "latest"),
        ("slim-bookworm", "latest"),
        ("21-jre-jammy", "21-jre"),
        ("7.2.4", "7.2.4"),
    ]:
        mapped = catalog.map_image(f"python:{tag}", "dhi")
        assert mapped is not None
        assert mapped.image.tag == expected, tag


def _variant(**change: Any) -> dict[str, Any]:
    data = _shipped()
    data.update(change)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_variant(version=2), "version"),
        (_variant(extra=1), "extra"),
        (_variant(images=[{"source": "docker.io/library/x"}]), "name a chainguard or dhi target"),
        (
            _variant(images=[{"source": "docker.io/library/x", "dhi": {"name": "x"}}] * 2),
            "listed twice",
        ),
        (
            _variant(images=[{"source": "python", "dhi": {"name": "python"}}]),
            "not normalised",
        ),
        (
            _variant(
                images=[
                    {
                        "source": "docker.io/library/x",
                        "dhi": {"name": "x", "tags": {"rule": "map", "map": "nope"}},
                    }
                ]
            ),
            "tag map 'nope' is not defined",
        ),
        (
            _variant(images=[{"source": "docker.io/library/x", "dhi": {"name": "x", "z": 1}}]),
            "Extra inputs are not permitted",
        ),
        (_variant(tagMaps={"official": [{"match": "(", "replace": "x"}]}), "does not compile"),
    ],
)
def test_a_broken_catalogue_is_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(catalog.CatalogError, match="the image catalogue is invalid") as caught:
        catalog.parse(data)
    assert message in str(caught.value)


def test_catalogue_models_are_frozen() -> None:
    entry = catalog.load().images[0]
    with pytest.raises(Exception, match="frozen"):
        entry.source = "docker.io/library/other"  # type: ignore[misc]


# -- mapping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "target", "expected", "dropped"),
    [
        ("python:3.12-slim", "dhi", "dhi.io/python:3.12", None),
        ("python:3.12-slim", "chainguard", "cgr.dev/chainguard/python:latest", "3.12-slim"),
        ("node:20-alpine", "dhi", "dhi.io/node:20", None),
        ("mongo:7", "dhi", "dhi.io/mongodb:7", None),
        ("mongo:7", "chainguard", "cgr.dev/chainguard/mongodb:latest", "7"),
        ("golang:1.22", "dhi", "dhi.io/golang:1.22", None),
        ("golang:1.22", "chainguard", "cgr.dev/chainguard/go:latest", "1.22"),
        ("python", "chainguard", "cgr.dev/chainguard/python:latest", None),
        ("public.ecr.aws/docker/library/redis:7.2", "dhi", "dhi.io/redis:7.2", None),
        ("bitnami/redis:7.2.4-debian-12-r3", "dhi", "dhi.io/redis:7.2.4", None),
        (
            "gcr.io/distroless/static:nonroot",
            "chainguard",
            "cgr.dev/chainguard/static:latest",
            "nonroot",
        ),
    ],
)
def test_mapping_keeps_or_drops_the_version(
    image: str, target: catalog.CatalogName, expected: str, dropped: str | None
) -> None:
    mapped = catalog.map_image(image, target)
    assert mapped is not None
    assert str(mapped.image) == expected
    assert mapped.dropped_version == dropped


def test_mapping_drops_the_digest_and_says_so() -> None:
    mapped = catalog.map_image(f"python:3.12@{DIGEST}", "dhi")
    assert mapped is not None
    assert str(mapped.image) == "dhi.io/python:3.12"
    assert mapped.dropped_digest == DIGEST
    digest_only = catalog.map_image(f"python@{DIGEST}", "chainguard")
    assert digest_only is not None
    assert (str(digest_only.image), digest_only.dropped_version) == (
        "cgr.dev/chainguard/python:latest",
        None,
    )


def test_unknown_images_and_missing_targets_map_to_nothing() -> None:
    assert catalog.map_image("ghcr.io/acme/api:1.4", "dhi") is None
    assert catalog.map_image("docker.io/library/docker:27", "dhi") is None  # chainguard only
    assert catalog.map_image(reference.parse("debian:12"), "chainguard") is not None


def test_search_finds_sources_mirrors_and_targets() -> None:
    assert [e.source for e in catalog.search("mongodb", "chainguard")] == [
        "docker.io/library/mongo",
        "docker.io/bitnami/mongodb",
    ]
    assert catalog.search("public.ecr.aws/docker/library/golang")[0].source.endswith("/golang")
    assert all(e.dhi is not None for e in catalog.search("", "dhi"))


# -- policies that use it -----------------------------------------------------------------------


def _doc(*rewrites: dict[str, Any], mode: str = "enforce") -> dict[str, Any]:
    return {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "p"},
        "spec": {"mode": mode, "rewrites": list(rewrites)},
    }


def _plan(*images: str, rewrites: list[dict[str, Any]], mode: str = "enforce") -> list[Any]:
    policy = compile_policy(model.parse_policy_document(_doc(*rewrites, mode=mode)))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {"containers": [{"name": f"c{n}", "image": i} for n, i in enumerate(images)]},
    }
    return engine.plan_rewrites(workloads.find_images(pod), [policy])


def test_catalog_rules_parse() -> None:
    spec = model.parse_policy_document(
        _doc({"catalog": "dhi"}, {"catalog": "chainguard", "allowLatestOnly": True})
    ).spec
    assert [(r.catalog, r.allow_latest_only) for r in spec.rewrites] == [
        ("dhi", None),
        ("chainguard", True),
    ]
    # What the API server stores after defaulting `tag` is accepted too.
    model.parse_policy_document(_doc({"catalog": "dhi", "tag": "latest"}))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"catalog": "dhi", "from": "docker.io/library/x", "to": "cgr.dev/c/x"},
            "spec.rewrites[0]: set either from and to, or catalog, not both",
        ),
        ({}, "spec.rewrites[0]: set either from and to, or catalog"),
        ({"catalog": "dhi", "tag": "keep"}, "spec.rewrites[0].tag: tag applies only with from"),
        (
            {"from": "docker.io/library/x", "to": "cgr.dev/c/x", "allowLatestOnly": True},
            "spec.rewrites[0].allowLatestOnly: allowLatestOnly applies only with catalog",
        ),
        ({"catalog": "quay"}, "spec.rewrites[0].catalog"),
    ],
)
def test_bad_catalog_rules_are_refused(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(model.PolicyError) as caught:
        model.parse_policy_document(_doc(rule))
    assert caught.value.user_message.startswith(f"ClusterImagePolicy p: {message}")


def test_a_dhi_rule_keeps_versions() -> None:
    planned = _plan(
        "python:3.12-slim", "node:20-alpine", "ghcr.io/a/b:1", rewrites=[{"catalog": "dhi"}]
    )
    assert [str(p.final) for p in planned] == [
        "dhi.io/python:3.12",
        "dhi.io/node:20",
        "ghcr.io/a/b:1",
    ]
    assert [p.rewritten_by for p in planned] == ["p", "p", None]


def test_a_latest_only_target_needs_permission_to_drop_a_version() -> None:
    refused = _plan("python:3.12", "python:latest", rewrites=[{"catalog": "chainguard"}])
    assert [p.rewritten_by for p in refused] == [None, "p"]
    assert str(refused[0].final) == "docker.io/library/python:3.12"
    allowed = _plan("python:3.12", rewrites=[{"catalog": "chainguard", "allowLatestOnly": True}])
    assert str(allowed[0].final) == "cgr.dev/chainguard/python:latest"
    assert allowed[0].dropped_version == "3.12"


def test_explicit_rules_override_the_catalogue_wherever_they_are_written() -> None:
    planned = _plan(
        "python:3.12",
        "node:20",
        rewrites=[
            {"catalog": "dhi"},
            {"from": "docker.io/library/python", "to": "registry.acme.io/python", "tag": "keep"},
        ],
    )
    assert [str(p.final) for p in planned] == ["registry.acme.io/python:3.12", "dhi.io/node:20"]


def test_warnings_and_denials_say_which_version_was_dropped() -> None:
    rule = {"catalog": "chainguard", "allowLatestOnly": True}
    previews = _plan("mongo:7", rewrites=[rule], mode="warn")
    decision = engine.evaluate(previews, [previews[0].previews[0][0]], {})
    assert decision.warnings() == [
        "container 'c0': policy p would rewrite mongo:7 to cgr.dev/chainguard/mongodb:latest, "
        "dropping version 7, as the target serves only latest"
    ]
    spec = {
        "mode": "enforce",
        "rewrites": [rule],
        "sources": [{"name": "nothing", "images": ["example.com/**"]}],
    }
    policy = compile_policy(model.parse_policy_document({**_doc(), "spec": spec}))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {"containers": [{"name": "c", "image": "golang:1.22"}]},
    }
    planned = engine.plan_rewrites(workloads.find_images(pod), [policy])
    denial = engine.evaluate(planned, [policy], {}).denial_message()
    assert (
        "(rewritten to cgr.dev/chainguard/go:latest, dropping version 1.22, as the target" in denial
    )


def test_the_dhi_preset_parses_and_rewrites_with_the_catalogue() -> None:
    document = model.parse_policy_document(
        yaml.safe_load((ROOT / "policies" / "rewrite-to-dhi.yaml").read_text())
    )
    assert any(rule.catalog == "dhi" for rule in document.spec.rewrites)
    policy = compile_policy(document)
    assert policy.rewrites[-1] == engine.CatalogRewrite("dhi")


# -- imagegate catalog -------------------------------------------------------------------------


def test_the_command_searches_and_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "golang", "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {
            "source": "docker.io/library/golang",
            "mirrors": ["public.ecr.aws/docker/library/golang"],
            "chainguard": "cgr.dev/chainguard/go",
            "chainguardTags": "latest-only",
            "dhi": "dhi.io/golang",
            "dhiTags": "map:official",
            "inferred": ["dhi"],
            "note": "",
        }
    ]


def test_the_command_prints_a_table_for_one_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "mongo", "--target", "dhi"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SOURCE", "DHI", "(TAGS)"]
    assert lines[1].split() == ["docker.io/library/mongo", "dhi.io/mongodb", "(map:official)"]
    assert lines[-1].startswith("2 entries;")


def test_the_command_fails_when_nothing_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "no-such-image"]) == 1
    assert "0 entries" in capsys.readouterr().out
