"""Registry mirrors as containerd configures them: `<config dir>/<host>/hosts.toml` (design.md §8).

The same directory an admin gives containerd (`config_path`, e.g. /etc/containerd/certs.d) is
read here, so imagegate reads digests, signatures and attestations through the mirrors the nodes
pull from. Per upstream host, the endpoints are the `[host."<url>"]` tables in file order, then
the upstream (`server`, or `https://<host>`). `_default/hosts.toml` applies to hosts without a
directory of their own. Which endpoint answers never changes the image's identity: policies
match, and signatures are bound to, the upstream name.

Pure except `read_directory`, which reads the files once at start-up.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import pydantic

from imagegate.core.reference import DOCKER_HUB
from imagegate.errors import ImagegateError

Capability = Literal["pull", "resolve", "push"]
#: containerd's default for a host that names no capabilities.
ALL_CAPABILITIES: frozenset[Capability] = frozenset({"pull", "resolve", "push"})
#: The directory containerd reads for hosts without a directory of their own.
DEFAULT_HOST = "_default"
HOSTS_FILE = "hosts.toml"
#: Docker Hub's API lives on another host than its name (containerd's default `server`).
DOCKER_HUB_SERVER = "https://registry-1.docker.io"


class MirrorConfigError(ImagegateError):
    """A hosts.toml that imagegate cannot use; the message names the file and the field."""


class _HostFields(pydantic.BaseModel):
    """The fields containerd allows on a `[host."<url>"]` table (and, for `server`, at the top).

    `client` (TLS client certificates) and `dial_timeout` are containerd fields imagegate does
    not implement: rejected by name (extra="forbid"), not silently ignored.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    capabilities: tuple[Capability, ...] | None = None
    skip_verify: bool = False
    ca: str | tuple[str, ...] | None = None
    override_path: bool = False
    header: dict[str, str | tuple[str, ...]] = {}


class _HostsFile(_HostFields):
    server: str | None = None
    host: dict[str, _HostFields] = {}


@dataclass(frozen=True)
class Endpoint:
    """One place to ask: `api_root` is the URL that `/<repository>/manifests/...` follows."""

    api_root: str
    #: Whose credentials and tokens apply: the upstream's name, or a mirror's host[:port].
    host: str
    capabilities: frozenset[Capability] = ALL_CAPABILITIES
    #: A mirror (a `[host]` table), not the upstream itself.
    mirror: bool = False
    skip_verify: bool = False
    ca_files: tuple[Path, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def url(self, repository: str, path: str) -> str:
        return f"{self.api_root}/{repository}/{path}"

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities


@dataclass(frozen=True)
class Mirrors:
    """Parsed hosts.toml files by upstream host (DEFAULT_HOST for `_default`)."""

    hosts: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    #: Hosts whose hosts.toml names its own `server` (then `--insecure-registry` does not apply).
    servers: frozenset[str] = frozenset()

    def endpoints_for(self, host: str, *, insecure: bool = False) -> list[Endpoint]:
        """Where to ask for `host`'s content, in order: its mirrors, then the upstream."""
        configured = self.hosts.get(host)
        if configured is None:
            # `_default` lends its mirrors only: its `server` is no other host's upstream.
            defaults = self.hosts.get(DEFAULT_HOST, ())
            return [*(e for e in defaults if e.mirror), upstream(host, insecure=insecure)]
        if host in self.servers:
            return list(configured)
        return [*configured, upstream(host, insecure=insecure)]


NO_MIRRORS = Mirrors()


def upstream(host: str, *, insecure: bool = False) -> Endpoint:
    """The registry itself, as containerd reaches it without a `server` line."""
    if host == DOCKER_HUB:
        return Endpoint(DOCKER_HUB_SERVER + "/v2", host)
    scheme = "http" if insecure else "https"
    return Endpoint(f"{scheme}://{host}/v2", host)


def parse_hosts_toml(host: str, text: str, base: Path = Path(".")) -> Mirrors:
    """One host's hosts.toml; `base` is its directory (relative `ca` paths start there)."""
    where = f"{host}/{HOSTS_FILE}"
    try:
        document = _HostsFile.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as error:
        raise MirrorConfigError(f"{where}: not TOML: {error}") from error
    except pydantic.ValidationError as error:
        raise MirrorConfigError(f"{where}: {_first_problem(error)}") from error
    endpoints = [
        _endpoint(url, fields, base, where, mirror=True) for url, fields in document.host.items()
    ]
    if document.server is not None:
        endpoints.append(_endpoint(document.server, document, base, where, mirror=False, host=host))
    return Mirrors({host: tuple(endpoints)}, frozenset({host} if document.server else ()))


def merge(*parts: Mirrors) -> Mirrors:
    hosts: dict[str, tuple[Endpoint, ...]] = {}
    servers: set[str] = set()
    for part in parts:
        hosts.update(part.hosts)
        servers |= part.servers
    return Mirrors(hosts, frozenset(servers))


def read_directory(directory: Path) -> Mirrors:
    """Every `<host>/hosts.toml` under `directory` (containerd's config_path layout)."""
    if not directory.is_dir():
        raise MirrorConfigError(f"{directory}: not a directory of <host>/{HOSTS_FILE} files")
    parts = []
    for hosts_file in sorted(directory.glob(f"*/{HOSTS_FILE}")):
        try:
            text = hosts_file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise MirrorConfigError(f"{hosts_file}: cannot read it: {error}") from error
        parts.append(parse_hosts_toml(hosts_file.parent.name, text, hosts_file.parent))
    return merge(*parts)


def _endpoint(
    url: str, fields: _HostFields, base: Path, where: str, *, mirror: bool, host: str = ""
) -> Endpoint:
    """containerd's rules: no scheme means https; `/v2` is appended unless the path ends in it
    or `override_path` says the path is the API root already (a prefix on a shared mirror)."""
    if not url.startswith(("http://", "https://")):
        url = "https://" + url
    parts = urlsplit(url)
    if not parts.netloc or parts.query or parts.fragment:
        raise MirrorConfigError(f"{where}: {url!r} is not a registry URL")
    path = parts.path.rstrip("/")
    if not fields.override_path and not path.endswith("/v2"):
        path += "/v2"
    cas = (fields.ca,) if isinstance(fields.ca, str) else fields.ca or ()
    return Endpoint(
        api_root=f"{parts.scheme}://{parts.netloc}{path}",
        host=parts.netloc if mirror else host,
        capabilities=frozenset(fields.capabilities or ALL_CAPABILITIES),
        mirror=mirror,
        skip_verify=fields.skip_verify,
        ca_files=tuple(base / ca for ca in cas),
        headers=tuple(
            (name, value)
            for name, values in fields.header.items()
            for value in ((values,) if isinstance(values, str) else values)
        ),
    )


def _first_problem(error: pydantic.ValidationError) -> str:
    problem = error.errors()[0]
    location = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "extra_forbidden":
        return f"{location}: not supported by imagegate"
    return f"{location}: {problem['msg']}"
