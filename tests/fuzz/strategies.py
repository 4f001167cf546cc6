"""Hypothesis strategies for what reaches imagegate from outside: AdmissionReview bodies, image
references, policies and signature layers. Plain module (no pytest), so `bench/fuzz.py` uses it
for the long run as well as `tests/fuzz/test_fuzz.py` for the slice in the default suite.

Reviews are seeded with real ones (the shared fixtures, when present), built from scratch with
`admission.builder.review_for`, then mutated field by field and, last, byte by byte.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from imagegate.admission import builder
from imagegate.core import workloads

SHARED_FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
REVIEWS = SHARED_FIXTURES / "admission-requests"
SIGNATURES = SHARED_FIXTURES / "signatures"

#: The one prefix the fuzzing policy trusts (`cgr.dev/chainguard/**`).
TRUSTED_PREFIX = "cgr.dev/chainguard/"
POLICY: dict[str, Any] = {
    "apiVersion": "imagegate.dev/v1alpha1",
    "kind": "ClusterImagePolicy",
    "metadata": {"name": "chainguard-only"},
    "spec": {
        "mode": "enforce",
        "pinDigests": False,
        "sources": [{"name": "chainguard", "images": ["cgr.dev/chainguard/**"]}],
    },
}

# --- image references -----------------------------------------------------------------------

HEX = "0123456789abcdef"
_component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,6}){0,2}", fullmatch=True)
_registries = st.sampled_from(
    [
        "",
        "cgr.dev/",
        "docker.io/",
        "index.docker.io/",
        "ghcr.io/",
        "localhost/",
        "localhost:5000/",
        "registry.test:443/",
        "10.0.0.1:5000/",
        "[::1]:5000/",
        "Registry.Example/",
        "cgr.dev:443/",
        "cgr.dev./",
    ]
)
_tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_sha256 = st.text(HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h)


@st.composite
def valid_references(draw: st.DrawFn) -> str:
    """Texts of Docker's grammar (some with a registry that is only a name, like `localhost`)."""
    name = draw(_registries) + "/".join(draw(st.lists(_component, min_size=1, max_size=3)))
    if draw(st.booleans()):
        name += ":" + draw(_tags)
    if draw(st.booleans()):
        name += "@" + draw(_sha256)
    return name


@st.composite
def trusted_references(draw: st.DrawFn) -> str:
    path = "/".join(draw(st.lists(_component, min_size=1, max_size=2)))
    suffix = draw(st.sampled_from(["", ":latest", ":latest-dev", "@sha256:" + "a" * 64]))
    return TRUSTED_PREFIX + path + suffix


def _near_misses(trusted: str) -> list[str]:
    """Texts one step from a trusted reference that must never be trusted."""
    rest = trusted.removeprefix(TRUSTED_PREFIX)
    return [
        "cgr.dev/chainguard",
        "cgr.dev/chainguard:latest",
        f"CGR.DEV/chainguard/{rest}",
        f"cgr.dev:443/chainguard/{rest}",
        f"cgr.dev./chainguard/{rest}",
        f"cgr.dev/chainguard/../{rest}",
        f"cgr.dev/chainguard//{rest}",
        f"cgr.dev/chainguardx/{rest}",
        f"docker.io/cgr.dev/chainguard/{rest}",
        f"evil.io/cgr.dev/chainguard/{rest}",
        f"cgr.dev/chainguard/{rest}\u200b",
        f" cgr.dev/chainguard/{rest}",
        f"cgr.dev/chainguard/{rest}\n",
        f"cgr.dev/ChainGuard/{rest}",
        f"cgr.dev\\chainguard\\{rest}",
        f"cgr.dev%2Fchainguard/{rest}",
    ]


