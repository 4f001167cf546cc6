"""Image references, normalised as Docker/containerd do (cases from distribution/reference)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegate.core import reference
from imagegate.core.reference import ImageReference, InvalidReferenceError, parse

SHA = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "expected", "familiar"),
    [
        ("nginx", "docker.io/library/nginx:latest", "nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx:1.25", "nginx:1.25"),
        ("library/nginx", "docker.io/library/nginx:latest", "nginx:latest"),
        ("docker.io/nginx", "docker.io/library/nginx:latest", "nginx:latest"),
        ("index.docker.io/library/nginx", "docker.io/library/nginx:latest", "nginx:latest"),
        ("bitnami/redis:7.2", "docker.io/bitnami/redis:7.2", "bitnami/redis:7.2"),
        ("cgr.dev/chainguard/python:latest-dev", "cgr.dev/chainguard/python:latest-dev", None),
        ("ghcr.io/org/team/app:v1.2.3", "ghcr.io/org/team/app:v1.2.3", None),
        (f"gcr.io/distroless/static@{SHA}", f"gcr.io/distroless/static@{SHA}", None),
        (f"python:3.12@{SHA}", f"docker.io/library/python:3.12@{SHA}", f"python:3.12@{SHA}"),
        ("localhost/app", "localhost/app:latest", None),
        ("localhost:5000/team/app:v1", "localhost:5000/team/app:v1", None),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest", None),
        ("[::1]:5000/app:v1", "[::1]:5000/app:v1", None),
        ("registry.example.com:443/a/b", "registry.example.com:443/a/b:latest", None),
        # An uppercase first component is a registry host, as in Docker.
        ("Registry/app", "Registry/app:latest", None),
        ("a.b/c__d/e-f--g.h_i", "a.b/c__d/e-f--g.h_i:latest", None),
        # Found by hypothesis: shortened, this would read back as registry "0.0".
        ("docker.io/0.0/app", "docker.io/0.0/app:latest", "docker.io/0.0/app:latest"),
        ("x:" + "t" * 128, "docker.io/library/x:" + "t" * 128, "x:" + "t" * 128),
    ],
)
def test_real_world_references_normalise(text: str, expected: str, familiar: str | None) -> None:
    parsed = parse(text)
    assert str(parsed) == expected
    assert parsed.familiar == (familiar or expected)
    assert parse(expected) == parsed


def test_fields_of_a_full_reference() -> None:
    parsed = parse(f"localhost:5000/team/app:v1@{SHA}")
    assert parsed == ImageReference("localhost:5000", "team/app", "v1", SHA)
    assert parsed.name == "localhost:5000/team/app"
    assert parsed.pinned


def test_with_digest_keeps_the_tag_and_checks_the_digest() -> None:
    assert str(parse("nginx:1.25").with_digest(SHA)) == f"docker.io/library/nginx:1.25@{SHA}"
    with pytest.raises(InvalidReferenceError):
        parse("nginx").with_digest("sha256:nope")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (" nginx", "whitespace"),
        ("nginx :1", "whitespace"),
        ("ngïnx", "non-ASCII"),
        ("x" * 700, "longer than"),
        ("UPPER", "must be lowercase"),
        ("docker.io/Library/nginx", "must be lowercase"),
        ("a//b", "empty path component"),
        ("a/", "empty path component"),
        ("/a", "empty path component"),
        ("a/../b", "invalid path component"),
        ("a___b", "invalid path component"),
        ("-a", "invalid path component"),
        ("a.", "invalid path component"),
        ("nginx:", "invalid tag"),
        ("nginx:-x", "invalid tag"),
        ("nginx:" + "t" * 129, "invalid tag"),
        ("nginx@sha256:abc", "invalid digest"),
        ("nginx@", "invalid digest"),
        ("nginx@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("nginx@sha256:" + "A" * 64, "lowercase hex"),
        ("nginx@sha256:" + "a" * 63 + "0a", "expected 64"),
        ("0123456789abcdef" * 4 + ":1", "64-character hexadecimal"),
        ("-bad.host/app", "invalid registry"),
        ("host:port/app", "invalid registry"),
        ("a.io/" + "b" * 260, "longer than 255"),
    ],
)
def test_invalid_references_are_rejected_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse(text)
    assert reason in caught.value.user_message


# -- properties -----------------------------------------------------------------------------

_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--"])
_component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest),
    _alnum,
    st.lists(st.tuples(_separator, _alnum), max_size=2),
)
_path = st.lists(_component, min_size=1, max_size=3).map("/".join)
_registry = st.sampled_from(["", "docker.io/", "cgr.dev/", "localhost:5000/", "ghcr.io/", "a.b:1/"])
_tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
_digest = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h)
# Without a registry, a first component with a "." would be read as one (Docker's rule), so
# such paths only come after an explicit registry.
_valid = st.builds(
    lambda registry, path, tag, digest: (
        registry + path + (":" + tag if tag else "") + ("@" + digest if digest else "")
    ),
    _registry,
    _path,
    st.none() | _tag,
    st.none() | _digest,
).filter(
    lambda text: (
        not text.partition("/")[2]
        or "." not in text.partition("/")[0]
        or (text.startswith(("docker.io/", "cgr.dev/", "localhost:5000/", "ghcr.io/", "a.b:1/")))
    )
)


@settings(max_examples=200)
@given(_valid)
def test_valid_references_parse_and_normalisation_is_idempotent(text: str) -> None:
    parsed = parse(text)
    assert parse(str(parsed)) == parsed
    assert parse(parsed.familiar) == parsed
    assert parsed.tag is not None or parsed.digest is not None


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        parsed = parse(text)
    except InvalidReferenceError as error:
        message = error.user_message
    else:
        message = ""
        assert parse(str(parsed)) == parsed
    assert message or parsed


@settings(max_examples=100)
@given(_path, st.integers(min_value=0), st.sampled_from([" ", "\t", "\n", "A"]))
def test_whitespace_or_uppercase_in_a_repository_is_refused(
    path: str, position: int, bad: str
) -> None:
    at = position % (len(path) + 1)
    with pytest.raises(InvalidReferenceError):
        parse("cgr.dev/" + path[:at] + bad + path[at:])


@pytest.mark.parametrize(
    "text",
    [
        SHA,
        "sha384:" + "ab" * 48,
        "sha512:" + "ab" * 64,
        "sha256:0123456789ab",  # a prefix is enough for a runtime's ID lookup
        "sha256:ABCDEF",
        "0123456789abcdef" * 4,
        "0123456789ab",  # Docker's short ID
        "0123456789AB",
    ],
)
def test_image_ids_are_refused_with_a_reason(text: str) -> None:
    """Docker's grammar reads `sha256:<hex>` as `docker.io/library/sha256:<hex>`; a runtime
    reads it as the ID of an image already on the node."""
    with pytest.raises(InvalidReferenceError) as caught:
        parse(text)
    assert caught.value.user_message == (
        f"image {text!r} is an image ID, not a reference: name the image by repository "
        "(and digest) instead"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Names a runtime pulls, not IDs: a registry, a path, a tag or a digest makes them so.
        ("docker.io/library/sha256:" + "a" * 64, "docker.io/library/sha256:" + "a" * 64),
        (f"sha256:0123456789ab@{SHA}", f"docker.io/library/sha256:0123456789ab@{SHA}"),
        ("0123456789ab:1", "docker.io/library/0123456789ab:1"),
        ("ghcr.io/0123456789ab", "ghcr.io/0123456789ab:latest"),
        ("0123456789a", "docker.io/library/0123456789a:latest"),  # shorter than a short ID
        ("sha256", "docker.io/library/sha256:latest"),
    ],
)
def test_names_that_only_look_like_ids_parse(text: str, expected: str) -> None:
    parsed = parse(text)
    assert str(parsed) == expected
    assert parse(parsed.familiar) == parsed  # never shortened to an ID


def test_constants_match_docker() -> None:
    assert reference.DOCKER_HUB == "docker.io"
    assert reference.NAME_MAX_LENGTH == 255


def test_parse_is_memoised_and_errors_are_raised_every_time() -> None:
    assert reference.parse("nginx:1.25") is reference.parse("nginx:1.25")
    for _ in range(2):
        with pytest.raises(reference.InvalidReferenceError):
            reference.parse("NGINX")
    assert reference.parse.cache_info().maxsize == reference.PARSED_CACHE_SIZE


def test_a_reference_hashes_and_compares_by_its_fields() -> None:
    made = reference.ImageReference("docker.io", "library/nginx", "1.25", None)
    assert made == reference.parse("nginx:1.25")
    assert hash(made) == hash(reference.parse("nginx:1.25"))
    assert {made: 1}[reference.parse("docker.io/library/nginx:1.25")] == 1
