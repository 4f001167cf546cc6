"""`imagegate check`: the docs/design.md §6 contract (output shape and exit codes)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from imagegate.commands import documents
from imagegate.commands.cli import main

ROOT = Path(__file__).resolve().parents[2]
POLICY = """
apiVersion: imagegate.dev/v1alpha1
kind: ClusterImagePolicy
metadata: {name: chainguard-and-dvp}
spec:
  sources:
    - {name: chainguard, images: ["cgr.dev/chainguard/**"]}
  rewrites:
    - {from: docker.io/library/nginx, to: cgr.dev/chainguard/nginx}
"""
POD = """
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
    - {name: web, image: "nginx:1.25"}
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    policy, pod = tmp_path / "policy.yaml", tmp_path / "pod.yaml"
    policy.write_text(POLICY)
    pod.write_text(POD)
    return policy, pod


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_output_matches_the_design_example(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["check", "-p", str(files[0]), "-o", "json", str(files[1])], capsys)
    assert code == 0
    assert json.loads(out) == {
        "allowed": True,
        "errors": [],
        # Offline, a rewrite is shown as `/mutate` would make it, saying its target (which
        # `/mutate` resolves and verifies first, design.md §5.2) was not checked.
        "summary": "imagegate check: 1 objects, 1 admitted, 0 denied, 0 with warnings; "
        "1 rewrite targets not checked offline (--verify checks them)",
        "objects": [
            {
                "file": str(files[1]),
                "line": 2,
                "kind": "Pod",
                "namespace": "default",
                "name": "web",
                "allowed": True,
                "warnings": [],
                "images": [
                    {
                        "path": "/spec/containers/0/image",
                        "line": 7,
                        "container": "web",
                        "image": "nginx:1.25",
                        "final": "cgr.dev/chainguard/nginx:latest",
                        "allowed": True,
                        "policy": "chainguard-and-dvp",
                        "source": "chainguard",
                        "reason": "rewritten from docker.io/library/nginx; "
                        "target not checked offline (--verify checks it)",
                    }
                ],
            }
        ],
    }


def test_a_denial_exits_1_and_the_text_table_says_why(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "list.json"
    manifest.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "CronJob",
                        "metadata": {"name": "nightly", "namespace": "ops"},
                        "spec": {
                            "schedule": "@daily",
                            "jobTemplate": {
                                "spec": {
                                    "template": {
                                        "spec": {
                                            "containers": [
                                                {"name": "job", "image": "ghcr.io/acme/job:1"}
                                            ]
                                        }
                                    }
                                }
                            },
                        },
                    }
                ],
            }
        )
    )
    code, out, _ = run(["check", "-p", str(files[0]), str(manifest)], capsys)
    assert code == 1
    header, row, summary = out.splitlines()
    assert summary == "imagegate check: 1 objects, 0 admitted, 1 denied, 0 with warnings"
    assert header.split() == ["OBJECT", "CONTAINER", "IMAGE", "RESULT", "DETAIL"]
    assert row.split()[:4] == ["CronJob/ops/nightly", "job", "ghcr.io/acme/job:1", "denied"]
    assert row.endswith("ghcr.io/acme/job is not from a source this policy trusts")


