"""`--workers` coherence (docs/design.md §13, imagegate issue #14 item 2): a verdict one worker
verified reaches the others' caches through the parent, a hung worker is killed and started
again, and the parent never blocks on a worker's full pipe."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from imagegate.admission import server
from imagegate.cluster import policies, tls, workers
from imagegate.policy import model
from imagegate.policy.engine import SignatureVerdict
from imagegate.signatures.cache import SharedVerdict, UnsharableVerdict, VerdictCache
from imagegate.testbed import processes
from imagegate.trail import metrics

DIGEST = "sha256:" + "a" * 64
SUBJECT = f"x.io/app@{DIGEST}"
OK = SignatureVerdict(True, digest=DIGEST)
UNSIGNED = SignatureVerdict(False, f"{DIGEST}: no signature found", digest=DIGEST)


def requirement(subject_regexp: str = "^https://.*$") -> model.Signatures:
    return model.Signatures.model_validate(
        {"keyless": [{"issuer": "https://i", "subjectRegExp": subject_regexp}]}
    )


def key(signatures: model.Signatures | None = None) -> tuple[str, Any]:
    """A key as the verifier builds it: (subject, (requirement, key DERs, attestations, ...))."""
    return SUBJECT, (signatures or requirement(), (), (), ())


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class Verify:
    def __init__(self, verdict: SignatureVerdict) -> None:
        self.calls = 0
        self.verdict = verdict

    async def __call__(self) -> SignatureVerdict:
        self.calls += 1
        return self.verdict


def shared_by_one_cache(verdict: SignatureVerdict, **cache: Any) -> list[SharedVerdict]:
    """What a cache tells `on_stored` after one verification of `key()`, through a pipe's pickle."""
    told: list[SharedVerdict] = []
    verifier = VerdictCache(**cache)
    verifier.on_stored = told.append
    asyncio.run(verifier.get_or_verify(key(), Verify(verdict)))
    through_a_pipe: list[SharedVerdict] = pickle.loads(pickle.dumps(told))
    return through_a_pipe


# --- the verdict cache: what it shares and what it takes ----------------------------------------


async def test_a_verdict_verified_by_one_cache_answers_in_another_without_verifying() -> None:
    [shared] = await asyncio.to_thread(shared_by_one_cache, OK)
    other = VerdictCache()
    other.insert(shared)
    verify = Verify(OK)
    assert await other.get_or_verify(key(), verify) == OK
    assert verify.calls == 0
    # The same digest under another requirement is another question: verified here.
    assert await other.get_or_verify(key(requirement("^https://other$")), verify) == OK
    assert verify.calls == 1


async def test_a_shared_verdict_lives_as_long_as_it_had_left_and_a_failure_as_briefly() -> None:
    [positive] = await asyncio.to_thread(shared_by_one_cache, OK, positive_ttl=300)
    [negative] = await asyncio.to_thread(shared_by_one_cache, UNSIGNED, negative_ttl=10)
    assert (positive.expires_in, negative.expires_in) == (300, 10)
    clock = Clock()
    clock.now = 1000.0  # another process's clock: only relative times travel
    other = VerdictCache(positive_ttl=300, negative_ttl=10, clock=clock)
    other.insert(SharedVerdict(positive.key, positive.verdict, 100.0, 200.0))
    verify = Verify(OK)
    clock.now = 1099.0
    await other.get_or_verify(key(), verify)
    assert verify.calls == 0
    clock.now = 1101.0  # past the 100 s it had left
    await other.get_or_verify(key(), verify)
    assert verify.calls == 1
    unsigned = VerdictCache(negative_ttl=10, clock=clock)
    unsigned.insert(negative)
    assert await unsigned.get_or_verify(key(), Verify(OK)) == UNSIGNED  # a definite failure


def test_only_verdicts_a_cache_stores_are_shared_and_inserts_are_not_shared_again() -> None:
    registry_error = SignatureVerdict(False, "registry error: connection refused")
    assert shared_by_one_cache(registry_error) == []
    [shared] = shared_by_one_cache(OK)
    told: list[SharedVerdict] = []
    other = VerdictCache()
    other.on_stored = told.append
    other.insert(shared)
    assert told == []  # no echo back up the pipe
    assert len(other) == 1


