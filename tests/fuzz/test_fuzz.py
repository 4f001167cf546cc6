"""Property-based fuzzing of everything that reaches imagegate from outside.

The default suite runs a small, derandomized slice (reproducible in CI, ~30 s). For a bigger run
set `IMAGEGATE_FUZZ_EXAMPLES=N`: every property then runs N examples with a random seed (the
failing example is printed, and hypothesis keeps it in its database for the next run).
`scripts/fuzz` is the long run through the real HTTPS server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import harness, oracle, strategies
from imagegate.admission import builder
from imagegate.admission import review as admission
from imagegate.commands import cli
from imagegate.core import reference
from imagegate.errors import ImagegateError
from imagegate.policy import compile as policy_compile
from imagegate.policy import engine, model
from imagegate.signatures import cosign
from imagegate.signatures.verifier import CosignVerifier

T = TypeVar("T")

#: Huge strings are the point of some examples; hypothesis warns when it prints one.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

EXAMPLES = int(os.environ.get("IMAGEGATE_FUZZ_EXAMPLES", "0") or 0)
settings.register_profile(
    "imagegate-ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "imagegate-long",
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
PROFILE = settings.get_profile("imagegate-long" if EXAMPLES else "imagegate-ci")


def examples(slice_size: int) -> settings:
    """`slice_size` examples in the default suite; `IMAGEGATE_FUZZ_EXAMPLES` for a long run."""
    return settings(PROFILE, max_examples=EXAMPLES or slice_size)


SEEDS = tuple(strategies.fixture_reviews())
BODIES = strategies.bodies(SEEDS)


# --- the wire model --------------------------------------------------------------------------


@examples(200)
@given(body=BODIES)
def test_parse_review_returns_a_review_or_raises_malformed(body: bytes) -> None:
    try:
        parsed = admission.parse_review(body)
    except admission.MalformedReviewError:
        return
    assert isinstance(parsed, admission.AdmissionReview)
    assert parsed.request.uid


def test_the_seeds_are_real_reviews() -> None:
    """The shared fixtures seed the review strategy (without them only built ones are used)."""
    if not strategies.REVIEWS.is_dir():
        pytest.skip(f"shared fixtures not found at {strategies.REVIEWS}")
    assert len(SEEDS) >= 40
    assert sum(1 for seed in SEEDS if seed.get("apiVersion") == "admission.k8s.io/v1beta1")


# --- the real handler, in-process ------------------------------------------------------------


class LoopThread:
    """An event loop in its own thread: hypothesis drives sync tests, the server needs a loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Served:
    """The real app on 127.0.0.1 (plain HTTP: the slice is about the handler, not TLS)."""

    def __init__(self, thread: LoopThread) -> None:
        self.thread = thread
        self.runner = aiohttp.web.AppRunner(harness.webhook_app(deadline=5.0), access_log=None)
        self.session: aiohttp.ClientSession | None = None
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        site = aiohttp.web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.runner.cleanup()

    async def post(self, path: str, body: bytes) -> tuple[int, Any]:
        assert self.session is not None
        url = f"http://127.0.0.1:{self.port}{path}"
        headers = {"Content-Type": "application/json"}
        async with self.session.post(url, data=body, headers=headers) as reply:
            text = await reply.read()
            try:
                return reply.status, json.loads(text)
            except ValueError:
                return reply.status, text


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture(scope="module")
def served(loop_thread: LoopThread) -> Iterator[Served]:
    server = Served(loop_thread)
    loop_thread.run(server.start(), timeout=10)
    try:
        yield server
    finally:
        loop_thread.run(server.stop(), timeout=10)


@examples(300)
@given(path=st.sampled_from(["/validate", "/validate", "/mutate"]), body=BODIES)
def test_every_body_gets_an_answer_and_no_untrusted_image_is_admitted(
    served: Served, path: str, body: bytes
) -> None:
    """HTTP 200 with an AdmissionReview (uid echoed) or a 4xx; never 5xx, never a hang
    (10 s, twice the deadline); and from /validate never allowed=true for an untrusted image
    (see `oracle` for exactly which requests the webhook judges)."""
    started = time.monotonic()
    status, answer = served.thread.run(served.post(path, body), timeout=10)
    assert time.monotonic() - started < 10
    problem = oracle.answer_problem(path, body, status, answer)
    assert problem is None, f"{problem}: {answer!r:.500}"