def test_namespace_labels_feed_the_namespace_selector(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    selective = tmp_path / "selective.yaml"
    selective.write_text(
        POLICY.replace("spec:\n", "spec:\n  namespaceSelector: {matchLabels: {tier: prod}}\n", 1)
        .replace("rewrites", "x-unused")
        .split("  x-unused")[0]
    )
    bad_pod = tmp_path / "bad.yaml"
    bad_pod.write_text(POD.replace("nginx:1.25", "ghcr.io/a/b"))
    assert run(["check", "-p", str(selective), str(bad_pod)], capsys)[0] == 0
    args = ["check", "-p", str(selective), "--namespace-labels", "tier=prod", str(bad_pod)]
    assert run(args, capsys)[0] == 1


def test_stdin_manifests(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(POD))
    assert run(["check", "-p", str(files[0]), "-"], capsys)[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "{missing}", "{pod}"], "cannot read"),
        (["-p", "{pod}", "{pod}"], "Pod is not an imagegate policy"),
        (["-p", "{broken}", "{pod}"], "spec.mode"),
        (["-p", "{policy}", "{garbage}"], "is not YAML or JSON"),
        (["-p", "{policy}", "--namespace-labels", "nolabel", "{pod}"], "--namespace-labels"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path,
    files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(POLICY.replace("spec:\n", "spec:\n  mode: strict\n", 1))
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("a: [unclosed")
    names = {
        "policy": files[0],
        "pod": files[1],
        "missing": tmp_path / "nope.yaml",
        "broken": broken,
        "garbage": garbage,
    }
    code, _, err = run(["check", *(a.format(**names) for a in args)], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("imagegate: ")
    assert message in err


def test_the_presets_judge_a_sample_as_documented(capsys: pytest.CaptureFixture[str]) -> None:
    sample = ROOT / "tests" / "unit" / "data" / "sample-workloads.yaml"
    code, out, _ = run(
        ["check", "-p", str(ROOT / "policies" / "onboarding-warn.yaml"), "-o", "json", str(sample)],
        capsys,
    )
    result = json.loads(out)
    assert code == 0  # warn mode never denies
    warnings = [w for obj in result["objects"] for w in obj["warnings"]]
    assert any(
        "would rewrite python:3.12 to cgr.dev/chainguard/python:latest" in w for w in warnings
    )
    assert any("ghcr.io/acme/api:1.4 would be denied" in w.replace("'", "") for w in warnings)


OFFICIAL = """
apiVersion: imagegate.dev/v1alpha1
kind: ClusterImagePolicy
metadata: {name: official}
spec:
  sources:
    - {name: official, images: ["docker.io/library/*"]}
"""


def test_an_untrusted_image_volume_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy, pod = tmp_path / "policy.yaml", tmp_path / "pod.yaml"
    policy.write_text(OFFICIAL)
    pod.write_text(
        POD
        + "  volumes:\n"
        + "    - {name: scratch, emptyDir: {}}\n"
        + "    - {name: payload, image: {reference: 'evil.example/payload:1'}}\n"
    )
    code, out, _ = run(["check", "-p", str(policy), "-o", "json", str(pod)], capsys)
    assert code == 1
    [obj] = json.loads(out)["objects"]
    assert [(i["path"], i["container"], i["allowed"]) for i in obj["images"]] == [
        ("/spec/containers/0/image", "web", True),
        ("/spec/volumes/1/image/reference", "payload", False),
    ]
    assert obj["images"][1]["reason"] == (
        "evil.example/payload is not from a source this policy trusts"
    )


def test_an_image_id_is_not_a_docker_official_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy, pod = tmp_path / "policy.yaml", tmp_path / "pod.yaml"
    policy.write_text(OFFICIAL)
    image_id = "sha256:" + "ab" * 32
    pod.write_text(POD.replace("nginx:1.25", image_id))
    code, out, _ = run(["check", "-p", str(policy), "-o", "json", str(pod)], capsys)
    assert code == 1
    [image] = json.loads(out)["objects"][0]["images"]
    assert (image["image"], image["allowed"]) == (image_id, False)
    assert "is an image ID, not a reference" in image["reason"]


def _laughs(levels: int, width: int) -> str:
    """The "billion laughs" in `kind`: each level repeats the one below `width` times."""
    lines = ['l0: &l0 "lol"']
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join([*lines, f"kind: *l{levels}", "apiVersion: v1", ""])


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        # Small enough to expand harmlessly without the bound; the real bomb is the same shape.
        (_laughs(levels=4, width=4), "more than 10 YAML aliases"),
        ("kind: &k [a, *k]\n", "recursive YAML alias (*k)"),
        ("kind: Pod\nspec: " + "[" * 3000 + "]" * 3000 + "\n", "nests deeper than 100 levels"),
        ("kind: Pod\nspec: " + "{a: " * 150 + "{}" + "}" * 150 + "\n", "nests deeper than 100"),
    ],
    ids=["alias-bomb", "recursive-alias", "3000-deep-flow", "150-deep-mappings"],
)
def test_hostile_yaml_exits_2_with_one_line_naming_the_bound(
    tmp_path: Path,
    files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    manifest: str,
    message: str,
) -> None:
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(manifest)
    code, _, err = run(["check", "-p", str(files[0]), str(hostile)], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"imagegate: {hostile} ")
    assert message in err


