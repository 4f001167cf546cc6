"""The long fuzz run: AdmissionReviews through the real HTTPS webhook server, every answer judged.

Bodies come from two stages. Hypothesis draws a corpus with the strategies of tests/fuzz (real
reviews from the shared fixtures and built ones, mutated field by field and byte by byte); then a
plain random mutator (fast enough for 100,000) mutates corpus members again, crosses subtrees
between them and swaps in images from a pool of hostile and valid references. Each body is sent
once to /validate (3 in 4) or /mutate of a `WebhookServer` on 127.0.0.1 with a generated
certificate, with bounded concurrency and a per-request timeout that counts a hang.

Every answer is judged by tests/fuzz/oracle.py: HTTP 200 with an AdmissionReview (uid echoed)
or a 4xx; never a 5xx, a hang or a connection error; from /validate never allowed=true for an
image other than cgr.dev/chainguard/**. Bodies that break a rule are written to --out.

    .venv/bin/python bench/fuzz.py --reviews 100000        (or: scripts/fuzz)

Prints one summary line; exits 1 on any 5xx, hang, connection error or untrusted admit, and
when the time bound ends the run early.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import random
import ssl
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from fuzz import harness, oracle, strategies
from imagegate.admission import review as admission
from imagegate.admission.server import TLSFiles, WebhookServer
from imagegate.cluster import tls

#: A request not answered in this time is a hang (the server's deadline is 5 s).
HANG_SECONDS = 10.0
DEADLINE = 5.0


def draw_many(strategy: st.SearchStrategy[Any], count: int, seed: int) -> list[Any]:
    """`count` values of `strategy`, generation only (no shrinking, no database)."""
    found: list[Any] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


class Mutator:
    """Random mutations of corpus bodies: cheap, so a corpus of thousands feeds 100,000."""

    def __init__(
        self, corpus: list[bytes], images: list[str], trusted: list[str], rng: random.Random
    ) -> None:
        self.corpus = corpus
        self.trusted = trusted
        self.documents = [d for d in map(_loads, corpus) if isinstance(d, dict)]
        #: Reviews the webhook reads and judges images in: retargeted, they are admits to check.
        self.reviews = [json.loads(b) for b in corpus if _parses(b) and _judged(b)]
        self.images = images
        self.rng = rng

    def body(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.2 or not self.documents:
            return rng.choice(self.corpus)
        try:
            if rng.random() < 0.4 and self.reviews:
                # A review the webhook reads, its images trusted but maybe one: admits to judge.
                document: Any = self._retarget(copy.deepcopy(rng.choice(self.reviews)))
                mutations = rng.choice([0, 0, 1])
            else:
                document = copy.deepcopy(rng.choice(self.documents))
                mutations = rng.randint(1, 3)
            for _ in range(mutations):
                document = self._mutate(document)
            body = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
        except RecursionError:  # nested past what Python walks: send it as bytes instead
            body = rng.choice(self.corpus)
        return self._bytes(body) if rng.random() < 0.1 else body

    def _retarget(self, document: Any) -> Any:
        """Every image trusted, then maybe one untrusted: admits to judge, and near misses."""
        images = [p for p in strategies.paths(document) if p and p[-1] in ("image", "reference")]
        for path in images:
            self._set(document, path, self.rng.choice(self.trusted))
        if images and self.rng.random() < 0.5:
            self._set(document, self.rng.choice(images), self.rng.choice(self.images))
        return document

    @staticmethod
    def _set(document: Any, path: tuple[Any, ...], value: Any) -> None:
        """document[path] = value, unless an earlier change has moved what the path named."""
        parent = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict | list):
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass

    def _mutate(self, document: Any) -> Any:
        rng = self.rng
        every = strategies.paths(document)
        images = [p for p in every if p and p[-1] in ("image", "reference")]
        if images and rng.random() < 0.5:
            # Only an image changes: the review stays valid, and the decision is the oracle's.
            self._set(document, rng.choice(images), self._image(None))
            return document
        path = rng.choice(every)
        if not path:
            return document
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        how = rng.choice(self._OPERATIONS)
        if how == "drop":
            del parent[last]
        else:
            parent[last] = getattr(self, "_" + how)(parent[last])
        return document

    _OPERATIONS = ("drop", "image", "image", "image", "scalar", "cross", "wrap", "field")

    def _image(self, _: Any) -> Any:
        return self.rng.choice(self.images)

    def _scalar(self, _: Any) -> Any:
        rng = self.rng
        return rng.choice(
            [
                None,
                True,
                0,
                -1,
                2**64,
                10**300,
                1.5,
                "",
                "x" * rng.randint(1, 200_000),
                "\u202e\u0000\ud7ff\U0010ffff",
                [],
                {},
                rng.choice(["CREATE", "UPDATE", "DELETE", "CONNECT", "status", "Pod", "apps"]),
            ]
        )

    def _cross(self, _: Any) -> Any:
        """A subtree of another corpus document: valid-looking parts in the wrong places."""
        other = self.rng.choice(self.documents)
        node: Any = other
        for key in self.rng.choice(strategies.paths(other)):
            node = node[key]
        return copy.deepcopy(node)

    def _wrap(self, value: Any) -> Any:
        depth = self.rng.choice([1, 5, 60, 99, 100, 101, 150])  # deeper: `_bytes`
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.5 else {"a": value}
        return value

    def _field(self, value: Any) -> Any:
        if isinstance(value, dict):
            key = self.rng.choice(["image", "uid", "kind", "operation", "subResource", "x"])
            value[key] = self._image(None) if key == "image" else self._scalar(None)
        elif isinstance(value, list):
            value.append(self._cross(None))
        return value

    def _bytes(self, body: bytes) -> bytes:
        rng = self.rng
        at = rng.randint(0, len(body))
        return rng.choice(
            [
                body[:at],
                body[:at] + bytes([rng.randint(0, 255)]) + body[at:],
                body.replace(b"[", b"[" + b"9" * 4400 + b",", 1),
                body[:at] + b"[" * 5000 + body[at:],
            ]
        )


def _parses(body: bytes) -> bool:
    try:
        admission.parse_review(body)
    except admission.MalformedReviewError:
        return False
    return True


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


class Tally:
    def __init__(self, out: Path) -> None:
        self.counts: Counter[str] = Counter()
        self.out = out
        self.failures = 0

    def record(self, path: str, body: bytes, status: int | None, answer: Any) -> None:
        if status is None:  # "hangs" or "connection errors"
            self.counts[answer] += 1
            self._keep(answer, path, body, answer)
            return
        if status >= 500:
            self.counts["5xx"] += 1
            self._keep("5xx", path, body, f"HTTP {status}: {answer!r:.300}")
            return
        problem = oracle.answer_problem(path, body, status, answer)
        if problem is not None:
            kind = (
                "untrusted admits"
                if problem.startswith("admitted")
                else "internal errors"
                if problem.startswith("denial with code")
                else "bad answers"
            )
            self.counts[kind] += 1
            self._keep(kind, path, body, problem)
        elif status >= 400:
            self.counts["4xx"] += 1
        else:
            self.counts["answers"] += 1
            response = answer["response"]
            self.counts["allowed" if response["allowed"] else "denied"] += 1
            if response["allowed"] and path == "/validate" and _judged(body):
                self.counts["judged admits"] += 1

    def _keep(self, kind: str, path: str, body: bytes, problem: str) -> None:
        self.failures += 1
        if self.failures <= 50:
            self.out.mkdir(parents=True, exist_ok=True)
            name = f"{self.failures:02d}-{kind.replace(' ', '-')}"
            (self.out / f"{name}.body").write_bytes(body)
            (self.out / f"{name}.txt").write_text(f"{path}\n{problem}\n")


def _judged(body: bytes) -> bool:
    """Whether the webhook had images to judge (an admit that says something about safety)."""
    try:
        return bool(oracle.judged_images(json.loads(body)["request"]))
    except Exception:
        return False


async def post(
    session: aiohttp.ClientSession, base: str, path: str, body: bytes
) -> tuple[int | None, Any]:
    try:
        async with asyncio.timeout(HANG_SECONDS):
            async with session.post(
                base + path, data=body, headers={"Content-Type": "application/json"}
            ) as reply:
                raw = await reply.read()
                return reply.status, _loads(raw)
    except TimeoutError:
        return None, "hangs"
    except aiohttp.ClientError:
        return None, "connection errors"


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    logging.getLogger("imagegate").setLevel(logging.CRITICAL)  # 100,000 denials, one line each
    print(f"generating a corpus of {args.corpus} reviews with hypothesis (seed {args.seed})")
    seeds = tuple(strategies.fixture_reviews())
    corpus: list[bytes] = draw_many(strategies.bodies(seeds), args.corpus, args.seed)
    pool = strategies.image_pool() | strategies.references()
    images: list[str] = draw_many(pool, 3000, args.seed)
    trusted: list[str] = draw_many(strategies.trusted_references(), 500, args.seed)
    mutator = Mutator(corpus, images, trusted, random.Random(args.seed))
    print(f"corpus ready in {time.monotonic() - started:.0f}s; sending {args.reviews} reviews")
    tally = Tally(Path(args.out))
    ca = tls.CertificateAuthority.create("fuzz-ca")
    pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
    with tempfile.TemporaryDirectory() as directory:
        files = TLSFiles(Path(directory) / "tls.crt", Path(directory) / "tls.key")
        files.cert.write_bytes(pair.cert_pem)
        files.key.write_bytes(pair.key_pem)
        server = WebhookServer(harness.webhook_app(DEADLINE), files, host="127.0.0.1", port=0)
        await server.start()
        context = ssl.create_default_context(cadata=ca.cert_pem.decode())
        connector = aiohttp.TCPConnector(ssl=context, limit=args.concurrency)
        sent = 0
        sending = time.monotonic()
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                base = f"https://127.0.0.1:{server.port}"
                sent = await _send_all(session, base, mutator, tally, args, started)
        finally:
            await server.stop()
    elapsed = time.monotonic() - sending
    counts = tally.counts
    complete = sent == args.reviews
    line = (
        f"fuzz: {sent} reviews in {elapsed:.0f}s ({sent / max(elapsed, 1e-9):.0f}/s, "
        f"{args.concurrency} concurrent, seed {args.seed}): {counts['answers']} answers "
        f"({counts['allowed']} allowed, {counts['judged admits']} of them judged images; "
        f"{counts['denied']} denied), {counts['4xx']} 4xx, {counts['5xx']} 5xx, "
        f"{counts['hangs']} hangs, {counts['connection errors']} connection errors, "
        f"{counts['internal errors']} internal-error denials (500/504), "
        f"{counts['bad answers']} bad answers, {counts['untrusted admits']} untrusted admits"
        + ("" if complete else f"; STOPPED at the {args.max_seconds:.0f}s bound")
    )
    print(line)
    failed = tally.failures or not complete
    if tally.failures:
        print(f"offending bodies in {args.out}")
    return 1 if failed else 0


async def _send_all(
    session: aiohttp.ClientSession,
    base: str,
    mutator: Mutator,
    tally: Tally,
    args: argparse.Namespace,
    started: float,
) -> int:
    """Sends up to `args.reviews` bodies, `args.concurrency` at a time, within the time bound."""
    sent = 0
    rng = random.Random(args.seed + 1)

    async def worker() -> None:
        nonlocal sent
        while sent < args.reviews and time.monotonic() - started < args.max_seconds:
            sent += 1
            if sent % 10_000 == 0:
                print(f"  {sent} sent, {dict(tally.counts)}", flush=True)
            body = mutator.body()
            path = "/validate" if rng.random() < 0.75 else "/mutate"
            status, answer = await post(session, base, path, body)
            tally.record(path, body, status, answer)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=100_000)
    parser.add_argument("--corpus", type=int, default=3000, help="hypothesis-drawn seeds")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=1200.0, help="the whole run")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--out", default=f"/tmp/imagegate-fuzz-{int(time.time())}")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
