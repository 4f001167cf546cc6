"""Background scan through the running operator: workloads that existed before a policy show up
as violations in a PolicyReport once the policy is applied, follow its edits, and go with it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import itertools
import json
import os
import signal
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from imagegate.cluster import kube, policies, resources, scanning
from imagegate.commands import audit as trail
from imagegate.commands import migrate
from imagegate.policy import engine, model
from imagegate.policy.compile import compile_policy
from imagegate.registry import mirrors
from imagegate.testbed import build, local
from imagegate.trail import inventory, reports, scan
from support import Cluster

from .conftest import PolicyFactory, control_plane_of_own, install_crds
from .test_admission import CHAINGUARD, pod_body, workload

pytestmark = pytest.mark.controlplane


def report(api: client.ApiClient, namespace: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
            reports.GROUP, reports.VERSION, namespace, reports.PLURAL, reports.REPORT_NAME
        )
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def test_existing_workloads_are_reported_after_a_policy_is_applied(
    api: client.ApiClient,
    cluster: Cluster,
    operator: local.LocalOperator,
    namespace: str,
    image_policy: PolicyFactory,
) -> None:
    """`namespace` is not sent to the webhooks: these objects were admitted by nobody."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    _, deployment = workload("Deployment", "nginx:1.25")
    deployment["metadata"] = {"name": "web"}
    apps.create_namespaced_deployment(namespace, deployment)
    core.create_namespaced_pod(namespace, pod_body("cache", "redis:7"))
    core.create_namespaced_pod(namespace, pod_body("tools", "cgr.dev/chainguard/busybox:latest"))
    # A Pod a ReplicaSet controls is reported on its owner, not again on its own.
    owned = pod_body("web-abc", "nginx:1.25")
    owned["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web-1",
            "uid": "00000000-0000-0000-0000-000000000001",
            "controller": True,
        }
    ]
    core.create_namespaced_pod(namespace, owned)
    assert report(api, namespace) is None

    image_policy(namespace, "hardened", {"sources": [CHAINGUARD]})
    found = wait_for(lambda: report(api, namespace), "PolicyReport after the policy")
    rows = {
        (r["resources"][0]["kind"], r["resources"][0]["name"]): (r["result"], r["policy"])
        for r in found["results"]
    }
    policy_name = f"{namespace}/hardened"
    assert rows == {
        ("Deployment", "web"): ("fail", policy_name),
        ("Pod", "cache"): ("fail", policy_name),
        ("Pod", "tools"): ("pass", policy_name),
    }
    assert found["summary"]["fail"] == 2
    assert "nginx:1.25" in next(
        r["message"] for r in found["results"] if r["resources"][0]["name"] == "web"
    )

    out = io.StringIO()
    trail.run(
        kubeconfig=cluster.kubeconfig,
        since="1h",
        namespace=namespace,
        policy=None,
        output="json",
        reports=True,
        out=out,
    )
    violations = json.loads(out.getvalue())["violations"]
    assert sorted((v["object"], v["result"], v["image"]) for v in violations) == [
        ("Deployment/web", "fail", "nginx:1.25"),
        ("Pod/cache", "fail", "redis:7"),
    ]

    policies = resources.PolicyResources(api)
    current = policies.get(namespace, "hardened")
    current["spec"]["mode"] = "warn"
    client.CustomObjectsApi(api).replace_namespaced_custom_object(
        "imagegate.dev", "v1alpha1", namespace, "imagepolicies", "hardened", current
    )
    wait_for(
        lambda: (report(api, namespace) or {}).get("summary", {}).get("warn") == 2,
        "warn results after the policy moved to warn",
    )

    policies.delete(namespace, "hardened")
    wait_for(lambda: report(api, namespace) is None, "report deleted with the policy")


