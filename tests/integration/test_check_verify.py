"""`imagegate check --verify` and `imagegate verify` on the real registry, with images signed by
the real cosign CLI: the same decision as `/validate` for every image (docs/design.md §6.2).

The webhook side is wired as the operator wires it (a `CosignVerifier` over a `RegistryClient`,
keychains from the Pod's imagePullSecrets through `credentials.ClusterKeychains`); the command
side reads the same credentials from a docker config file.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from conftest import PRIVATE_REGISTRY_USER
from imagegate.admission import builder
from imagegate.admission import review as admission
from imagegate.admission import reviewers as webhook
from imagegate.cluster import credentials
from imagegate.commands import check
from imagegate.commands.cli import main
from imagegate.policy import engine
from imagegate.registry import client as oci
from imagegate.signatures.verifier import CosignVerifier
from imagegate.testbed.registry import LocalRegistry
from support import cosign_key_pair, cosign_sign, docker_config_json, push_random_image

pytestmark = [pytest.mark.registry, pytest.mark.cosign]

PULL_SECRET = "pull"


@dataclass(frozen=True)
class Bed:
    """The images of this tier by what they are, and the files the commands read."""

    images: Mapping[str, str]  # what → image reference (tag)
    digests: Mapping[str, str]
    keys: Path  # signer.pub, stranger.pub
    docker_config: Path  # a directory with config.json
    insecure: tuple[str, ...]


@pytest.fixture(scope="module")
def bed(
    registry: LocalRegistry,
    private_registry: LocalRegistry,
    crane: Path,
    cosign: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Bed:
    work = tmp_path_factory.mktemp("check-verify")
    for name in ("signer", "stranger"):
        cosign_key_pair(cosign, work, name)
    config_dir = work / "docker"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(
        docker_config_json(private_registry.address, *PRIVATE_REGISTRY_USER)
    )
    # what → (registry, signing key or None, bundle)
    plan = {
        "signed-sig": (registry, "signer", False),
        "signed-bundle": (registry, "signer", True),
        "unsigned": (registry, None, False),
        "wrong-key": (registry, "stranger", True),
        "private-signed": (private_registry, "signer", False),
    }
    images, digests = {}, {}
    for what, (where, key, bundle) in plan.items():
        private = where is private_registry
        config = config_dir if private else None
        digest = push_random_image(
            crane, where.address, f"cv/{what}", "v1", work, docker_config=config
        )
        if key is not None:
            cosign_sign(
                cosign,
                work / f"{key}.key",
                f"{where.address}/cv/{what}@{digest}",
                bundle=bundle,
                docker_config=config,
            )
        images[what] = f"{where.address}/cv/{what}:v1"
        digests[what] = digest
    return Bed(images, digests, work, config_dir, (registry.address, private_registry.address))


def _policy(bed: Bed, key: dict[str, Any]) -> str:
    sources = [f"{address}/cv/**" for address in bed.insecure]
    return yaml.safe_dump(
        {
            "apiVersion": "imagegate.dev/v1alpha1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": "signed"},
            "spec": {
                "sources": [
                    {
                        "name": "ours",
                        "images": sources,
                        "signatures": {"keys": [key], "requireTransparencyLog": False},
                    }
                ]
            },
        }
    )


def _inline_policy(bed: Bed) -> str:
    return _policy(bed, {"publicKey": (bed.keys / "signer.pub").read_text()})


def _pod(what: str, image: str) -> dict[str, Any]:
    pod = builder.pod(what, image)
    pod["spec"]["imagePullSecrets"] = [{"name": PULL_SECRET}]
    return pod


class _Policies:
    def __init__(self, policies: Sequence[engine.CompiledPolicy]) -> None:
        self._policies = policies

    def policies(self) -> Sequence[engine.CompiledPolicy]:
        return self._policies

    async def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return {}


class _PullSecrets:
    """The Pod's pull Secret as the API server would hand it to `ClusterKeychains`."""

    def __init__(self, config: bytes) -> None:
        self._config = config

    async def secret_data(self, namespace: str, name: str) -> Mapping[str, bytes]:
        return {credentials.DOCKER_CONFIG_JSON: self._config} if name == PULL_SECRET else {}

    async def service_account_pull_secrets(self, namespace: str, name: str) -> tuple[str, ...]:
        return ()


