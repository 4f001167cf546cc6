"""Signature verification: imagegate cold vs `cosign verify` on the same registry and image.

Both verify the same key-signed image (legacy .sig, no transparency log) from the local test
registry. cosign's figure includes starting its process, which a webhook in Go would not pay
per request; imagegate's cold figure includes a new HTTP session (connection set-up) each time.
Also: a warm (cached) verdict lookup, and the memory of 10,000 cached verdicts.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from common import machine

from imagegate.policy import engine, model
from imagegate.registry import client as oci
from imagegate.signatures.cache import VerdictCache
from imagegate.signatures.verifier import CosignVerifier
from imagegate.testbed import build
from imagegate.testbed.registry import LocalRegistry
from support import cosign_env, cosign_key_pair, cosign_sign, push_random_image

ROUNDS = 15


async def imagegate_cold(address: str, check: engine.SignatureCheck) -> float:
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        verifier = CosignVerifier(oci.RegistryClient(session, insecure=frozenset({address})))
        verdict = (await verifier.verify([check], time.monotonic() + 30))[check]
    elapsed = time.perf_counter() - started
    assert verdict.verified, verdict.reason
    return elapsed


async def imagegate_warm(address: str, check: engine.SignatureCheck, count: int) -> float:
    async with aiohttp.ClientSession() as session:
        verifier = CosignVerifier(
            oci.RegistryClient(session, insecure=frozenset({address})), VerdictCache()
        )
        await verifier.verify([check], time.monotonic() + 30)
        started = time.perf_counter()
        for _ in range(count):
            # Pinned image: no tag resolution, the cache answers.
            await verifier.verify([check], time.monotonic() + 30)
        return (time.perf_counter() - started) / count


def cache_memory(requirement: model.Signatures, entries: int) -> int:
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    cache = VerdictCache(max_entries=entries)

    async def fill() -> None:
        for n in range(entries):
            digest = f"sha256:{n:064x}"
            verdict = engine.SignatureVerdict(True, digest=digest)

            async def verified(v: engine.SignatureVerdict = verdict) -> engine.SignatureVerdict:
                return v

            await cache.get_or_verify(
                (f"registry.example/team/app-{n}@{digest}", requirement), verified
            )

    asyncio.run(fill())
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert len(cache) == entries
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def main() -> None:
    builder = build.Builder()
    cosign, crane = builder.ensure(build.COSIGN), builder.ensure(build.CRANE)
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        local = LocalRegistry(builder.ensure(build.REGISTRY), work)
        local.start()
        try:
            cosign_key_pair(cosign, work)
            digest = push_random_image(crane, local.address, "bench/app", "v1", work)
            ref = f"{local.address}/bench/app@{digest}"
            cosign_sign(cosign, work / "cosign.key", ref, bundle=False)
            requirement = model.Signatures.model_validate(
                {
                    "keys": [{"publicKey": (work / "cosign.pub").read_text()}],
                    "requireTransparencyLog": False,
                }
            )
            check = engine.SignatureCheck(ref, "p", "s", requirement)
            ours = [asyncio.run(imagegate_cold(local.address, check)) for _ in range(ROUNDS)]
            theirs = []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                subprocess.run(
                    [
                        str(cosign),
                        "verify",
                        "--key",
                        "cosign.pub",
                        "--insecure-ignore-tlog=true",
                        "--new-bundle-format=false",
                        ref,
                    ],
                    cwd=work,
                    env=cosign_env(),
                    check=True,
                    capture_output=True,
                )
                theirs.append(time.perf_counter() - started)
            warm = asyncio.run(imagegate_warm(local.address, check, 10_000))
            memory = cache_memory(requirement, 10_000)
        finally:
            local.stop()
    ours_ms, theirs_ms = statistics.median(ours) * 1000, statistics.median(theirs) * 1000
    print(
        f"cold verification, median of {ROUNDS}: imagegate {ours_ms:.1f} ms, "
        f"cosign verify {theirs_ms:.1f} ms (ratio imagegate/cosign {ours_ms / theirs_ms:.2f})"
    )
    print(f"warm (cached) verdict: {warm * 1e6:.1f} µs per lookup (10,000 lookups)")
    print(f"10,000 cached verdicts: {memory / 1024 / 1024:.1f} MiB ({memory / 10_000:.0f} B each)")
    print(machine())


if __name__ == "__main__":
    main()