def test_a_rewritable_image_is_reported_rewritten_and_migrate_plans_from_the_report(
    api: client.ApiClient,
    cluster: Cluster,
    operator: local.LocalOperator,
    namespace: str,
    image_policy: PolicyFactory,
) -> None:
    """design.md §10: the scan writes the suggestion into the report; `imagegate migrate
    --cluster` reads it back into a plan."""
    _, deployment = workload("Deployment", "python:3.12")
    deployment["metadata"] = {"name": "web"}
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment)
    image_policy(
        namespace,
        "hardened",
        {"sources": [CHAINGUARD], "rewrites": [{"catalog": "chainguard", "allowLatestOnly": True}]},
    )
    found = wait_for(lambda: report(api, namespace), "PolicyReport after the policy")
    [row] = found["results"]
    assert row["result"] == "warn"
    assert row["message"].startswith("rewritten: container 'app' image 'python:3.12' is rewritten")
    assert row["properties"]["suggestion"] == "cgr.dev/chainguard/python:latest"
    assert row["properties"]["droppedVersion"] == "3.12"

    out = io.StringIO()
    assert (
        migrate.run(
            [],
            cluster=True,
            kubeconfig=cluster.kubeconfig,
            namespace=namespace,
            output="json",
            stdout=out,
        )
        == 0
    )
    [planned] = json.loads(out.getvalue())["workloads"]
    assert (planned["kind"], planned["name"], planned["namespace"]) == (
        "Deployment",
        "web",
        namespace,
    )
    assert planned["images"][0]["target"] == "cgr.dev/chainguard/python:latest"
    assert planned["images"][0]["droppedVersion"] == "3.12"
    assert planned["kubectl"] == (
        f"kubectl set image -n {namespace} deployment/web app=cgr.dev/chainguard/python:latest"
    )


class _Policies:
    def __init__(self, *policies: engine.CompiledPolicy) -> None:
        self._policies = policies

    def policies(self) -> Sequence[engine.CompiledPolicy]:
        return self._policies

    async def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return {}


class _BrokenVerifier:
    """Fault injection: a verifier with a bug (the real one never raises)."""

    async def verify(
        self, checks: Sequence[engine.SignatureCheck], deadline: float, keychain: Any = None
    ) -> Mapping[engine.SignatureCheck, engine.SignatureVerdict]:
        raise RuntimeError("verifier broke")


def _policy(namespace: str, spec: dict[str, Any]) -> engine.CompiledPolicy:
    return compile_policy(
        model.parse_policy_document(
            {
                "apiVersion": "imagegate.dev/v1alpha1",
                "kind": "ImagePolicy",
                "metadata": {"name": "p", "namespace": namespace},
                "spec": spec,
            }
        )
    )


@pytest.fixture(scope="module")
def scanner_api(
    builder: build.Builder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[client.ApiClient]:
    """An API server for the scanners these tests run in-process, of this module's own. The
    session's operator scans too (`--policy-reports`), and a complete scan deletes the reports
    of namespaces it has no policy for: each would delete the other's."""
    with control_plane_of_own(builder, tmp_path_factory.mktemp("scan-plane")) as plane:
        api = kube.api_client(plane.kubeconfig)
        install_crds(api)
        yield api


async def test_one_object_that_cannot_be_judged_costs_no_other_report(
    scanner_api: client.ApiClient,
) -> None:
    """The scanner on its own, against the real API server: a verifier failure on one object
    is an `error` row in that namespace's report, and every other report is still written."""
    core = client.CoreV1Api(scanner_api)
    signed, plain = (f"scan-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for name in (signed, plain):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        core.create_namespaced_pod(name, pod_body("app", "ghcr.io/acme/api:1"))
    try:
        keyless = {"keyless": [{"issuer": "https://issuer.example", "subject": "someone"}]}
        scanner = scan.PolicyReportScanner(
            scanner_api,
            _Policies(
                _policy(
                    signed,
                    {
                        "sources": [
                            {"name": "team", "images": ["ghcr.io/**"], "signatures": keyless}
                        ]
                    },
                ),
                _policy(plain, {"sources": [{"name": "cg", "images": ["cgr.dev/**"]}]}),
            ),
            _BrokenVerifier(),
        )
        summary = await scanner.scan_once()
        assert {signed, plain} <= set(summary.written)
        [error_row] = (report(scanner_api, signed) or {})["results"]
        assert error_row["result"] == "error"
        assert "verifier broke" in error_row["message"]
        assert [r["result"] for r in (report(scanner_api, plain) or {})["results"]] == ["fail"]
    finally:
        for name in (signed, plain):
            core.delete_namespace(name)


LIST_PLURALS = {plural for _, plural in reports.SCANNED.values()}


def replace_report(
    api: client.ApiClient, namespace: str, body: dict[str, Any], manager: str
) -> None:
    """Write a report as someone else would (`kubectl edit`, or a forger claiming `manager`)."""
    client.CustomObjectsApi(api).replace_namespaced_custom_object(
        reports.GROUP,
        reports.VERSION,
        namespace,
        reports.PLURAL,
        reports.REPORT_NAME,
        body,
        field_manager=manager,
    )


def _namespace_with_pods(api: client.ApiClient, count: int, image: str) -> str:
    core = client.CoreV1Api(api)
    name = f"scan-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda n: core.create_namespaced_pod(name, pod_body(f"app-{n:04d}", image)),
                range(count),
            )
        )
    return name