def test_a_few_aliases_and_a_non_string_kind_are_fine(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "anchors.yaml"
    manifest.write_text(
        "x-image: &image nginx:1.25\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n"
        "spec: {containers: [{name: web, image: *image}]}\n"
        "---\nkind: [not, a, kind]\nitems: []\nmetadata: {name: [x], namespace: {y: 1}}\n"
    )
    code, out, _ = run(["check", "-p", str(files[0]), str(manifest), "-o", "json"], capsys)
    objects = json.loads(out)["objects"]
    assert [(o["kind"], o["name"], o["namespace"]) for o in objects] == [
        ("Pod", "web", "default"),
        ("", "", "default"),
    ]
    assert code == 0


# -- CI output: file and line of every finding, bad files, SARIF (docs/design.md §6.1) ---------

SIGNED = """
apiVersion: imagegate.dev/v1alpha1
kind: ClusterImagePolicy
metadata: {name: signed}
spec:
  sources:
    - name: ours
      images: ["registry.example/**"]
      signatures:
        keys: [{secretRef: {name: cosign}}]
"""
MULTI = """\
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
    - name: web
      image: nginx:1.25
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: evil, namespace: ops}
    spec:
      initContainers:
        - {name: init, image: "cgr.dev/chainguard/busybox"}
      containers:
        - name: main
          image: "ghcr.io/evil/miner:1"
"""


def test_every_object_and_image_has_its_file_and_line(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "multi.yaml"
    manifest.write_text(MULTI)
    code, out, _ = run(["check", "-p", str(files[0]), "-o", "json", str(manifest)], capsys)
    assert code == 1
    objects = json.loads(out)["objects"]
    assert [(o["file"], o["line"], o["name"]) for o in objects] == [
        (str(manifest), 1, "web"),
        (str(manifest), 12, "evil"),  # a List item: its own line, not the List's
    ]
    lines = [(i["path"], i["line"], i["allowed"]) for o in objects for i in o["images"]]
    assert lines == [
        ("/spec/containers/0/image", 7, True),
        ("/spec/initContainers/0/image", 17, True),
        ("/spec/containers/0/image", 20, False),
    ]


def test_a_bad_file_is_reported_and_the_others_still_judged(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("kind: Pod\nspec: [unclosed\n")
    denied = tmp_path / "denied.yaml"
    denied.write_text(POD.replace("nginx:1.25", "ghcr.io/a/b:1"))
    args = ["check", "-p", str(files[0]), "-o", "json", str(garbage), str(denied), str(files[1])]
    code, out, err = run(args, capsys)
    assert code == 2  # bad input wins over a denial, after every file was judged
    assert err.count("\n") == 1
    assert err.startswith(f"imagegate: {garbage} is not YAML")
    report = json.loads(out)
    assert [(o["file"], o["allowed"]) for o in report["objects"]] == [
        (str(denied), False),
        (str(files[1]), True),
    ]
    [error] = report["errors"]
    assert (error["file"], error["line"]) == (str(garbage), 3)
    assert report["summary"] == (
        "imagegate check: 2 objects, 1 admitted, 1 denied, 0 with warnings, 1 unreadable files"
        "; 1 rewrite targets not checked offline (--verify checks them)"
    )


def test_offline_says_which_signature_checks_it_did_not_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy, pod = tmp_path / "policy.yaml", tmp_path / "pod.yaml"
    policy.write_text(SIGNED)
    pod.write_text(POD.replace("nginx:1.25", "registry.example/app:1"))
    code, out, _ = run(["check", "-p", str(policy), str(pod)], capsys)
    assert code == 1
    assert "imagegate check is offline (--verify asks the registries)" in out
    assert out.splitlines()[-1].endswith(
        "; 1 signature checks not done offline (--verify does them)"
    )


def _sarif(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], Path, Path]:
    manifest, garbage = tmp_path / "multi.yaml", tmp_path / "garbage.yaml"
    manifest.write_text(MULTI)
    garbage.write_text("a: [unclosed")
    warn = tmp_path / "warn.yaml"
    warn.write_text(
        OFFICIAL.replace("name: official}", "name: official}\n  # x", 1).replace(
            "spec:\n", "spec:\n  mode: warn\n", 1
        )
    )
    args = ["check", "-p", str(files[0]), "-p", str(warn), "-o", "sarif", str(manifest)]
    code, out, _ = run([*args, str(garbage)], capsys)
    return code, json.loads(out), manifest, garbage


def test_sarif_has_a_result_at_file_and_line_for_every_finding(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, log, manifest, garbage = _sarif(tmp_path, files, capsys)
    assert code == 2
    [sarif_run] = log["runs"]
    found = [
        (
            r["ruleId"],
            r["level"],
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            r["locations"][0]["physicalLocation"].get("region", {}).get("startLine"),
            [loc["fullyQualifiedName"] for loc in r["locations"][0].get("logicalLocations", [])],
        )
        for r in sarif_run["results"]
    ]
    uri = str(manifest)
    assert found == [
        ("policy-warning", "warning", uri, 1, ["Pod/default/web"]),
        ("image-denied", "error", uri, 20, ["Pod/ops/evil/spec/containers/0/image"]),
        ("policy-warning", "warning", uri, 12, ["Pod/ops/evil"]),
        ("policy-warning", "warning", uri, 12, ["Pod/ops/evil"]),
        ("file-unreadable", "error", str(garbage), 1, []),
    ]
    rules = sarif_run["tool"]["driver"]["rules"]
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in sarif_run["results"])
    assert sarif_run["invocations"][0]["executionSuccessful"] is False


#: What SARIF 2.1.0 (OASIS standard) requires of the parts imagegate writes, by section:
#: sarifLog §3.13 (version, runs), run §3.14 (tool), tool §3.18 (driver), toolComponent §3.19
#: (name), reportingDescriptor §3.49 (id), result §3.27 (message; level §3.27.10 one of four;
#: ruleIndex §3.27.6 >= -1), message §3.11 (text or id), region §3.30.5 (startLine >= 1),
#: invocation §3.20 (executionSuccessful).
SARIF_REQUIRED = {
    "type": "object",
    "required": ["version", "runs"],
    "properties": {
        "version": {"const": "2.1.0"},
        "runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["tool"],
                "properties": {
                    "tool": {
                        "type": "object",
                        "required": ["driver"],
                        "properties": {
                            "driver": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "rules": {"type": "array", "items": {"required": ["id"]}}
                                },
                            }
                        },
                    },
                    "invocations": {
                        "type": "array",
                        "items": {"required": ["executionSuccessful"]},
                    },
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["message"],
                            "properties": {
                                "message": {
                                    "anyOf": [{"required": ["text"]}, {"required": ["id"]}]
                                },
                                "level": {"enum": ["none", "note", "warning", "error"]},
                                "ruleIndex": {"type": "integer", "minimum": -1},
                                "locations": {
                                    "type": "array",
                                    "items": {
                                        "properties": {
                                            "physicalLocation": {
                                                "properties": {
                                                    "region": {
                                                        "properties": {
                                                            "startLine": {
                                                                "type": "integer",
                                                                "minimum": 1,
                                                            }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_sarif_has_what_the_specification_requires(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, log, _, _ = _sarif(tmp_path, files, capsys)
    jsonschema.Draft7Validator(SARIF_REQUIRED).validate(log)


def _official_sarif_schema() -> dict[str, Any]:
    """The SARIF 2.1.0 schema, from $IMAGEGATE_SARIF_SCHEMA or the shared fixtures.

    No PyPI package ships it (sarif-om, sarif-tools, sarif-pydantic, pysarif, check-jsonschema
    were looked at; schemastore only caches downloads), and tests reach no network:
    `scripts/test` fetches the SARIF SDK's copy from npm once per machine (scripts/sarif-schema)
    and sets the variable."""
    candidates = [os.environ.get("IMAGEGATE_SARIF_SCHEMA", "")]
    candidates.append(
        str(ROOT.parent / "shared" / "fixtures" / "sarif" / "sarif-schema-2.1.0.json")
    )
    for candidate in filter(None, candidates):
        if Path(candidate).is_file():
            schema: dict[str, Any] = json.loads(Path(candidate).read_text())
            return schema
    pytest.skip(
        "the SARIF 2.1.0 schema is not here: run scripts/sarif-schema (npm) and set "
        "IMAGEGATE_SARIF_SCHEMA to the path it prints (structure is still checked "
        "by test_sarif_has_what_the_specification_requires)"
    )


def test_sarif_validates_against_the_official_schema(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    schema = _official_sarif_schema()
    _, log, _, _ = _sarif(tmp_path, files, capsys)
    validator = jsonschema.validators.validator_for(schema)
    validator(schema, format_checker=validator.FORMAT_CHECKER).validate(log)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--key-file", "cosign"], "--key-file wants NAME=PATH"),
        (["--key-file", "cosign=/nonexistent.pub"], "--key-file cosign: no file"),
        (["--registry-config", "/nonexistent.json"], "--registry-config: no file"),
    ],
)
def test_verify_flags_that_cannot_be_used_exit_2(
    files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    code, _, err = run(["check", "--verify", *flags, "-p", str(files[0]), str(files[1])], capsys)
    assert (code, err.count("\n")) == (2, 1)
    assert message in err


def test_lines_follow_the_nodes_and_fall_back_to_the_object() -> None:
    text = (
        "x-base: &base {name: web, image: 'nginx:1'}\n"  # 1
        "kind: Pod\n"  # 2
        "spec:\n"  # 3
        "  containers:\n"  # 4
        "    - *base\n"  # 5: an alias is where its anchor is
        "    - <<: *base\n"  # 6: a merged key is where it is written, unless overridden
        "      name: other\n"  # 7
    )
    [loaded] = documents.read("-", io.StringIO(text))
    assert loaded.line_of("/spec/containers/0/image") == 1
    assert loaded.line_of("/spec/containers/1/name") == 7
    assert loaded.line_of("/spec/containers/1/image") == 1
    assert loaded.line_of("/spec/containers/9/image") == loaded.line == 1
    assert loaded.line_of("/kind") == 2
