"""hosts.toml files as containerd reads them, parsed into ordered endpoints (registry/mirrors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegate.commands import cli
from imagegate.registry import mirrors

#: The shape of containerd's documented example (docs/hosts.md), with a prefix on a shared mirror.
DOCKER_HUB_HOSTS = """
server = "https://registry-1.docker.io"

[host."https://mirror.example.com"]
  capabilities = ["pull", "resolve"]
  ca = "certs/mirror-ca.crt"

[host."https://cache.example.com/v2/hub"]
  capabilities = ["pull"]
  override_path = true
  skip_verify = true
  [host."https://cache.example.com/v2/hub".header]
    x-team = ["platform", "security"]
"""


def test_hosts_are_tried_in_file_order_then_the_server() -> None:
    parsed = mirrors.parse_hosts_toml("docker.io", DOCKER_HUB_HOSTS, Path("/etc/certs.d/docker.io"))
    first, second, server = parsed.endpoints_for("docker.io")
    assert first == mirrors.Endpoint(
        api_root="https://mirror.example.com/v2",
        host="mirror.example.com",
        capabilities=frozenset({"pull", "resolve"}),
        mirror=True,
        ca_files=(Path("/etc/certs.d/docker.io/certs/mirror-ca.crt"),),
    )
    assert second.api_root == "https://cache.example.com/v2/hub"
    assert second.url("library/python", "manifests/3.12") == (
        "https://cache.example.com/v2/hub/library/python/manifests/3.12"
    )
    assert second.skip_verify
    assert not second.can("resolve")
    assert second.headers == (("x-team", "platform"), ("x-team", "security"))
    # The upstream keeps its name for credentials: a pull secret for docker.io applies there only.
    assert server == mirrors.Endpoint("https://registry-1.docker.io/v2", "docker.io")


def test_without_server_the_upstream_comes_last_and_insecure_applies_to_it() -> None:
    parsed = mirrors.parse_hosts_toml("dhi.io", '[host."http://127.0.0.1:5000/v2/m/dhi.io"]\n')
    mirror, upstream = parsed.endpoints_for("dhi.io")
    # override_path unset, but the path already ends in /v2/...: containerd appends /v2 only
    # when the path does not end in it.
    assert mirror.api_root == "http://127.0.0.1:5000/v2/m/dhi.io/v2"
    assert upstream == mirrors.Endpoint("https://dhi.io/v2", "dhi.io")
    assert parsed.endpoints_for("dhi.io", insecure=True)[1].api_root == "http://dhi.io/v2"


def test_a_url_without_scheme_is_https_and_v2_is_not_doubled() -> None:
    parsed = mirrors.parse_hosts_toml("quay.io", '[host."mirror.local:5000/v2"]\n')
    assert parsed.endpoints_for("quay.io")[0].api_root == "https://mirror.local:5000/v2"


def test_unconfigured_hosts_get_the_default_mirrors_and_their_own_upstream() -> None:
    default = mirrors.parse_hosts_toml(
        mirrors.DEFAULT_HOST, 'server = "https://x.example"\n[host."https://proxy.local"]\n'
    )
    hub = mirrors.parse_hosts_toml("docker.io", 'server = "https://hub.local"\n')
    both = mirrors.merge(default, hub)
    assert [e.api_root for e in both.endpoints_for("ghcr.io")] == [
        "https://proxy.local/v2",
        "https://ghcr.io/v2",
    ]
    assert [e.api_root for e in both.endpoints_for("docker.io")] == ["https://hub.local/v2"]
    assert [e.api_root for e in mirrors.NO_MIRRORS.endpoints_for("docker.io")] == [
        "https://registry-1.docker.io/v2"
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[host."https://m"]\n  client = "c.pem"\n', "host.https://m.client: not supported"),
        ('[host."https://m"]\n  capabilities = ["fetch"]\n', "host.https://m.capabilities.0"),
        ('server = "https://m"\ndial_timeout = "1s"\n', "dial_timeout: not supported"),
        ("server = ", "not TOML"),
        ('[host."https://m?x=1"]\n', "is not a registry URL"),
    ],
)
def test_what_imagegate_cannot_honour_is_a_named_error(text: str, problem: str) -> None:
    with pytest.raises(mirrors.MirrorConfigError, match=r"^dhi\.io/hosts\.toml: ") as raised:
        mirrors.parse_hosts_toml("dhi.io", text)
    assert problem in str(raised.value)


def test_a_directory_is_read_as_containerd_reads_config_path(tmp_path: Path) -> None:
    (tmp_path / "dhi.io").mkdir()
    (tmp_path / "dhi.io" / "hosts.toml").write_text('[host."http://127.0.0.1:1/v2/x"]\n')
    (tmp_path / "127.0.0.1:5000").mkdir()
    (tmp_path / "127.0.0.1:5000" / "hosts.toml").write_text('server = "http://127.0.0.1:5000"\n')
    (tmp_path / "README").write_text("not a host")
    read = mirrors.read_directory(tmp_path)
    assert sorted(read.hosts) == ["127.0.0.1:5000", "dhi.io"]
    assert read.endpoints_for("127.0.0.1:5000")[0].host == "127.0.0.1:5000"
    with pytest.raises(mirrors.MirrorConfigError, match="not a directory"):
        mirrors.read_directory(tmp_path / "README")


def test_run_refuses_a_mirror_directory_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = tmp_path / "c", tmp_path / "k"
    cert.write_text("c")
    key.write_text("k")
    (tmp_path / "certs.d" / "dhi.io").mkdir(parents=True)
    (tmp_path / "certs.d" / "dhi.io" / "hosts.toml").write_text(
        '[host."https://m"]\nclient = "x"\n'
    )
    base = ["run", "--tls-cert", str(cert), "--tls-key", str(key), "--registry-mirrors"]
    assert cli.main([*base, str(tmp_path / "certs.d")]) == 2
    assert "--registry-mirrors: dhi.io/hosts.toml: host.https://m.client: not supported" in (
        capsys.readouterr().err
    )
    assert cli.main([*base, str(tmp_path / "absent")]) == 2
    assert "not a directory of <host>/hosts.toml files" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["check", "--verify", "-p", "p.yaml", "m.yaml"], ["verify", "img", "-p", "p.yaml"]],
    ids=["check", "verify"],
)
def test_the_online_tools_refuse_a_mirror_directory_as_run_does(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "certs.d" / "dhi.io").mkdir(parents=True)
    (tmp_path / "certs.d" / "dhi.io" / "hosts.toml").write_text(
        '[host."https://m"]\nclient = "x"\n'
    )
    assert cli.main([*command, "--registry-mirrors", str(tmp_path / "certs.d")]) == 2
    assert "--registry-mirrors: dhi.io/hosts.toml: host.https://m.client: not supported" in (
        capsys.readouterr().err
    )


def test_the_demo_mirror_directory_asks_the_local_registry_first_then_the_upstream(
    tmp_path: Path,
) -> None:
    from imagegate.testbed import images

    images.write_mirror_directory(tmp_path, "http://127.0.0.1:5000", ["cgr.dev"])
    endpoints = mirrors.read_directory(tmp_path).endpoints_for("cgr.dev")
    assert [(e.api_root, e.host, e.mirror) for e in endpoints] == [
        ("http://127.0.0.1:5000/v2/mirror/cgr.dev", "127.0.0.1:5000", True),
        ("https://cgr.dev/v2", "cgr.dev", False),
    ]