@pytest.mark.parametrize(
    "message",
    [
        ("verdict", OK),
        SharedVerdict(key(), SignatureVerdict(False, "registry error: timeout"), 5.0, 0.0),
        SharedVerdict(key(), SignatureVerdict(True, digest="sha256:" + "b" * 64), 5.0, 0.0),
        SharedVerdict(key(), SignatureVerdict(True), 5.0, 0.0),
        SharedVerdict(key(), SignatureVerdict(False, "no", digest=DIGEST, failed="x"), 5.0, 0.0),
        SharedVerdict(key(), "allowed", 5.0, 0.0),  # type: ignore[arg-type]
        SharedVerdict(key(), SignatureVerdict(1, digest=DIGEST), 5.0, 0.0),  # type: ignore[arg-type]
        SharedVerdict(key(), OK, 301.0, 0.0),  # longer than this cache keeps a verdict
        SharedVerdict(key(), UNSIGNED, 11.0, 0.0),
        SharedVerdict(key(), OK, math.nan, 0.0),
        SharedVerdict(key(), OK, 5.0, -1.0),
        SharedVerdict(key(), OK, 0.0, 0.0),
        SharedVerdict((SUBJECT,), OK, 5.0, 0.0),  # type: ignore[arg-type]
        SharedVerdict((SUBJECT, ["unhashable"]), OK, 5.0, 0.0),  # type: ignore[arg-type]
    ],
    ids=lambda message: str(message)[:60],
)
def test_a_shared_verdict_the_cache_would_not_store_itself_is_refused(message: object) -> None:
    cache = VerdictCache(positive_ttl=300, negative_ttl=10)
    with pytest.raises(UnsharableVerdict):
        cache.insert(message)
    assert len(cache) == 0


# --- the pipes: worker -> parent -> the other workers -------------------------------------------


def test_a_worker_takes_a_verdict_from_its_pipe_and_refuses_a_wrong_one() -> None:
    parent_end, worker_end = multiprocessing.Pipe()
    verdicts = VerdictCache()
    stopped = asyncio.Event()
    cache = policies.PolicyCache(None)  # type: ignore[arg-type]  # no reads here

    def deliver(message: object) -> None:
        parent_end.send(("verdict", message))
        workers._on_message(worker_end, cache, None, stopped, verdicts)  # type: ignore[arg-type]

    deliver(SharedVerdict(key(), SignatureVerdict(True, digest="sha256:" + "c" * 64), 5.0, 0.0))
    assert len(verdicts) == 0
    [shared] = shared_by_one_cache(OK)
    deliver(shared)
    assert len(verdicts) == 1
    assert not stopped.is_set()


class Relay:
    """A pool with two stand-in workers on real pipes (no processes): what the parent sends."""

    def __init__(self) -> None:
        self.metrics = metrics.Metrics()
        self.pool = workers.WorkerPool(
            None,  # type: ignore[arg-type]  # nothing is started
            2,
            policies.PolicyCache(None),  # type: ignore[arg-type]
            self.metrics,
        )
        self.ends: list[Connection] = []
        context = multiprocessing.get_context("spawn")
        for index in range(2):
            parent_end, worker_end = multiprocessing.Pipe()
            outbox = workers._Outbox(parent_end, workers.OUTBOX_LIMIT, f"test-{index}")
            self.pool._workers[index] = workers._Worker(
                index, context.Process(), parent_end, asyncio.Event(), outbox
            )
            self.ends.append(worker_end)

    def close(self) -> None:
        for worker in self.pool._workers.values():
            worker.outbox.close()
            worker.outbox.join(5)


async def test_the_parent_sends_a_verdict_to_every_other_worker() -> None:
    relay = Relay()
    try:
        [shared] = await asyncio.to_thread(shared_by_one_cache, OK)
        relay.ends[0].send(("verdict", shared))
        relay.pool._receive(relay.pool._workers[0])
        assert await asyncio.to_thread(relay.ends[1].poll, 30)
        kind, received = relay.ends[1].recv()
        assert (kind, received) == ("verdict", shared)
        assert not relay.ends[0].poll(0.2)  # not back to the worker that verified it
        assert counted(relay.metrics, "imagegate_worker_shared_verdicts_total") == 1
    finally:
        relay.close()