async def _webhook_decisions(bed: Bed, policy_file: Path) -> dict[str, bool]:
    """What `/validate` answers for a Pod of each image, wired as cluster/operator.py does."""
    policies = check.load_policies([str(policy_file)], io.StringIO())
    material = _PullSecrets((bed.docker_config / "config.json").read_bytes())
    async with aiohttp.ClientSession() as session:
        client = oci.RegistryClient(session, insecure=frozenset(bed.insecure))
        validator = webhook.Validator(
            _Policies(policies),
            CosignVerifier(client),
            keychains=credentials.ClusterKeychains(material, "imagegate-system"),
        )
        decisions = {}
        for what, image in bed.images.items():
            review = admission.AdmissionReview.model_validate(
                builder.review_for(_pod(what, image), namespace="default")
            )
            response = await validator(review, time.monotonic() + 30)
            decisions[what] = response.allowed
        return decisions


def _online_flags(bed: Bed) -> list[str]:
    flags = ["--registry-config", str(bed.docker_config / "config.json")]
    for address in bed.insecure:
        flags += ["--insecure-registry", address]
    return flags


def _check(
    bed: Bed, policy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, Any]]:
    manifests = tmp_path / "pods.yaml"
    manifests.write_text(
        yaml.safe_dump_all([_pod(what, image) for what, image in bed.images.items()])
    )
    flags = [*_online_flags(bed), *extra, "-p", str(policy_file), "-o", "json"]
    code = main(["check", "--verify", *flags, str(manifests)])
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return code, report


EXPECTED = {
    "signed-sig": True,
    "signed-bundle": True,
    "unsigned": False,
    "wrong-key": False,
    "private-signed": True,
}


def test_check_verify_decides_as_the_webhook_for_every_image(
    bed: Bed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(_inline_policy(bed))
    webhook_says = asyncio.run(_webhook_decisions(bed, policy_file))
    assert webhook_says == EXPECTED  # the bed is what this test claims it is
    code, report = _check(bed, policy_file, tmp_path, capsys)
    assert code == 1
    assert {obj["name"]: obj["allowed"] for obj in report["objects"]} == webhook_says
    reasons = {obj["name"]: obj["images"][0]["reason"] for obj in report["objects"]}
    digest = bed.digests["wrong-key"]
    assert reasons["wrong-key"].endswith(
        f"{digest}: keys[0]: signature does not verify with the key"
    )
    assert reasons["unsigned"].endswith(f"{bed.digests['unsigned']}: keys[0]: no signature found")
    assert "not done offline" not in report["summary"]


def test_a_secret_ref_key_is_read_from_key_file_or_named_as_missing(
    bed: Bed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(_policy(bed, {"secretRef": {"name": "cosign"}}))
    key_file = f"cosign={bed.keys / 'signer.pub'}"
    _, report = _check(bed, policy_file, tmp_path, capsys, "--key-file", key_file)
    assert {obj["name"]: obj["allowed"] for obj in report["objects"]} == EXPECTED
    _, report = _check(bed, policy_file, tmp_path, capsys)
    assert not any(obj["allowed"] for obj in report["objects"])
    assert "give --key-file cosign=PATH" in report["objects"][0]["images"][0]["reason"]


def _verify(
    bed: Bed, image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(_inline_policy(bed))
    code = main(["verify", image, "-p", str(policy_file), *_online_flags(bed), *extra])
    return code, capsys.readouterr().out


def test_verify_passes_a_signed_image_and_says_what_it_checked(
    bed: Bed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _verify(bed, bed.images["private-signed"], tmp_path, capsys)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[1] == f"digest:     {bed.digests['private-signed']}"
    assert "policy:     signed (enforce)" in lines
    assert "  source ours of signed: passed" in lines
    assert (
        "  signatures for source ours of signed: any of keys[0] (inline key); trust root "
        "sigstore public-good; transparency log (Rekor) not required"
    ) in lines
    assert "    -> verified" in lines
    assert lines[-1] == "decision:   admitted"


def test_verify_fails_a_wrong_key_image_with_the_reason(
    bed: Bed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _verify(bed, bed.images["wrong-key"], tmp_path, capsys, "-o", "json")
    assert code == 1
    result = json.loads(out)
    assert result["digest"] == bed.digests["wrong-key"]
    assert result["allowed"] is False
    [signature] = result["signatures"]
    assert signature["verified"] is False
    assert signature["reason"] == (
        f"{bed.digests['wrong-key']}: keys[0]: signature does not verify with the key"
    )
    [violation] = result["violations"]
    assert violation["policy"] == "signed"
