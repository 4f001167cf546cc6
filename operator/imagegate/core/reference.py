"""Container image references, parsed and normalised exactly as Docker and containerd do.

The grammar is distribution/reference's (regexp.go, normalize.go):

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain "/"] path-component ["/" path-component]*
    domain     := host [":" port]            host: DNS name, IPv4, or "[" IPv6 "]"
    path-component := [a-z0-9]+ (separator [a-z0-9]+)*    separator: "." | "_" | "__" | "-"+
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex          (sha256: 64, sha384: 96, sha512: 128 lowercase hex)

Normalisation (ParseNormalizedNamed): the first path component is a registry only when it
contains "." or ":", is "localhost", or has an uppercase letter; otherwise the registry is
docker.io. `index.docker.io` is docker.io, and a single-component Docker Hub name gets `library/`.
With neither tag nor digest the tag is `latest`. Everything else is rejected with the reason,
and so are image IDs (`sha256:<hex>`, long bare hex), which Docker's grammar would read as
Docker Official Image names but runtimes resolve to images already on the node.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from imagegate.errors import ImagegateError

DOCKER_HUB = "docker.io"
LEGACY_DOCKER_HUB = "index.docker.io"
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
#: distribution's NameTotalLengthMax (registry and path, without tag or digest).
NAME_MAX_LENGTH = 255
#: Nothing valid is this long (name 255 + tag 128 + sha512 digest 135 + separators); checking
#: first keeps absurd inputs from costing more than a length test.
INPUT_MAX_LENGTH = 600

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?", re.ASCII
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_SYNTAX = re.compile(
    r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}", re.ASCII
)
_HEX64 = re.compile(r"[a-f0-9]{64}", re.ASCII)
#: Texts a container runtime takes for the ID of an image already on the node, not a name to
#: pull. Docker's grammar reads `sha256:<hex>` as `docker.io/library/sha256:<hex>`, so a policy
#: trusting `docker.io/library/*` would admit whatever image the node holds under that ID.
#: Runtimes look an unresolvable reference up as an image ID (containerd's CRI falls back to its
#: image store, CRI-O and Docker also match ID prefixes), so both shapes are refused:
#: `<algorithm>:<hex>` (any length: a prefix is enough for a lookup) and bare hex of 12 or more
#: characters (12 is Docker's short ID; the 64-character form is also refused by distribution's
#: grammar). Only the bare text is an ID: with a registry, path or tag (`docker.io/library/sha256
#: :<hex>`, `sha256:<hex>@sha256:...`, `abc123def456:1`) it is a name the runtime pulls.
_IMAGE_ID = re.compile(r"(?:sha256|sha384|sha512|blake3):[0-9a-fA-F]+|[0-9a-fA-F]{12,}", re.ASCII)


class InvalidReferenceError(ImagegateError):
    """Not a valid image reference; the message says why."""


@dataclass(frozen=True, order=True)
class ImageReference:
    """A normalised reference: always a registry, a full repository path and a tag or digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __hash__(self) -> int:
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        # References key the engine's memos: hash the fields once, not at every lookup.
        return hash((self.registry, self.repository, self.tag, self.digest))

    @functools.cached_property
    def name(self) -> str:
        """`registry/repository`: what policy globs match (computed once: it is matched often)."""
        return f"{self.registry}/{self.repository}"

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    @property
    def familiar(self) -> str:
        """Docker's short form: `nginx:1.25`, `user/app@sha256:...`, `ghcr.io/o/app:v1`."""
        name = self.name
        if self.registry == DOCKER_HUB:
            short = self.repository.removeprefix(OFFICIAL_NAMESPACE + "/")
            # Unlike Docker's FamiliarName, never shorten `docker.io/a.b/c` to `a.b/c`, which
            # reads back as registry `a.b`: the short form must name the same image.
            if _split_registry(short)[0] == DOCKER_HUB:
                name = short
        familiar = name + self._suffix()
        if _IMAGE_ID.fullmatch(familiar):
            # `docker.io/library/sha256:<hex>` shortened is an image ID: keep the name.
            return str(self)
        return familiar

    def with_digest(self, digest: str) -> ImageReference:
        """The same image pinned to `digest`, keeping the tag for readers (`repo:tag@digest`)."""
        _check_digest(digest, digest)
        return ImageReference(self.registry, self.repository, self.tag, digest)

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