async def test_the_scan_lists_in_pages_and_follows_continue_tokens(
    scanner_api: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kind is read PAGE_SIZE objects at a time, never as one whole LIST, and every page
    counts: all the namespace's Pods are in its report."""
    monkeypatch.setattr(inventory, "PAGE_SIZE", 2)
    namespace = _namespace_with_pods(scanner_api, 5, "ghcr.io/acme/api:1")
    requests: list[tuple[str, dict[str, str]]] = []
    call_api = scanner_api.call_api

    def recording(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urllib.parse.urlsplit(url)
        requests.append((parts.path, dict(urllib.parse.parse_qsl(parts.query))))
        return call_api(method, url, *args, **kwargs)

    monkeypatch.setattr(scanner_api, "call_api", recording)
    rests: list[float] = []

    async def resting(seconds: float) -> None:
        rests.append(seconds)

    try:
        scanner = scan.PolicyReportScanner(
            scanner_api,
            _Policies(_policy(namespace, {"sources": [CHAINGUARD]})),
            pace=scan.Pace(0.5, sleep=resting),
        )
        summary = await scanner.scan_once()
        assert summary.complete
        names = {
            r["resources"][0]["name"] for r in (report(scanner_api, namespace) or {})["results"]
        }
        assert names == {f"app-{n:04d}" for n in range(5)}
        pod_lists = [query for path, query in requests if path == "/api/v1/pods"]
        assert len(pod_lists) >= 3  # at least 5 Pods, 2 a page
        assert all(query.get("limit") == "2" for query in pod_lists)
        assert "continue" not in pod_lists[0]
        assert all(query.get("continue") for query in pod_lists[1:])
        # The scan rests after every page it reads (of every kind) and every report it writes.
        lists = [path for path, _ in requests if path.rpartition("/")[2] in LIST_PLURALS]
        assert len(rests) >= len(lists) + len(summary.written)
        assert all(r > 0 for r in rests)
    finally:
        client.CoreV1Api(scanner_api).delete_namespace(namespace)


async def test_a_report_that_would_say_the_same_is_not_written_again(
    scanner_api: client.ApiClient,
) -> None:
    """design.md §14: a scan that finds what the stored report says leaves it alone (its
    resourceVersion does not move); a new finding, or an edit by anyone else, is written."""
    namespace = _namespace_with_pods(scanner_api, 3, "ghcr.io/acme/api:1")
    try:
        scanner = scan.PolicyReportScanner(
            scanner_api, _Policies(_policy(namespace, {"sources": [CHAINGUARD]}))
        )
        first = await scanner.scan_once()
        assert namespace in first.written
        stored = report(scanner_api, namespace) or {}
        version = stored["metadata"]["resourceVersion"]

        again = await scanner.scan_once()
        assert namespace in again.unchanged
        assert namespace not in again.written
        assert (report(scanner_api, namespace) or {})["metadata"]["resourceVersion"] == version

        # Someone rewrites a row by hand (another field manager): the next scan puts it back.
        stored["results"][0]["message"] = "all fine here"
        replace_report(scanner_api, namespace, stored, "kubectl-edit")
        restored = await scanner.scan_once()
        assert namespace in restored.written
        messages = [r["message"] for r in (report(scanner_api, namespace) or {})["results"]]
        assert "all fine here" not in messages
        assert len(messages) == 3

        # A new finding: a fourth Pod is a fourth row.
        client.CoreV1Api(scanner_api).create_namespaced_pod(
            namespace, pod_body("app-new", "ghcr.io/acme/api:2")
        )
        found = await scanner.scan_once()
        assert namespace in found.written
        assert len((report(scanner_api, namespace) or {})["results"]) == 4
    finally:
        client.CoreV1Api(scanner_api).delete_namespace(namespace)


async def test_a_forged_report_lives_no_longer_than_rewrite_every(
    scanner_api: client.ApiClient,
) -> None:
    """design.md §14: whoever may write PolicyReports can keep the digest and claim the scan's
    field manager. Such a forgery is left alone only until REWRITE_EVERY has passed since this
    scanner last wrote the report, and a scanner that never wrote it (a new scan process)
    writes it at once."""
    namespace = _namespace_with_pods(scanner_api, 2, "ghcr.io/acme/api:1")
    now = [1000.0]
    policies = _Policies(_policy(namespace, {"sources": [CHAINGUARD]}))
    try:
        scanner = scan.PolicyReportScanner(
            scanner_api, policies, rewrite_every=600.0, monotonic=lambda: now[0]
        )
        assert namespace in (await scanner.scan_once()).written

        def forge() -> None:
            forged = report(scanner_api, namespace) or {}
            for row in forged["results"]:
                row["result"], row["message"] = "pass", "all fine here"
            replace_report(scanner_api, namespace, forged, reports.FIELD_MANAGER)

        def messages() -> set[str]:
            return {r["message"] for r in (report(scanner_api, namespace) or {})["results"]}

        forge()
        now[0] += 599.0  # within the window the digest is believed: the known weakness
        assert namespace in (await scanner.scan_once()).unchanged
        assert messages() == {"all fine here"}

        now[0] += 1.0
        rewritten = await scanner.scan_once()
        assert namespace in rewritten.written
        assert "all fine here" not in messages()
        now[0] += 1.0
        assert namespace in (await scanner.scan_once()).unchanged  # and trusted again

        forge()
        assert messages() == {"all fine here"}
        fresh = scan.PolicyReportScanner(scanner_api, policies, monotonic=lambda: now[0])
        assert namespace in (await fresh.scan_once()).written
        assert "all fine here" not in messages()
    finally:
        client.CoreV1Api(scanner_api).delete_namespace(namespace)


class _CountingVerifier:
    """A verifier whose verdict the test sets: the signature passes until it is revoked."""

    def __init__(self) -> None:
        self.calls = 0
        self.verified = True

    async def verify(
        self, checks: Sequence[engine.SignatureCheck], deadline: float, keychain: Any = None
    ) -> Mapping[engine.SignatureCheck, engine.SignatureVerdict]:
        self.calls += 1
        reason = "" if self.verified else "no signature found"
        return {check: engine.SignatureVerdict(self.verified, reason) for check in checks}


async def test_a_namespace_where_nothing_changed_is_not_judged_again(
    scanner_api: client.ApiClient,
) -> None:
    """design.md §14: with the same object versions under the same compiled policies, none
    asking for a signature, a namespace whose stored report still says what was found is not
    judged again. Any change judges it again: an object, a policy, the report, a signature
    policy's verdict (which expires, so such a namespace is always judged)."""
    static = _namespace_with_pods(scanner_api, 3, "ghcr.io/acme/api:1")
    signed = _namespace_with_pods(scanner_api, 1, "ghcr.io/acme/api:1")
    core = client.CoreV1Api(scanner_api)
    keyless = {"keyless": [{"issuer": "https://issuer.example", "subject": "someone"}]}
    static_policy = _policy(static, {"sources": [CHAINGUARD]})
    signed_policy = _policy(
        signed, {"sources": [{"name": "team", "images": ["ghcr.io/**"], "signatures": keyless}]}
    )
    policies = _Policies(static_policy, signed_policy)
    verifier = _CountingVerifier()
    scanner = scan.PolicyReportScanner(scanner_api, policies, verifier)

    def results(namespace: str) -> list[str]:
        return sorted(r["result"] for r in (report(scanner_api, namespace) or {})["results"])

    try:
        first = await scanner.scan_once()
        assert {static, signed} <= set(first.written)
        assert first.reused == []
        assert (results(static), results(signed)) == (["fail"] * 3, ["pass"])

        again = await scanner.scan_once()
        assert static in again.reused
        assert signed not in again.reused  # judged again: its verdict may have changed
        assert verifier.calls == 2
        assert again.counts == first.counts  # what was not judged still counts

        verifier.verified = False  # the signature is gone: only judging again can see it
        assert signed in (await scanner.scan_once()).written
        assert results(signed) == ["fail"]

        # An object changes: its namespace is judged again, and the report says so.
        core.patch_namespaced_pod(
            "app-0000",
            static,
            {"spec": {"containers": [{"name": "app", "image": "cgr.dev/chainguard/nginx:1"}]}},
        )
        changed = await scanner.scan_once()
        assert static in changed.written
        assert results(static) == ["fail", "fail", "pass"]
        assert static in (await scanner.scan_once()).reused

        # A policy changes (a new compiled policy, the same name): judged against it.
        everything = {"name": "all", "images": ["**"]}
        policies._policies = (_policy(static, {"sources": [everything]}), signed_policy)
        assert static in (await scanner.scan_once()).written
        assert results(static) == ["pass"] * 3
        assert static in (await scanner.scan_once()).reused

        # Someone edits the report: judged again and put back, not taken from memory.
        edited = report(scanner_api, static) or {}
        edited["results"] = edited["results"][:1]
        replace_report(scanner_api, static, edited, "kubectl-edit")
        restored = await scanner.scan_once()
        assert static in restored.written
        assert static not in restored.reused
        assert results(static) == ["pass"] * 3

        # Someone deletes it: written again.
        client.CustomObjectsApi(scanner_api).delete_namespaced_custom_object(
            reports.GROUP, reports.VERSION, static, reports.PLURAL, reports.REPORT_NAME
        )
        assert static in (await scanner.scan_once()).written
        assert results(static) == ["pass"] * 3
    finally:
        for name in (static, signed):
            core.delete_namespace(name)


class _LoopWatchingInventory(inventory.WorkloadInventory):
    """Records, for each object the scan reads and each it judges, how often a coroutine
    running beside the scan has had a turn of the event loop."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(api)
        self.turns = 0
        self.turns_reading: list[int] = []
        self.turns_judging: list[int] = []

    def objects(self) -> list[dict[str, Any]]:
        return [_Recorded(obj, self) for obj in super().objects()]


class _Recorded(dict[str, Any]):
    """An object that notes the loop's turns when the scan first looks at its metadata (to
    group it by namespace) and first reads its kind (to judge it)."""

    def __init__(self, obj: dict[str, Any], store: _LoopWatchingInventory) -> None:
        super().__init__(obj)
        self._store = store
        self._noted: set[str] = set()

    def _note(self, key: str, seen: list[int]) -> None:
        if key not in self._noted:
            self._noted.add(key)
            seen.append(self._store.turns)

    def __getitem__(self, key: str) -> Any:
        if key == "metadata":
            self._note(key, self._store.turns_reading)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key == "kind":
            self._note(key, self._store.turns_judging)
        return super().get(key, default)


async def test_the_scan_gives_the_event_loop_back_between_objects(
    scanner_api: client.ApiClient,
) -> None:
    """Whatever shares the scan's event loop (with `--workers` 2 or more, the operator's
    watches and the workers' feed) gets a turn every few objects, read or judged, however many
    objects there are."""
    judged = _namespace_with_pods(scanner_api, 150, "ghcr.io/acme/api:1")
    unscanned = _namespace_with_pods(scanner_api, 150, "ghcr.io/acme/api:1")  # no policy applies
    store = _LoopWatchingInventory(scanner_api)
    scanning = True

    async def neighbour() -> None:
        while scanning:
            store.turns += 1
            await asyncio.sleep(0)

    turning = asyncio.create_task(neighbour())
    try:
        scanner = scan.PolicyReportScanner(
            scanner_api, _Policies(_policy(judged, {"sources": [CHAINGUARD]})), store=store
        )
        summary = await scanner.scan_once()
    finally:
        scanning = False
        await turning
        for name in (judged, unscanned):
            client.CoreV1Api(scanner_api).delete_namespace(name)
    assert summary.objects >= 150
    for seen, what in ((store.turns_reading, "read"), (store.turns_judging, "judged")):
        assert len(seen) >= 150, what
        longest = max(len(list(run)) for _, run in itertools.groupby(seen))
        assert longest <= 10, f"{longest} objects {what} without another coroutine having a turn"


def _scan_processes(operator_pid: int) -> list[int]:
    """The operator's children that multiprocessing spawned (not its resource tracker)."""
    children: list[str] = []
    for task in Path(f"/proc/{operator_pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            children += (task / "children").read_text().split()
    spawned = []
    for child in children:
        with contextlib.suppress(OSError):  # exited meanwhile
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                spawned.append(int(child))
    return spawned


def test_the_scan_runs_in_a_process_of_its_own_started_again_when_it_dies(
    api: client.ApiClient,
    operator: local.LocalOperator,
    namespace: str,
    image_policy: PolicyFactory,
) -> None:
    """design.md §14: `imagegate run` (one serving process) scans in a child process, never on
    the loop that serves admission, whose threads all run SCHED_IDLE (only on CPU serving leaves
    idle); a child that dies is replaced, and the new one reports."""
    assert operator.process.pid is not None
    [first] = wait_for(lambda: _scan_processes(operator.process.pid or 0), "the scan process")
    assert _policies_of_threads(first) == {os.SCHED_IDLE}
    os.kill(first, signal.SIGKILL)
    [second] = wait_for(
        lambda: [pid for pid in _scan_processes(operator.process.pid or 0) if pid != first],
        "a scan process started again",
    )
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod_body("cache", "redis:7"))
    image_policy(namespace, "hardened", {"sources": [CHAINGUARD]})
    found = wait_for(lambda: report(api, namespace), "PolicyReport from the new scan process")
    assert [r["result"] for r in found["results"]] == ["fail"]
    assert _scan_processes(operator.process.pid) == [second]
    threads = _policies_of_threads(second)
    assert threads == {os.SCHED_IDLE}  # its scan's threads too (to_thread's, the API client's)


def _policies_of_threads(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that has exited since
            found.add(os.sched_getscheduler(int(task.name)))
    return found


async def test_the_scan_process_scans_off_this_process_and_follows_the_cache(
    api: client.ApiClient, cluster: Cluster, crds: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ScanProcess` as operator.py runs it, fed a `PolicyCache`: the reports are written by
    another process (a scan here would fail the test), and a policy changed in the cache
    reaches that process and is scanned again."""

    async def not_here(self: scan.PolicyReportScanner) -> scan.ScanSummary:
        raise AssertionError("the scan ran in the serving process")

    monkeypatch.setattr(scan.PolicyReportScanner, "scan_once", not_here)
    namespace = _namespace_with_pods(api, 3, "ghcr.io/acme/api:1")
    cache = policies.PolicyCache(api)
    key = (namespace, "p")
    cache.set_policy(key, _policy(namespace, {"sources": [CHAINGUARD]}))
    scans: list[scanning.Scanned] = []
    settings = scanning.ScanSettings(
        kubeconfig=cluster.kubeconfig,
        namespace="imagegate-system",
        interval=3600.0,
        insecure_registries=frozenset(),
        registry_mirrors=mirrors.NO_MIRRORS,
        stale_digest_ttl=60.0,
        material_ttl=60.0,
        material_stale_for=60.0,
    )
    scan_process = scanning.ScanProcess(settings, cache, on_scanned=scans.append)
    running = asyncio.create_task(scan_process.run())

    async def reported(result: str) -> list[str]:
        for _ in range(300):
            found = await asyncio.to_thread(report, api, namespace)
            rows = [r["result"] for r in (found or {}).get("results", [])]
            if rows and set(rows) == {result}:
                return rows
            await asyncio.sleep(0.2)
        pytest.fail(f"no {result} rows in {namespace}'s report")

    try:
        assert await reported("fail") == ["fail"] * 3
        cache.set_policy(key, _policy(namespace, {"mode": "warn", "sources": [CHAINGUARD]}))
        scan_process.trigger()
        assert await reported("warn") == ["warn"] * 3
        child = scan_process.process
        assert child is not None
        assert scans, "the scan process reported no scan"
        assert {s.pid for s in scans} == {child.pid}
        assert child.pid != os.getpid()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        client.CoreV1Api(api).delete_namespace(namespace)
    assert child.exitcode is not None  # stopped with the task