# --- real worker processes: a hung worker, a worker that does not read --------------------------


def counted(registry_metrics: metrics.Metrics, name: str, **labels: str) -> float:
    value = registry_metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """A liveness bound for a busy machine, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        await asyncio.sleep(0.1)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[tuple[workers.WorkerPool, metrics.Metrics]]:
    """One real worker process (`worker_main`), serving on 127.0.0.1; no API server is asked."""
    pair = tls.CertificateAuthority.create("coherence-ca").issue(
        "imagegate", ip_addresses=["127.0.0.1"]
    )
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {}}]\n"
    )
    settings = workers.WorkerSettings(
        kubeconfig=kubeconfig,
        tls=server.TLSFiles(tmp_path / "tls.crt", tmp_path / "tls.key"),
        host="127.0.0.1",
        port=processes.free_port(),
        deadline=5.0,
        mutate_budget=None,
        stale_digest_ttl=60.0,
        log_admits="sampled",
        namespace="imagegate-system",
        insecure_registries=frozenset(),
        events=False,
        material_ttl=30.0,
        material_stale_for=300.0,
    )
    pool_metrics = metrics.Metrics()
    cache = policies.PolicyCache(None)  # type: ignore[arg-type]  # the parent reads nothing here
    created = workers.WorkerPool(settings, 1, cache, pool_metrics)
    try:
        yield created, pool_metrics
    finally:
        for pid in created.pids:  # a stopped process is woken, so it can be stopped
            if processes.alive(pid):
                os.kill(pid, signal.SIGCONT)
        await created.stop(timeout=10)


@pytest.mark.timeout(150)
async def test_a_worker_that_stops_answering_is_killed_and_started_again(
    pool: tuple[workers.WorkerPool, metrics.Metrics],
) -> None:
    workers_, pool_metrics = pool
    workers_.silence_timeout = 3.0
    await workers_.start()
    [hung] = workers_.pids
    os.kill(hung, signal.SIGSTOP)  # alive, but its loop sends no heartbeat
    await wait_for(lambda: workers_.restarts == 1, "the silent worker restarted")
    assert counted(pool_metrics, "imagegate_worker_kills_total", reason="silent") == 1
    await wait_for(lambda: workers_.ready, "the new worker serving")
    assert hung not in workers_.pids
    assert counted(pool_metrics, "imagegate_worker_kills_total", reason="silent") == 1


@pytest.mark.timeout(150)
async def test_the_parent_never_blocks_on_a_worker_that_does_not_read(
    pool: tuple[workers.WorkerPool, metrics.Metrics],
) -> None:
    workers_, pool_metrics = pool
    workers_.silence_timeout = 3600.0  # only the backlog may stop it here
    workers_.outbox_limit = 256 * 1024
    await workers_.start()
    [stuck] = workers_.pids
    os.kill(stuck, signal.SIGSTOP)
    # 4 MiB of namespace labels: far more than a pipe holds (the old code blocked in send here,
    # and this loop with it), and more than the outbox may hold.
    labels = {f"label-{n}": "v" * 60 for n in range(64)}
    for n in range(1000):
        workers_.cache.set_namespace(f"ns-{n}", labels)
    assert counted(pool_metrics, "imagegate_worker_kills_total", reason="backlog") == 1
    await wait_for(lambda: workers_.restarts == 1 and workers_.ready, "the worker restarted")
    assert stuck not in workers_.pids


def test_a_verdict_that_cannot_be_sent_is_not_shared_and_the_admission_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parent_end, worker_end = multiprocessing.Pipe()
    share = workers._share_verdicts(worker_end)
    share(SharedVerdict((SUBJECT, lambda: None), OK, 5.0, 0.0))  # a key that does not pickle
    assert not parent_end.poll(0)
    assert "could not be shared" in caplog.text
