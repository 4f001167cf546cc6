"""`imagegate run --workers 2` (imagegate issue #14, item 2; docs/design.md §17), as a real process
against the real kube-apiserver: two worker processes answer on one HTTPS port, both follow a
policy change, a killed worker is started again while the other answers, and SIGTERM drains;
a signature verdict one worker verified answers in the other without a second verification."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from imagegate.cluster import tls, workers
from imagegate.testbed import local, processes
from imagegate.testbed.registry import LocalRegistry
from support import Cluster, pod_review, push_key_signed_image

from .conftest import PolicyFactory

pytestmark = pytest.mark.controlplane

#: Not from the policy's only source: denied once the policy is in force.
OUTSIDER = "elsewhere.example/app:1"


def answer(
    running: local.LocalOperator,
    namespace: str,
    context: ssl.SSLContext | None = None,
    image: str = OUTSIDER,
) -> tuple[str, dict[str, Any]]:
    """One review over a new connection: (the worker that answered, "index/pid"; the response)."""
    request = urllib.request.Request(
        running.url + "/validate",
        data=json.dumps(pod_review(namespace, image)).encode(),
        headers={"Content-Type": "application/json"},
    )
    context = context or running.ssl_context()
    with urllib.request.urlopen(request, context=context, timeout=10) as reply:
        worker = reply.headers.get(workers.WORKER_HEADER, "")
        return worker, json.loads(reply.read())["response"]


def answers_until(
    running: local.LocalOperator,
    namespace: str,
    enough: Callable[[dict[str, list[bool]]], bool],
    timeout: float = 30.0,
    context: ssl.SSLContext | None = None,
    resets: list[OSError] | None = None,
    image: str = OUTSIDER,
) -> dict[str, list[bool]]:
    """Reviews sent one by one until `enough(allowed answers by worker)`, for at most `timeout`
    seconds. Every one must be answered, except that with `resets` a connection refused or reset
    is kept there instead."""
    by_worker: dict[str, list[bool]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            worker, response = answer(running, namespace, context, image)
        except OSError as error:  # URLError included
            if resets is None:
                raise
            resets.append(error)
            continue
        by_worker.setdefault(worker, []).append(bool(response["allowed"]))
        if enough(by_worker):
            return by_worker
        time.sleep(0.02)
    counted = {name: (sum(answers), len(answers)) for name, answers in by_worker.items()}
    pytest.fail(f"not enough answers within {timeout:.0f}s: (allowed, answered) {counted}")


def indices(by_worker: dict[str, list[bool]]) -> set[str]:
    return {name.split("/")[0] for name in by_worker}


def status_of(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def served_with(
    running: local.LocalOperator, namespace: str, context: ssl.SSLContext, seen: set[str]
) -> set[str]:
    """`seen` and the worker index that answered one review trusting only `context`, if any."""
    try:
        worker, _ = answer(running, namespace, context)
    except urllib.error.URLError:  # a worker still on the old certificate
        return seen
    seen.add(worker.split("/")[0])
    return seen


def event_writers(api: client.ApiClient, namespace: str) -> set[str]:
    """The reporting instances of the Events on policy team-only."""
    found = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector="involvedObject.name=team-only"
    )
    return {event.reporting_instance for event in found.items}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.1)


def metric(running: local.LocalOperator, prefix: str) -> float:
    lines = [line for line in running.metrics().splitlines() if line.startswith(prefix)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_two_workers_share_the_port_follow_policies_restart_and_drain(
    cluster: Cluster,
    api: client.ApiClient,
    crds: None,
    namespace: str,
    image_policy: PolicyFactory,
    tmp_path: Path,
) -> None:
    with local.operator_process(
        cluster.kubeconfig,
        tmp_path / "operator",
        extra_args=["--workers", "2"],
        env={"IMAGEGATE_DRAIN_DELAY": "2"},
    ) as running:
        # Both workers answer on the one port (no policy yet: admitted).
        before = answers_until(running, namespace, lambda seen: len(indices(seen)) == 2)
        assert all(all(allowed) for allowed in before.values()), before
        pids = {name.split("/")[0]: int(name.split("/")[1]) for name in before}
        assert running.process.pid not in pids.values()  # the operator itself does not serve

        # A policy the parent watches reaches both workers.
        team_only = {"sources": [{"name": "team", "images": ["t.io/**"]}]}
        image_policy(namespace, "team-only", team_only)
        time.sleep(0.2)  # Ready is written just after the policy goes down the pipes
        after = answers_until(running, namespace, lambda seen: len(indices(seen)) == 2)
        assert not any(any(allowed) for allowed in after.values()), after
        answered = sum(map(len, before.values())) + sum(map(len, after.values()))
        wait_for(  # the workers' counts reach the operator's /metrics (sent once a second)
            lambda: metric(running, "imagegate_admissions_total") >= answered, 5, "counts"
        )

        # Both workers' denials become Events on the policy, one Event name per worker.
        wait_for(lambda: len(event_writers(api, namespace)) == 2, 15, "Events from both workers")

        # A new certificate (from a new CA) in the files is served by both workers.
        ca = tls.CertificateAuthority.create("rotated-ca")
        pair = ca.issue("imagegate", ip_addresses=["127.0.0.1"])
        workdir = tmp_path / "operator"
        (workdir / "tls.key").write_bytes(pair.key_pem)
        (workdir / "tls.crt").write_bytes(pair.cert_pem)
        rotated = ssl.create_default_context(cadata=ca.cert_pem.decode())
        reloaded: set[str] = set()
        wait_for(
            lambda: len(served_with(running, namespace, rotated, reloaded)) == 2,
            10,
            "both workers serving the new certificate",
        )

        # A killed worker is started again; the other answers meanwhile.
        os.kill(pids["0"], signal.SIGKILL)
        wait_for(lambda: not processes.alive(pids["0"]), 5, "the worker killed")
        # A connection the kernel had queued on the dead worker's socket is reset (Linux hands
        # it to no other socket unless net.ipv4.tcp_migrate_req=1): at most the one in the way.
        resets: list[OSError] = []
        restarted = answers_until(
            running,
            namespace,
            lambda seen: any(name.startswith("0/") and name != f"0/{pids['0']}" for name in seen),
            timeout=60,  # a new process imports the webhook stack: seconds on a busy machine
            context=rotated,  # and serves the certificate in the files
            resets=resets,
        )
        assert len(resets) <= 1, resets
        assert f"0/{pids['0']}" not in restarted, restarted
        assert not any(any(allowed) for allowed in restarted.values())  # it has the policy
        assert metric(running, "imagegate_worker_restarts_total") == 1.0
        serving = {int(name.split("/")[1]) for name in restarted}

        # SIGTERM (to the operator only, as the kubelet sends it): /readyz fails while the
        # workers go on answering, then every process exits.
        pid = running.process.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while status_of(running.health_url + "/readyz") != 503:
            assert time.monotonic() < deadline, "/readyz did not fail after SIGTERM"
            time.sleep(0.05)
        _, during_drain = answer(running, namespace, rotated)
        assert during_drain["allowed"] is False
        deadline = time.monotonic() + 20
        while running.process.exit_code() is None:
            assert time.monotonic() < deadline, "the operator did not exit after SIGTERM"
            time.sleep(0.1)
        assert running.process.exit_code() == 0
        assert not any(processes.alive(worker) for worker in serving)


def requests_about(registry: LocalRegistry, digest: str) -> int:
    """Requests the registry logged naming `digest` (its `.sig` tag, referrers, manifest)."""
    assert registry.process is not None
    hex_digest = digest.split(":", 1)[1]
    return sum(hex_digest in line for line in registry.process.log_path.read_text().splitlines())


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_verdict_one_worker_verified_admits_in_the_other_without_verifying_again(
    cluster: Cluster,
    crds: None,
    namespace: str,
    image_policy: PolicyFactory,
    registry: LocalRegistry,
    crane: Path,
    cosign: Path,
    tmp_path: Path,
) -> None:
    image, digest = push_key_signed_image(
        crane, cosign, registry.address, f"workers/{namespace}", tmp_path
    )
    with local.operator_process(
        cluster.kubeconfig,
        tmp_path / "operator",
        insecure_registries=[registry.address],
        extra_args=["--workers", "2"],
    ) as running:
        key = {"publicKey": (tmp_path / "cosign.pub").read_text()}
        signatures = {"keys": [key], "requireTransparencyLog": False}
        source = {"name": "team", "images": [f"{registry.address}/workers/**"]}
        image_policy(namespace, "signed-only", {"sources": [{**source, "signatures": signatures}]})
        time.sleep(0.2)  # Ready is written just after the policy goes down the pipes
        pushed = requests_about(registry, digest)  # crane's and cosign's
        _, response = answer(running, namespace, image=image)
        assert response["allowed"] is True, response
        verified_once = requests_about(registry, digest)
        assert verified_once > pushed  # the first worker fetched the signatures
        # The verdict goes up the first worker's pipe and down the other's.
        shared = eventually(
            lambda: metric(running, "imagegate_worker_shared_verdicts_total") >= 1, 10
        )
        both = answers_until(
            running,
            namespace,
            lambda seen: len(indices(seen)) == 2,
            image=image,
        )
        assert all(all(allowed) for allowed in both.values()), both
        assert indices(both) == {"0", "1"}
        # One verification for both workers: the other asked the registry nothing about it.
        assert requests_about(registry, digest) == verified_once
        assert shared


def test_a_worker_that_stops_answering_is_killed_and_started_again(
    cluster: Cluster, crds: None, namespace: str, tmp_path: Path
) -> None:
    with local.operator_process(
        cluster.kubeconfig,
        tmp_path / "operator",
        extra_args=["--workers", "2"],
        env={"IMAGEGATE_WORKER_SILENCE_TIMEOUT": "3"},
    ) as running:
        before = answers_until(running, namespace, lambda seen: len(indices(seen)) == 2)
        pids = {name.split("/")[0]: int(name.split("/")[1]) for name in before}
        os.kill(pids["0"], signal.SIGSTOP)  # alive, but its loop answers nothing, not even ticks
        wait_for(
            lambda: metric(running, 'imagegate_worker_kills_total{reason="silent"}') == 1,
            60,
            "the silent worker killed",
        )
        wait_for(lambda: not processes.alive(pids["0"]), 10, "the silent worker gone")
        restarted = answers_until(
            running,
            namespace,
            lambda seen: any(name.startswith("0/") for name in seen),
            timeout=60,
            resets=[],  # the stopped worker's queued connections are reset when it is killed
        )
        assert f"0/{pids['0']}" not in restarted, restarted
        assert metric(running, "imagegate_worker_restarts_total") == 1.0
