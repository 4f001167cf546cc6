"""`imagegate check --verify`, `imagegate verify` and `imagegate migrate --verify` read registries
through `--registry-mirrors` as `imagegate run` does (design.md §8): `dhi.io/python:3.12` is a
stand-in in the local registry under `mirror/dhi.io/python`, signed by the real cosign for its
upstream name, and dhi.io's `server` is a loopback port that refuses connections. Each command is
also run with a directory that has only that server: then nothing answers for dhi.io, so what
the mirrored runs see came through the mirror.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegate.admission import builder
from imagegate.commands.cli import main
from imagegate.testbed import images
from imagegate.testbed.registry import LocalRegistry
from netproxy import ThreadedProxy

pytestmark = [pytest.mark.registry, pytest.mark.cosign]

PYTHON = "dhi.io/python:3.12"
#: A stand-in pushed but not signed: a rewrite to it must be refused.
UNSIGNED = "dhi.io/python:3.13"


@dataclass(frozen=True)
class Mirrored:
    digest: str
    policy: Path  # trusts dhi.io/** signed with the stand-in's key; rewrites python to dhi.io
    mirrored: Path  # a --registry-mirrors directory with the mirror entry
    upstream_only: Path  # one whose dhi.io has only the refusing server


@pytest.fixture(scope="module")
def refused() -> Iterator[str]:
    """host:port of a loopback port that refuses connections: dhi.io's `server`."""
    threaded = ThreadedProxy("127.0.0.1", 9)
    with threaded as proxy:
        threaded.refuse()
        yield proxy.address


@pytest.fixture(scope="module")
def bed(
    registry: LocalRegistry,
    crane: Path,
    cosign: Path,
    refused: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Mirrored:
    work = tmp_path_factory.mktemp("online-mirrors")
    stand_ins = images.push_stand_ins(
        crane, cosign, registry.address, work, signed=[PYTHON], unsigned=[UNSIGNED]
    )
    directories = {}
    for which, toml in {
        "mirrored": images.mirror_hosts_toml(registry.url, "dhi.io", f"http://{refused}"),
        "upstream-only": f'server = "http://{refused}"\n',
    }.items():
        (work / which / "dhi.io").mkdir(parents=True)
        (work / which / "dhi.io" / "hosts.toml").write_text(toml)
        directories[which] = work / which
    signatures = {"keys": [{"publicKey": stand_ins.public_key}], "requireTransparencyLog": False}
    policy = {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": "dhi"},
        "spec": {
            "sources": [{"name": "dhi", "images": ["dhi.io/**"], "signatures": signatures}],
            "rewrites": [
                {"from": "docker.io/library/python", "to": "dhi.io/python", "tag": "keep"}
            ],
        },
    }
    (work / "policy.yaml").write_text(yaml.safe_dump(policy))
    return Mirrored(
        stand_ins.digests[PYTHON],
        work / "policy.yaml",
        directories["mirrored"],
        directories["upstream-only"],
    )


def _mirrors(bed: Mirrored, mirrored: bool) -> list[str]:
    return ["--registry-mirrors", str(bed.mirrored if mirrored else bed.upstream_only)]


@pytest.mark.parametrize("mirrored", [True, False], ids=["mirrored", "upstream-only"])
def test_check_verify_reads_digests_and_signatures_through_the_mirror(
    bed: Mirrored,
    mirrored: bool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(builder.pod("app", PYTHON)))
    argv = ["check", "--verify", *_mirrors(bed, mirrored), "-p", str(bed.policy), "-o", "json"]
    code = main([*argv, str(manifest)])
    [image] = json.loads(capsys.readouterr().out)["objects"][0]["images"]
    if mirrored:
        assert code == 0, image
        assert image["allowed"] is True
        assert image["final"] == PYTHON  # the upstream name: the mirror only carries bytes
        return
    assert code == 1
    assert "dhi.io did not answer" in image["reason"], image


@pytest.mark.parametrize("mirrored", [True, False], ids=["mirrored", "upstream-only"])
def test_verify_checks_the_signature_read_through_the_mirror(
    bed: Mirrored, mirrored: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["verify", PYTHON, "-p", str(bed.policy), *_mirrors(bed, mirrored), "-o", "json"]
    code = main(argv)
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert code == (0 if mirrored else 1), result
    assert result["allowed"] is mirrored
    if mirrored:
        assert result["digest"] == bed.digest
        assert [s["verified"] for s in result["signatures"]] == [True]


@pytest.mark.parametrize("mirrored", [True, False], ids=["mirrored", "upstream-only"])
def test_migrate_verify_finds_the_target_through_the_mirror(
    bed: Mirrored, mirrored: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(builder.pod("app", "python:3.12")))
    argv = ["migrate", "--verify", "-o", "json", "-p", str(bed.policy), *_mirrors(bed, mirrored)]
    assert main([*argv, str(manifest)]) == 0
    [image] = json.loads(capsys.readouterr().out)["workloads"][0]["images"]
    if mirrored:
        assert image["verified"] == {"exists": True, "digest": bed.digest, "detail": ""}
    else:
        assert image["verified"]["exists"] is None  # not answered: not checked, not missing


def test_check_verify_checks_rewrite_targets_as_mutate_does(
    bed: Mirrored, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """python:3.12 → a signed target: rewritten; 3.13 → an unsigned one and 3.11 → a missing one:
    not rewritten, with /mutate's warning, and judged as written (untrusted: denied)."""
    manifests = tmp_path / "pods.yaml"
    tags = ("3.12", "3.13", "3.11")
    manifests.write_text(
        yaml.safe_dump_all([builder.pod(f"p{t[-2:]}", f"python:{t}") for t in tags])
    )
    argv = ["check", "--verify", *_mirrors(bed, True), "-p", str(bed.policy), "-o", "json"]
    assert main([*argv, str(manifests)]) == 1
    objects = json.loads(capsys.readouterr().out)["objects"]
    finals = {obj["images"][0]["image"]: obj["images"][0]["final"] for obj in objects}
    assert finals == {
        "python:3.12": PYTHON,
        "python:3.13": "python:3.13",
        "python:3.11": "python:3.11",
    }
    checked, unsigned, missing = objects
    assert checked["allowed"] is True
    assert (
        checked["images"][0]["reason"] == "rewritten from docker.io/library/python; target checked"
    )
    assert checked["warnings"] == []
    [warning] = unsigned["warnings"]
    assert warning.startswith(
        "imagegate: not rewriting python:3.13 to dhi.io/python:3.13: signature not verified by "
        "policy dhi, source dhi: keys[0]: no signature found"
    ), warning
    assert missing["warnings"] == [
        "imagegate: not rewriting python:3.11 to dhi.io/python:3.11: not found in its registry; "
        "validation decides"
    ]
    assert unsigned["allowed"] is False
    assert missing["allowed"] is False
    assert (
        "docker.io/library/python is not from a source this policy trusts"
        in (missing["images"][0]["reason"])
    )