#: Distinct references remembered by `parse`. A cluster names a few hundred images; each
#: admission parses every one several times (mutation, validation, the scan), and the result is
#: immutable, so it is kept. Bounded, so hostile names cost at most this many entries.
PARSED_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=PARSED_CACHE_SIZE)
def parse(text: str) -> ImageReference:
    """Parse and normalise `text`, or raise `InvalidReferenceError` saying what is wrong.

    Results are memoised (errors are not: a bad reference costs its parse each time)."""
    return _parse(text)


def _parse(text: str) -> ImageReference:
    if not text:
        raise InvalidReferenceError("image reference is empty")
    if len(text) > INPUT_MAX_LENGTH:
        raise InvalidReferenceError(f"image reference is longer than {INPUT_MAX_LENGTH} characters")
    if not text.isascii():
        raise InvalidReferenceError(f"image reference {text!r} has non-ASCII characters")
    if any(char.isspace() for char in text):
        raise InvalidReferenceError(f"image reference {text!r} contains whitespace")
    if _IMAGE_ID.fullmatch(text):
        raise InvalidReferenceError(
            f"image {text!r} is an image ID, not a reference: name the image by repository "
            "(and digest) instead"
        )

    remainder, _, digest = text.partition("@")
    if digest or text.endswith("@"):
        _check_digest(digest, text)
    # A ":" after the last "/" starts the tag; one before it belongs to a registry port.
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    tag: str | None = None
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReferenceError(
                f"invalid tag {tag!r} in {text!r}: a tag is up to 128 letters, digits, "
                "'_', '.' and '-', not starting with '.' or '-'"
            )

    if _HEX64.fullmatch(remainder):
        raise InvalidReferenceError(
            f"invalid repository name {remainder!r}: a 64-character hexadecimal string "
            "looks like an image ID, not a name"
        )
    registry, path = _split_registry(remainder)
    if not _DOMAIN.fullmatch(registry):
        raise InvalidReferenceError(f"invalid registry {registry!r} in {text!r}")
    if path.lower() != path:
        raise InvalidReferenceError(f"repository name {path!r} must be lowercase (in {text!r})")
    for component in path.split("/"):
        if not component:
            raise InvalidReferenceError(f"repository {path!r} has an empty path component")
        if not _PATH_COMPONENT.fullmatch(component):
            raise InvalidReferenceError(
                f"invalid path component {component!r} in {text!r}: use lowercase letters and "
                "digits, separated by '.', '_', '__' or dashes"
            )
    if registry == DOCKER_HUB and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    if len(registry) + 1 + len(path) > NAME_MAX_LENGTH:
        raise InvalidReferenceError(
            f"repository name {registry}/{path} is longer than {NAME_MAX_LENGTH} characters"
        )
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return ImageReference(registry, path, tag, digest or None)


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    is_registry = slash and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if not is_registry:
        return DOCKER_HUB, name
    return (DOCKER_HUB if first == LEGACY_DOCKER_HUB else first), rest


def _check_digest(digest: str, text: str) -> None:
    if not _DIGEST_SYNTAX.fullmatch(digest):
        raise InvalidReferenceError(
            f"invalid digest {digest!r} in {text!r}: expected algorithm:hex, e.g. sha256:<64 hex>"
        )
    algorithm, hex_part = digest.split(":", 1)
    expected = _DIGEST_HEX_LENGTH.get(algorithm)
    if expected is None:
        raise InvalidReferenceError(
            f"unsupported digest algorithm {algorithm!r} in {text!r} (sha256, sha384, sha512)"
        )
    if len(hex_part) != expected or hex_part.lower() != hex_part:
        raise InvalidReferenceError(
            f"invalid {algorithm} digest in {text!r}: expected {expected} lowercase hex characters"
        )