@pytest.mark.parametrize(
    "image",
    ["cgr.dev/chainguard/nginx:latest", "docker.io/library/nginx", "sha256:" + "a" * 64],
)
def test_the_oracle_tells_trusted_from_untrusted(served: Served, image: str) -> None:
    """Not a fuzz case: proves the property above can fail (an oracle that never objects is
    no test). The webhook denies the untrusted ones, and the oracle objects to admitting them."""
    body = json.dumps(builder.review_for(builder.pod("p", image))).encode()
    status, answer = served.thread.run(served.post("/validate", body), timeout=10)
    assert status == 200
    assert answer["response"]["allowed"] is oracle.trusted(image)
    admitted = {**answer, "response": {**answer["response"], "allowed": True}}
    expect_problem = not oracle.trusted(image)
    assert (oracle.answer_problem("/validate", body, 200, admitted) is not None) is expect_problem


# --- imagegate check -------------------------------------------------------------------------


def _manifests() -> st.SearchStrategy[str]:
    objects = st.builds(
        strategies.workload, st.sampled_from(strategies.KINDS), strategies.pod_specs()
    )
    documents = st.lists(objects.flatmap(strategies.mutated), min_size=1, max_size=3)
    as_yaml = documents.map(lambda docs: yaml.safe_dump_all(docs, allow_unicode=True))
    hostile = st.one_of(
        st.text(max_size=200),
        st.integers(5, 40).map(lambda n: "a: &a [" + "*a," * n + "]"),
        st.integers(5, 20).map(
            lambda n: "".join(f"l{i}: &l{i} [*l{i - 1},*l{i - 1}]\n" for i in range(1, n))
        ),
        st.integers(90, 2000).map(lambda n: "[" * n + "]" * n),
        st.just("!!python/object/apply:os.system ['true']"),
    )
    return as_yaml | hostile


def _run_check(policy: str, manifest: str) -> tuple[int, str, str]:
    with tempfile.TemporaryDirectory() as directory:
        policy_path, manifest_path = Path(directory, "p.yaml"), Path(directory, "m.yaml")
        policy_path.write_text(policy, encoding="utf-8", errors="surrogatepass")
        manifest_path.write_text(manifest, encoding="utf-8", errors="surrogatepass")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(["check", "-o", "json", "-p", str(policy_path), str(manifest_path)])
    return status, out.getvalue(), err.getvalue()


@examples(100)
@given(
    policy=st.just(strategies.POLICY) | strategies.policy_documents(),
    manifest=_manifests(),
)
def test_check_exits_0_1_or_2_and_says_why(policy: dict[str, Any], manifest: str) -> None:
    """0 (all admitted) and 1 (one denied) agree with the JSON verdict; 2 is one line on
    stderr; nothing raises. With the chainguard-only policy nothing untrusted is admitted."""
    status, out, err = _run_check(yaml.safe_dump(policy), manifest)
    assert status in (0, 1, 2)
    if status == 2:
        assert err.startswith("imagegate: "), err
        assert err.count("\n") == 1, err
        return
    verdict = json.loads(out)
    assert verdict["allowed"] is (status == 0), (status, err)
    if policy is strategies.POLICY:
        for obj in verdict["objects"]:
            for image in obj["images"]:
                assert not image["allowed"] or oracle.trusted(image["final"]), image


# --- image references ------------------------------------------------------------------------


@examples(800)
@given(text=strategies.references())
def test_a_reference_parses_and_round_trips_or_is_refused(text: str) -> None:
    try:
        parsed = reference.parse(text)
    except reference.InvalidReferenceError:
        return
    assert reference.parse(str(parsed)) == parsed
    assert reference.parse(parsed.familiar) == parsed
    assert parsed.repository.lower() == parsed.repository  # registries keep their case
    assert parsed.tag is not None or parsed.digest is not None


_hex = st.text(strategies.HEX + "ABCDEF", min_size=1, max_size=200)


@examples(500)
@given(
    image_id=st.one_of(
        st.tuples(st.sampled_from(["sha256", "sha384", "sha512", "blake3"]), _hex).map(":".join),
        st.text(strategies.HEX + "ABCDEF", min_size=12, max_size=200),
    )
)
def test_image_ids_are_always_refused(image_id: str) -> None:
    with pytest.raises(reference.InvalidReferenceError):
        reference.parse(image_id)


# --- policies --------------------------------------------------------------------------------