@st.composite
def hostile_references(draw: st.DrawFn) -> str:
    hex_text = st.text(HEX + "ABCDEF", min_size=1, max_size=140)
    text: str = draw(
        st.one_of(
            hex_text.map(lambda h: "sha256:" + h),  # image IDs, any length
            hex_text.map(lambda h: "sha512:" + h),
            st.text(HEX, min_size=12, max_size=80),  # bare hex: short and long IDs
            valid_references().map(str.upper),
            valid_references().map(lambda r: r + "@sha256:" + "a" * 63),  # wrong length
            valid_references().map(lambda r: r + "@sha256:" + "A" * 64),
            valid_references().map(lambda r: r + "@md5:" + "a" * 32),
            st.integers(590, 5000).map(lambda n: "cgr.dev/chainguard/" + "a" * n),
            trusted_references().flatmap(lambda t: st.sampled_from(_near_misses(t))),
            trusted_references().flatmap(_edit),
            st.text(max_size=40),  # anything, unicode and whitespace included
            st.sampled_from(["", ":", "@", "/", "a/", "/a", ":tag", "@sha256:", "a@", "a:"]),
        )
    )
    return text


def _edit(text: str) -> st.SearchStrategy[str]:
    """`text` with one character inserted, replaced or deleted."""

    @st.composite
    def edited(draw: st.DrawFn) -> str:
        at = draw(st.integers(0, len(text)))
        char = draw(st.characters(codec="utf-8") | st.sampled_from(list(":/@.-_A ")))
        how = draw(st.sampled_from(["insert", "replace", "delete"]))
        if how == "insert":
            return text[:at] + char + text[at:]
        if how == "replace":
            return text[:at] + char + text[at + 1 :]
        return text[:at] + text[at + 1 :]

    return edited()


def references() -> st.SearchStrategy[str]:
    return st.one_of(valid_references(), trusted_references(), hostile_references())


def image_pool() -> st.SearchStrategy[str]:
    """Half trusted, half one step from trusted or anything else (the long run's images)."""
    near_misses = trusted_references().flatmap(lambda t: st.sampled_from(_near_misses(t)))
    return st.one_of(trusted_references(), near_misses, trusted_references().flatmap(_edit))


# --- JSON values ----------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=10**300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        _scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def _nested(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


#: Values a field is replaced with: other types, huge, deep, unicode.
replacements = st.one_of(
    json_values(),
    st.text(min_size=1, max_size=20).map(lambda s: s * 5000),  # ~100 KB strings
    st.text(st.characters(min_codepoint=0x80), min_size=1, max_size=50),
    st.builds(_nested, st.none(), st.integers(50, 150), st.booleans()),
    references(),
    st.lists(references(), max_size=3),
)

# --- workloads and reviews ------------------------------------------------------------------

KINDS = sorted(workloads.POD_SPEC_POINTERS)
API_VERSIONS = {"": "v1", "apps": "apps/v1", "batch": "batch/v1"}


@st.composite
def containers(draw: st.DrawFn, images: st.SearchStrategy[str]) -> list[dict[str, Any]]:
    count = draw(st.integers(0, 3))
    names = draw(st.lists(st.sampled_from(["app", "web", "side", ""]), min_size=count))
    return [{"name": names[i], "image": draw(images)} for i in range(count)]


@st.composite
def pod_specs(draw: st.DrawFn, images: st.SearchStrategy[str] | None = None) -> dict[str, Any]:
    images = references() if images is None else images
    spec: dict[str, Any] = {"containers": draw(containers(images))}
    for extra in ("initContainers", "ephemeralContainers"):
        if draw(st.booleans()):
            spec[extra] = draw(containers(images))
    if draw(st.booleans()):
        spec["volumes"] = [
            {"name": f"v{i}", "image": {"reference": draw(images)}}
            if draw(st.booleans())
            else {"name": f"v{i}", "emptyDir": {}}
            for i in range(draw(st.integers(0, 3)))
        ]
    return spec


def workload(group_kind: tuple[str, str], spec: dict[str, Any], name: str = "w") -> dict[str, Any]:
    """An object of `group_kind` whose pod spec is `spec`, at the pointer imagegate reads."""
    group, kind = group_kind
    obj: dict[str, Any] = {"apiVersion": API_VERSIONS[group], "kind": kind, "metadata": {}}
    obj["metadata"]["name"] = name
    node = obj
    parts = workloads.POD_SPEC_POINTERS[group_kind].strip("/").split("/")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = spec
    return obj


