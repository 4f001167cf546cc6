"""Images in the local registry: pushed with the real crane, signed with the real cosign.

Used by the tests and by `imagegate dev`, whose stand-ins serve real upstream names
(`cgr.dev/chainguard/nginx:latest`) from the local registry through a registry mirror
(design.md §8): the stand-in is pushed under `mirror/<host>/<repository>` and signed for its
upstream name, as cosign signs the upstream's digest and a mirror only carries bytes.
"""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from imagegate.core import reference

#: The password of every key pair made here (cosign asks for one; nothing here is secret).
COSIGN_PASSWORD = "imagegate-test"
#: Where a stand-in lives in the local registry: `<prefix>/<upstream host>/<repository>`.
MIRROR_PREFIX = "mirror"


def push_random_image(
    crane: Path,
    registry: str,
    repository: str,
    tag: str,
    workdir: Path,
    *,
    docker_config: Path | None = None,
) -> str:
    """Push a one-layer image with random content with the real crane CLI; return its digest.

    `docker_config`: a directory with a config.json holding credentials (a private registry).
    """
    layer = workdir / f"{repository.replace('/', '_')}-{tag}.tar"
    content = secrets.token_bytes(256)
    with tarfile.open(layer, "w") as archive:
        info = tarfile.TarInfo("random.bin")
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    pushed = f"{registry}/{repository}:{tag}"
    env = {**os.environ, **({"DOCKER_CONFIG": str(docker_config)} if docker_config else {})}
    subprocess.run(
        [str(crane), "append", "--new_layer", str(layer), "--new_tag", pushed],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return subprocess.run(
        [str(crane), "digest", pushed], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def cosign_env(docker_config: Path | None = None) -> dict[str, str]:
    """cosign's environment: a fixed key password, no prompts."""
    env = {**os.environ, "COSIGN_PASSWORD": COSIGN_PASSWORD, "COSIGN_YES": "true"}
    if docker_config is not None:
        env["DOCKER_CONFIG"] = str(docker_config)
    return env


def cosign_key_pair(cosign: Path, directory: Path, prefix: str = "cosign") -> Path:
    """A new cosign key pair in `directory`; returns `directory/prefix` (add .key or .pub)."""
    subprocess.run(
        [str(cosign), "generate-key-pair", "--output-key-prefix", prefix],
        cwd=directory,
        env=cosign_env(),
        check=True,
        capture_output=True,
    )
    return directory / prefix


def cosign_sign(
    cosign: Path,
    key: Path,
    signed: str,
    *,
    bundle: bool = True,
    extra: tuple[str, ...] = (),
    docker_config: Path | None = None,
) -> None:
    """Sign `signed` with the real cosign CLI, offline: no transparency log, no signing config.

    `bundle` picks cosign v3's Sigstore bundle referrer (True) or the legacy `.sig` tag (False).
    """
    subprocess.run(
        [
            str(cosign),
            "sign",
            "--key",
            str(key),
            "--tlog-upload=false",
            "--use-signing-config=false",
            f"--new-bundle-format={str(bundle).lower()}",
            *extra,
            signed,
        ],
        env=cosign_env(docker_config),
        check=True,
        capture_output=True,
        timeout=120,
    )


def stand_in_repository(upstream: reference.ImageReference) -> str:
    """The local registry repository that serves `upstream`'s bytes through the mirror."""
    return f"{MIRROR_PREFIX}/{upstream.registry}/{upstream.repository}"


@dataclass(frozen=True)
class StandIns:
    """Stand-ins pushed for upstream names: their digests and the key that signed some."""

    #: Upstream name (as given) → the stand-in's digest.
    digests: Mapping[str, str]
    #: The public key PEM of the signed ones.
    public_key: str


def push_stand_ins(
    crane: Path,
    cosign: Path,
    registry: str,
    workdir: Path,
    *,
    signed: Iterable[str],
    unsigned: Iterable[str] = (),
) -> StandIns:
    """Push a random stand-in for each upstream `name:tag` under its mirror path in `registry`
    (host:port), and sign the `signed` ones with a new key pair (in `workdir`) for their
    upstream name, as the upstream's own signature would be."""
    key = cosign_key_pair(cosign, workdir, "stand-ins")
    digests = {}
    for name, sign in [*((n, True) for n in signed), *((n, False) for n in unsigned)]:
        upstream = reference.parse(name)
        repository = stand_in_repository(upstream)
        digest = push_random_image(crane, registry, repository, upstream.tag or "latest", workdir)
        if sign:
            identity = f"{upstream.registry}/{upstream.repository}"
            cosign_sign(
                cosign,
                key.with_suffix(".key"),
                f"{registry}/{repository}@{digest}",
                extra=("--sign-container-identity", identity),
            )
        digests[name] = digest
    return StandIns(digests, key.with_suffix(".pub").read_text())


def mirror_hosts_toml(registry_url: str, host: str, server: str | None = None) -> str:
    """containerd's hosts.toml for `host`: the local registry's mirror path first, then
    `server` (default: the real upstream, `https://<host>`)."""
    return (
        f'server = "{server or f"https://{host}"}"\n'
        f'[host."{registry_url}/v2/{MIRROR_PREFIX}/{host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  override_path = true\n"
    )


def write_mirror_directory(directory: Path, registry_url: str, hosts: Iterable[str]) -> Path:
    """A `--registry-mirrors` directory (containerd's config_path) mirroring each of `hosts`
    from the local registry at `registry_url`."""
    for host in hosts:
        (directory / host).mkdir(parents=True, exist_ok=True)
        (directory / host / "hosts.toml").write_text(mirror_hosts_toml(registry_url, host))
    return directory
