"""The registry client through mirrors: the real local registry serves `dhi.io/...` under path
prefixes (containerd's `override_path`), netproxy stands in for endpoints that are down, and the
upstream is a loopback proxy whose connection count shows whether it was asked at all.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from imagegate.cluster import tls
from imagegate.core import reference
from imagegate.registry import client as oci
from imagegate.registry import mirrors
from imagegate.testbed.registry import LocalRegistry
from netproxy import TcpProxy
from support import cosign_key_pair, cosign_sign, push_random_image

pytestmark = [pytest.mark.registry]

PYTHON = reference.parse("dhi.io/python:3.12")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture(scope="module")
def stand_ins(
    registry: LocalRegistry, crane: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Two different `dhi.io/python:3.12` stand-ins, under the prefixes `a/` and `b/`."""
    workdir = tmp_path_factory.mktemp("mirrors")
    return {
        prefix: push_random_image(
            crane, registry.address, f"{prefix}/dhi.io/python", "3.12", workdir
        )
        for prefix in ("a", "b")
    }


@pytest.fixture
async def down() -> AsyncIterator[TcpProxy]:
    """An endpoint that refuses connections (its listening socket closed)."""
    async with TcpProxy("127.0.0.1", 9) as proxy:
        await proxy.refuse()
        yield proxy


@pytest.fixture
async def upstream(registry: LocalRegistry) -> AsyncIterator[TcpProxy]:
    """`dhi.io`'s `server`: the local registry behind a proxy that counts connections."""
    host, port = registry.address.rsplit(":", 1)
    async with TcpProxy(host, int(port)) as proxy:
        yield proxy


def hosts(upstream: TcpProxy, *mirror_urls: str, capabilities: str = "") -> mirrors.Mirrors:
    tables = "".join(
        f'[host."{url}"]\n  override_path = true\n{capabilities}' for url in mirror_urls
    )
    return mirrors.parse_hosts_toml("dhi.io", f'server = "http://{upstream.address}"\n{tables}')


def prefix(registry: LocalRegistry, name: str) -> str:
    return f"{registry.url}/v2/{name}/dhi.io"


async def test_the_first_mirror_that_answers_wins_in_file_order(
    session: aiohttp.ClientSession,
    registry: LocalRegistry,
    stand_ins: dict[str, str],
    upstream: TcpProxy,
) -> None:
    a_first = oci.RegistryClient(
        session, mirrors=hosts(upstream, prefix(registry, "a"), prefix(registry, "b"))
    )
    b_first = oci.RegistryClient(
        session, mirrors=hosts(upstream, prefix(registry, "b"), prefix(registry, "a"))
    )
    assert (await a_first.resolve(PYTHON)).digest == stand_ins["a"]
    assert (await b_first.resolve(PYTHON)).digest == stand_ins["b"]
    assert upstream.connections == 0  # a mirror answered: the upstream was never asked


async def test_refused_connections_and_404s_fall_through_to_the_next_endpoint(
    session: aiohttp.ClientSession,
    registry: LocalRegistry,
    stand_ins: dict[str, str],
    down: TcpProxy,
    upstream: TcpProxy,
) -> None:
    configured = hosts(
        upstream,
        f"http://{down.address}/v2/a/dhi.io",
        prefix(registry, "empty"),
        prefix(registry, "b"),
    )
    errors: list[tuple[str, str]] = []
    client = oci.RegistryClient(
        session, mirrors=configured, retries=2, on_error=lambda *error: errors.append(error)
    )
    assert (await client.resolve(PYTHON)).digest == stand_ins["b"]
    assert upstream.connections == 0
    # The mirror that is down is counted (under its own host); a 404 is not a failure.
    assert errors == [(down.address, "RegistryUnavailable")]


async def test_a_mirror_that_refuses_imagegate_falls_through_and_gets_no_upstream_token(
    session: aiohttp.ClientSession,
    registry: LocalRegistry,
    private_registry: LocalRegistry,
    stand_ins: dict[str, str],
    upstream: TcpProxy,
) -> None:
    """401 from a mirror is no answer (containerd goes on too); the keychain is asked for the
    mirror's own host, never dhi.io's credentials."""
    asked: list[str] = []

    class Recording:
        def credentials(self, registry: str, repository: str) -> None:
            asked.append(registry)

    configured = hosts(upstream, prefix(private_registry, "a"), prefix(registry, "a"))
    client = oci.RegistryClient(session, mirrors=configured, keychain=Recording())
    assert (await client.resolve(PYTHON)).digest == stand_ins["a"]
    assert private_registry.address in asked
    assert "dhi.io" not in asked


async def test_when_every_endpoint_fails_a_404_anywhere_means_not_found(
    session: aiohttp.ClientSession, registry: LocalRegistry, down: TcpProxy
) -> None:
    """An air-gapped mirror without the `.sig` tag, and the upstream unreachable: unsigned, not
    unavailable. With no 404 at all, the first failure's kind (here: unavailable)."""
    offline = mirrors.parse_hosts_toml(
        "dhi.io",
        f'server = "http://{down.address}"\n[host."{prefix(registry, "empty")}"]\n'
        "  override_path = true\n",
    )
    client = oci.RegistryClient(session, mirrors=offline, retries=0)
    with pytest.raises(oci.ManifestUnknown, match=r"dhi.io: no endpoint answered \(http://127"):
        await client.resolve(PYTHON)
    nothing_up = mirrors.parse_hosts_toml("dhi.io", f'server = "http://{down.address}"\n')
    with pytest.raises(oci.RegistryUnavailable):
        await oci.RegistryClient(session, mirrors=nothing_up, retries=0).resolve(PYTHON)