@st.composite
def built_reviews(draw: st.DrawFn, images: st.SearchStrategy[str] | None = None) -> dict[str, Any]:
    """A review as the API server sends it, from `builder.review_for`: every kind, operation,
    subresource, dryRun and API version; UPDATE with an oldObject sharing some images."""
    group_kind = draw(st.sampled_from(KINDS))
    if images is None:
        pool = draw(st.lists(trusted_references() | references(), min_size=1, max_size=4))
        images = st.sampled_from(pool) | references()
    obj: dict[str, Any] | None = workload(group_kind, draw(pod_specs(images)))
    operation = draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]))
    old = None
    if operation in ("UPDATE", "DELETE") and draw(st.booleans()):
        old = workload(group_kind, draw(pod_specs(images)))
    if operation == "DELETE":
        obj, old = None, old or obj
    return builder.review_for(
        obj,
        operation=operation,
        old=old,
        # Mostly the object's own kind; sometimes another (the pod spec is then elsewhere).
        group_kind=draw(st.sampled_from([group_kind] * 10 + [*KINDS, ("", "Secret")])),
        namespace=draw(st.sampled_from(["default", "team-a", ""])),
        sub_resource=draw(st.sampled_from(["", "", "status", "ephemeralcontainers", "scale"])),
        dry_run=draw(st.booleans()),
        api_version=draw(st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])),
        uid=draw(st.from_regex(r"[a-f0-9-]{1,36}", fullmatch=True)),
    )


@st.composite
def admissible_reviews(draw: st.DrawFn) -> dict[str, Any]:
    """Reviews whose images are all trusted but for at most one (a near miss or anything):
    the webhook admits many of them, so the oracle has admits to check."""
    review = draw(built_reviews(trusted_references()))
    spots = [
        p
        for p in paths(review)
        if p and p[-1] in ("image", "reference") and isinstance(_at(review, p), str)
    ]
    replace_one: bool = draw(st.booleans())
    if spots and replace_one:
        spot: tuple[Any, ...] = draw(st.sampled_from(spots))
        _at(review, spot[:-1])[spot[-1]] = draw(image_pool() | hostile_references())
    return review


@st.composite
def update_reviews(draw: st.DrawFn) -> dict[str, Any]:
    """UPDATEs of a trusted workload where one image changes (to anything) and the rest stay:
    what §4.7 judges (new images only) is exactly where a wrong "unchanged" would admit."""
    group_kind = draw(st.sampled_from(KINDS))
    old = workload(group_kind, draw(pod_specs(trusted_references())))
    new = copy.deepcopy(old)
    spots = [p for p in paths(new) if p and p[-1] in ("image", "reference")]
    spots = [p for p in spots if isinstance(_at(new, p), str)]
    if spots:
        spot: tuple[Any, ...] = draw(st.sampled_from(spots))
        _at(new, spot[:-1])[spot[-1]] = draw(image_pool() | references())
        if draw(st.booleans()) and spot[-1] == "image":  # the container moves or is renamed
            container = _at(new, spot[:-1])
            container["name"] = draw(st.sampled_from(["app", "web", "side", "renamed"]))
    sub_resource = draw(st.sampled_from(["", "", "ephemeralcontainers"]))
    return builder.review_for(new, operation="UPDATE", old=old, sub_resource=sub_resource)


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