@examples(200)
@given(document=strategies.policy_documents())
def test_a_policy_parses_and_compiles_or_is_refused_with_a_reason(document: Any) -> None:
    reason = ""
    try:
        parsed = model.parse_policy_document(document)
        compiled = policy_compile.compile_policy(parsed)
    except ImagegateError as error:  # PolicyError, GlobError, ...: refused with a reason
        reason = error.user_message
    else:
        assert isinstance(compiled, engine.CompiledPolicy)
        return
    assert reason


# --- signature layers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signature_seeds() -> dict[str, Any]:
    if not strategies.KEYED.is_dir() or not strategies.BUNDLE.is_file():
        pytest.skip(f"shared signature fixtures not found under {strategies.SIGNATURES}")
    payload = (strategies.KEYED / "payload.json").read_bytes()
    return {
        "payload": payload,
        "signature": strategies._b64((strategies.KEYED / "signature.b64").read_text().strip()),
        "bundle": (strategies.KEYED / "bundle.json").read_text(),
        "digest": json.loads(payload)["critical"]["image"]["docker-manifest-digest"],
        "public_key": (strategies.KEYED / "cosign2.pub").read_text(),
        "v03": strategies.BUNDLE.read_bytes(),
    }


KUBEWARDEN_SIGNER = (
    "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml"
    "@refs/tags/v1.34.0"
)
GITHUB_ACTIONS = "https://token.actions.githubusercontent.com"
V03_DIGEST = "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172"


def _verdict(
    thread: LoopThread,
    layers: list[tuple[dict[str, Any], bytes]],
    bundles: list[bytes],
    digest: str,
    needs: model.Signatures,
) -> engine.SignatureVerdict:
    verifier = CosignVerifier(harness.Registry(layers, bundles))  # type: ignore[arg-type]
    check = engine.SignatureCheck(f"{harness.HOST}/{harness.REPOSITORY}@{digest}", "p", "s", needs)
    return thread.run(verifier.verify([check], time.monotonic() + 30), timeout=30)[check]


def _keyed(seeds: dict[str, Any], require_tlog: bool = True) -> model.Signatures:
    return model.Signatures.model_validate(
        {"keys": [{"publicKey": seeds["public_key"]}], "requireTransparencyLog": require_tlog}
    )


KEYLESS = model.Signatures.model_validate(
    {"keyless": [{"issuer": GITHUB_ACTIONS, "subject": KUBEWARDEN_SIGNER}]}
)


def test_the_unbroken_seeds_verify(
    loop_thread: LoopThread, signature_seeds: dict[str, Any]
) -> None:
    """Not a fuzz case: the stand-in registry serves valid signatures as valid, so "never
    verified" below is about the mutations, not a harness that can only say no."""
    seeds = signature_seeds
    valid = (
        {
            "mediaType": strategies.SIMPLE_SIGNING,
            "digest": harness.cosign_digest(seeds["payload"]),
            "annotations": {
                cosign.SIGNATURE_ANNOTATION: base64.b64encode(seeds["signature"]).decode(),
                cosign.REKOR_ANNOTATION: seeds["bundle"],
            },
        },
        seeds["payload"],
    )
    assert _verdict(loop_thread, [valid], [], seeds["digest"], _keyed(seeds)).verified
    assert _verdict(loop_thread, [], [seeds["v03"]], V03_DIGEST, KEYLESS).verified


@examples(100)
@given(data=st.data())
def test_broken_signature_layers_never_raise_and_never_verify(
    loop_thread: LoopThread, signature_seeds: dict[str, Any], data: st.DataObject
) -> None:
    """Each layer differs from the valid signature in its payload or signature bytes (and may
    be garbled elsewhere): whatever it holds, the verdict is a denial, never an exception."""
    seeds = signature_seeds
    layer = strategies.legacy_layers(seeds["payload"], seeds["signature"], seeds["bundle"])
    layers = data.draw(st.lists(layer, min_size=0, max_size=3), label="layers")
    needs = _keyed(seeds, require_tlog=data.draw(st.booleans(), label="requireTransparencyLog"))
    verdict = _verdict(loop_thread, layers, [], seeds["digest"], needs)
    assert not verdict.verified, verdict


@examples(60)
@given(data=st.data())
def test_broken_v03_bundles_never_raise_and_never_verify(
    loop_thread: LoopThread, signature_seeds: dict[str, Any], data: st.DataObject
) -> None:
    bundles = data.draw(
        st.lists(strategies.broken_bundles(signature_seeds["v03"]), min_size=1, max_size=2)
    )
    verdict = _verdict(loop_thread, [], bundles, V03_DIGEST, KEYLESS)
    assert not verdict.verified, verdict