async def test_a_pull_only_mirror_serves_digests_but_never_resolves_tags(
    session: aiohttp.ClientSession,
    registry: LocalRegistry,
    stand_ins: dict[str, str],
    upstream: TcpProxy,
    crane: Path,
    tmp_path: Path,
) -> None:
    # The upstream (through the counting proxy) holds its own dhi.io-named image at `python`.
    pushed = push_random_image(crane, registry.address, "python", "3.12", tmp_path)
    pull_only = hosts(upstream, prefix(registry, "a"), capabilities='  capabilities = ["pull"]\n')
    client = oci.RegistryClient(session, mirrors=pull_only)
    assert (await client.resolve(PYTHON)).digest == pushed  # the tag: from the upstream
    connections = upstream.connections
    body, _ = await client.manifest("dhi.io", "python", stand_ins["a"])  # a digest: the mirror
    assert oci.sha256_digest(body) == stand_ins["a"]
    assert upstream.connections == connections


@pytest.mark.cosign
async def test_signatures_are_read_through_the_mirror_under_the_upstream_name(
    session: aiohttp.ClientSession,
    registry: LocalRegistry,
    stand_ins: dict[str, str],
    upstream: TcpProxy,
    cosign: Path,
    tmp_path: Path,
) -> None:
    """cosign signs the stand-in (legacy `.sig` tag beside it in the mirror); the client asks for
    `dhi.io/python:sha256-<hex>.sig` and the mirror answers."""
    digest = stand_ins["a"]
    cosign_key_pair(cosign, tmp_path)
    cosign_sign(
        cosign,
        tmp_path / "cosign.key",
        f"{registry.address}/a/dhi.io/python@{digest}",
        bundle=False,
        extra=("--sign-container-identity", "dhi.io/python"),
    )
    client = oci.RegistryClient(session, mirrors=hosts(upstream, prefix(registry, "a")))
    body, _ = await client.manifest("dhi.io", "python", digest.replace(":", "-") + ".sig")
    assert b"dev.cosignproject.cosign/signature" in body
    assert upstream.connections == 0


# -- an HTTPS mirror with a private CA and a bearer token service on itself --------------------

MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'


@pytest.fixture
async def tls_mirror(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An HTTPS mirror (certificate from a private CA) that wants a bearer token from its own
    /token; gives (its host:port, the CA file)."""
    authority = tls.CertificateAuthority.create("mirror-ca")
    pair = authority.issue("mirror", ip_addresses=["127.0.0.1"])
    (tmp_path / "mirror.crt").write_bytes(pair.cert_pem)
    (tmp_path / "mirror.key").write_bytes(pair.key_pem)
    (tmp_path / "ca.crt").write_bytes(authority.cert_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "mirror.crt", tmp_path / "mirror.key")
    address = ""

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/token":
            return web.json_response({"token": "m1rr0r", "expires_in": 300})
        if request.headers.get("Authorization") != "Bearer m1rr0r":
            challenge = f'Bearer realm="https://{address}/token",service="mirror"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        if request.path != "/v2/hub/python/manifests/3.12":
            return web.Response(status=404)
        headers = {
            "Docker-Content-Digest": oci.sha256_digest(MANIFEST),
            "Content-Type": oci.OCI_MANIFEST,
        }
        return web.Response(body=MANIFEST, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    address = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield address, tmp_path / "ca.crt"
    await runner.cleanup()


def tls_hosts(directory: Path, mirror: str, down: TcpProxy, trust: str) -> mirrors.Mirrors:
    (directory / "dhi.io").mkdir(parents=True)
    (directory / "dhi.io" / "hosts.toml").write_text(
        f'server = "http://{down.address}"\n'
        f'[host."https://{mirror}/v2/hub"]\n  override_path = true\n{trust}'
    )
    return mirrors.read_directory(directory)


@pytest.mark.parametrize("trust", ['  ca = "../../ca.crt"\n', "  skip_verify = true\n"])
async def test_an_https_mirror_is_trusted_by_its_ca_or_skip_verify_for_its_tokens_too(
    session: aiohttp.ClientSession,
    tls_mirror: tuple[str, Path],
    down: TcpProxy,
    tmp_path: Path,
    trust: str,
) -> None:
    """`ca` is relative to the host's directory (as containerd reads it); the token service on
    the mirror is reached with the mirror's TLS settings, not the system's."""
    mirror, _ = tls_mirror
    configured = tls_hosts(tmp_path / "certs.d", mirror, down, trust)
    client = oci.RegistryClient(session, mirrors=configured, retries=0)
    assert (await client.resolve(PYTHON)).digest == oci.sha256_digest(MANIFEST)


async def test_an_https_mirror_without_its_ca_is_not_trusted(
    session: aiohttp.ClientSession, tls_mirror: tuple[str, Path], down: TcpProxy, tmp_path: Path
) -> None:
    mirror, _ = tls_mirror
    configured = tls_hosts(tmp_path / "certs.d", mirror, down, "")
    client = oci.RegistryClient(session, mirrors=configured, retries=0)
    with pytest.raises(
        oci.RegistryUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"
    ):
        await client.resolve(PYTHON)