def fixture_reviews() -> list[dict[str, Any]]:
    """The real reviews of the shared fixtures, whole (kubewarden's requests get a wrapper)."""
    found: list[dict[str, Any]] = []
    for path in sorted(REVIEWS.glob("connaisseur/*.json")):
        document = json.loads(path.read_text())
        if isinstance(document, dict):
            found.append(document)
    for path in sorted(REVIEWS.glob("kubewarden/*.json")):
        request = json.loads(path.read_text())
        found.append(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
        )
    return found


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every field and element of `document`, as key paths (the root is `()`)."""
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, seed: dict[str, Any]) -> Any:
    """`seed` with up to four fields dropped, replaced, retyped, deepened or given images."""
    document: Any = copy.deepcopy(seed)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3, 4]))):  # a third unmutated
        path = draw(st.sampled_from(paths(document)))
        how = draw(st.sampled_from(["drop", "replace", "replace", "image", "wrap", "add"]))
        if not path:
            if how == "replace":
                document = draw(replacements)
            continue
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if how == "drop":
            del parent[last]
        elif how == "replace":
            parent[last] = draw(replacements)
        elif how == "image":
            parent[last] = draw(references())
        elif how == "wrap":
            parent[last] = _nested(parent[last], draw(st.integers(1, 120)), draw(st.booleans()))
        elif isinstance(parent[last], dict):
            parent[last][draw(st.sampled_from(["image", "uid", "kind", "x"]))] = draw(replacements)
        elif isinstance(parent[last], list):
            parent[last].append(draw(replacements))
    return document


def _dumps(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def bodies(draw: st.DrawFn, seeds: tuple[dict[str, Any], ...] = ()) -> bytes:
    """An AdmissionReview body: seeded or built, mutated, then maybe broken as bytes."""
    # Real ones, built ones, ones built to be admitted and UPDATEs of one image (one_of weighs
    # its branches equally).
    built = st.one_of(built_reviews(), admissible_reviews(), update_reviews())
    seed = draw(st.one_of(st.sampled_from(seeds), built, built) if seeds else built)
    body = _dumps(draw(mutated(seed)))
    return draw(st.one_of(st.just(body), st.just(body), _byte_mutations(body)))


def _byte_mutations(body: bytes) -> st.SearchStrategy[bytes]:
    """What JSON cannot say: truncation, stray bytes, integers past Python's digit limit,
    nesting past any recursion limit, and no body at all."""
    at = st.integers(0, len(body))
    return st.one_of(
        at.map(lambda n: body[:n]),
        st.tuples(at, st.binary(min_size=1, max_size=8)).map(lambda p: _splice(body, *p)),
        st.integers(4301, 6000).map(lambda n: body.replace(b"[", b"[" + b"9" * n + b",", 1)),
        st.integers(4301, 6000).map(lambda n: body.replace(b'"CREATE"', b"1" + b"0" * n)),
        st.integers(1000, 100_000).map(lambda n: b'{"request":{"uid":"u","x":' + b"[" * n),
        st.sampled_from([b"", b"null", b"[]", b'"x"', b"{}", b"\xff\xfe", b"{" * 3000]),
    )


def _splice(body: bytes, at: int, insert: bytes) -> bytes:
    return body[:at] + insert + body[at:]


# --- policies ------------------------------------------------------------------------------

_globs = st.one_of(
    st.sampled_from(["cgr.dev/chainguard/**", "**", "docker.io/library/*", "ghcr.io/*/app"]),
    st.text(st.sampled_from(list("ab*/.:-_[]?")), max_size=20),
)
_selectors: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"matchLabels": st.dictionaries(_component, _component, max_size=2)}),
    st.fixed_dictionaries(
        {
            "matchExpressions": st.lists(
                st.fixed_dictionaries(
                    {
                        "key": _component,
                        "operator": st.sampled_from(["In", "NotIn", "Exists", "Nope"]),
                        "values": st.lists(_component, max_size=2),
                    }
                ),
                max_size=2,
            )
        }
    ),
)


@st.composite
def policy_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Policies of the CRD's shape (some fields hostile), then maybe mutated like reviews."""
    spec: dict[str, Any] = {
        "mode": draw(st.sampled_from(["enforce", "warn", "audit", "block"])),
        "namespaceSelector": draw(_selectors),
        "sources": [
            {"name": draw(_component), "images": draw(st.lists(_globs, min_size=1, max_size=3))}
            for _ in range(draw(st.integers(0, 2)))
        ],
    }
    if draw(st.booleans()):
        spec["rewrites"] = [
            {"from": draw(_globs), "to": TRUSTED_PREFIX + draw(_component), "tag": draw(_tags)}
        ]
    document = {
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": draw(st.sampled_from(["ClusterImagePolicy", "ImagePolicy"])),
        "metadata": {"name": draw(_component), "namespace": "default"},
        "spec": spec,
    }
    result: dict[str, Any] = draw(st.just(document) | mutated(document).filter(_is_dict))
    return result


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


# --- signature layers -----------------------------------------------------------------------

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
KEYED = SIGNATURES / "containers-image-dir-img-cosign-key-rekor-valid"
BUNDLE = SIGNATURES / "sigstore-rs-kubewarden-controller-v1.34.0-bundle-v0.3" / "bundle_v03.json"


def _changed_bytes(original: bytes) -> st.SearchStrategy[bytes]:
    """Bytes that differ from `original`: edited in place, truncated, or other bytes."""
    at = st.integers(0, max(len(original) - 1, 0))
    flipped = st.tuples(at, st.integers(1, 255)).map(
        lambda p: original[: p[0]] + bytes([original[p[0]] ^ p[1]]) + original[p[0] + 1 :]
    )
    cut = at.map(lambda n: original[:n])
    return st.one_of(flipped, cut, st.binary(max_size=64)).filter(lambda b: b != original)


def _garbled_text(original: str | None) -> st.SearchStrategy[Any]:
    """An annotation value: kept, dropped (None), edited, or another JSON type."""
    kept = st.just(original)
    edited = _edit(original) if original else st.text(max_size=20)
    return st.one_of(kept, st.none(), edited, json_values(4))


@st.composite
def legacy_layers(
    draw: st.DrawFn, payload: bytes, signature: bytes, bundle: str
) -> tuple[dict[str, Any], bytes]:
    """A `.sig` layer whose payload or signature differs from the valid one (so it can never
    verify), with the other annotations garbled, dropped or retyped."""
    target = draw(st.sampled_from(["payload", "signature", "both"]))
    if target in ("payload", "both"):
        payload = draw(_changed_bytes(payload))
    signature_text: Any = base64.b64encode(signature).decode()
    if target in ("signature", "both"):
        signature_text = draw(
            _changed_bytes(signature).map(lambda b: base64.b64encode(b).decode())
            | _edit(signature_text).filter(lambda t: _b64(t) != signature)
            | json_values(3)
        )
    annotations: dict[str, Any] = {"dev.cosignproject.cosign/signature": signature_text}
    for name, value in (
        ("dev.sigstore.cosign/bundle", bundle),
        ("dev.sigstore.cosign/certificate", None),
        ("dev.sigstore.cosign/chain", None),
    ):
        garbled = draw(_garbled_text(value))
        if garbled is not None:
            annotations[name] = garbled
    layer: dict[str, Any] = {
        "mediaType": draw(st.sampled_from([SIMPLE_SIGNING, SIMPLE_SIGNING, "x"])),
        "digest": draw(st.just("sha256:" + "0" * 64) | json_values(2)),
        "annotations": annotations if draw(st.integers(0, 9)) else draw(json_values(3)),
    }
    return layer, payload


def _b64(text: Any) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        return None


@st.composite
def broken_bundles(draw: st.DrawFn, raw: bytes) -> bytes:
    """A v0.3 bundle whose DSSE payload or signature differs from the valid one, maybe with
    broken JSON, base64 or certificate as well."""
    bundle: Any = json.loads(raw)
    envelope = bundle["dsseEnvelope"]
    if draw(st.booleans()):
        original = base64.b64decode(envelope["payload"])
        envelope["payload"] = base64.b64encode(draw(_changed_bytes(original))).decode()
    else:
        original = base64.b64decode(envelope["signatures"][0]["sig"])
        envelope["signatures"][0]["sig"] = base64.b64encode(draw(_changed_bytes(original))).decode()
    text = _dumps(draw(st.just(bundle) | mutated(bundle)))
    return draw(st.just(text) | _byte_mutations(text))
