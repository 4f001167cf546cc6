"""Resident memory (VmRSS) and ready time of a real `imagegate run`, against the test bed.

Starts the test bed's etcd + kube-apiserver on 127.0.0.1, applies the twenty benchmark policies
and one policy that requires a cosign key signature (so the key-verification path is wired, as
in a cluster that uses keys), and runs `imagegate run` as its own process. Then reads the
process's VmRSS from /proc:
- at ready (the first 200 from /readyz), with the time from exec to ready;
- holding IDLE_CONNECTIONS TLS connections, each of which sent one /validate and stays open
  (the server keeps at most `ConnectionBounds.max_connections` of them);
- every few seconds during LOAD_SECONDS of LOAD_CONNECTIONS concurrent keep-alive connections
  sending /validate back to back, and SETTLE_SECONDS after the load stopped (is it given back?).
The clients run in a process of their own. Each figure is printed with the machine it ran on.

    .venv/bin/python bench/memory.py                 # the whole run, about 2 min
    .venv/bin/python bench/memory.py --ready-only    # ready time and RSS at ready, 3 starts
    .venv/bin/python bench/memory.py --imports       # what importing the run path costs
    MALLOC_ARENA_MAX=2 .venv/bin/python bench/memory.py   # the server inherits the environment
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).parent))

from common import (
    POD,
    descendants,
    machine,
    process_name,
    pss_uss_mib,
    review_body,
    twenty_policy_documents,
)

from imagegate.cluster import kube, policies
from imagegate.policy import model
from imagegate.testbed import build, local
from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries

IDLE_CONNECTIONS = 2000
LOAD_CONNECTIONS = 500
LOAD_SECONDS = 60.0
SETTLE_SECONDS = 30.0
SAMPLE_EVERY = 5.0
#: As the chart runs it (policyReports.enabled): the background scan writes PolicyReports.
OPERATOR_ARGS = ("--policy-reports",)
POLICY_REPORT_CRD = (
    Path(__file__).resolve().parents[1]
    / "charts"
    / "imagegate"
    / "extra-crds"
    / "wgpolicyk8s.io_policyreports.yaml"
)


def status_kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM, RssAnon)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def key_policy() -> dict[str, Any]:
    """A policy requiring a cosign key signature (a fresh P-256 key: no image is signed by it)."""
    public = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return {
        "apiVersion": f"{model.GROUP}/{model.VERSION}",
        "kind": model.CLUSTER_KIND,
        "metadata": {"name": "signed-by-key"},
        "spec": {
            "sources": [
                {
                    "name": "signed",
                    "images": ["registry.invalid/signed/**"],
                    "signatures": {"keys": [{"publicKey": public}]},
                },
                # Every policy applies to every image: this one trusts the benchmark Pod's too.
                {"name": "others", "images": ["cgr.dev/**", "docker.io/**"]},
            ]
        },
    }


def apply_policies(plane: ControlPlane) -> None:
    from kubernetes import client

    api = kube.api_client(plane.kubeconfig)
    local.install_crds(api, extra=[yaml.safe_load(POLICY_REPORT_CRD.read_text())])
    # The namespace the reviews name, labelled as the policies' selectors expect.
    client.CoreV1Api(api).create_namespace(
        {"metadata": {"name": "shop", "labels": {"tier": "prod"}}}
    )
    objects = client.CustomObjectsApi(api)
    plural = policies.PLURALS[model.CLUSTER_KIND]
    for document in [*twenty_policy_documents(), key_policy()]:
        objects.create_cluster_custom_object(model.GROUP, model.VERSION, plural, document)


# -- the clients, in their own process ------------------------------------------------------------


async def post(session: aiohttp.ClientSession, url: str, context: ssl.SSLContext, uid: int) -> None:
    async with session.post(
        url, data=review_body(uid, POD), ssl=context, headers={"Content-Type": "application/json"}
    ) as reply:
        answer = await reply.json()
    if answer["response"]["allowed"] is not True:
        raise NotAdmitted(f"not admitted: {answer}")


class NotAdmitted(Exception):
    pass


async def idle_clients(url: str, cafile: str, count: int) -> None:
    """`count` connections, each with one request answered, held open until stdin closes."""
    context = ssl.create_default_context(cafile=cafile)
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=3600))
        for _ in range(count)
    ]
    failed, first_error = 0, ""
    for start in range(0, count, 100):  # in batches: the handshakes would time out all at once
        results = await asyncio.gather(
            *(post(sessions[n], url, context, n) for n in range(start, min(start + 100, count))),
            return_exceptions=True,
        )
        errors = [repr(result) for result in results if isinstance(result, BaseException)]
        failed += len(errors)
        first_error = first_error or (errors[0] if errors else "")
    print(json.dumps({"opened": count, "failed": failed, "error": first_error}), flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        for session in sessions:
            await session.close()


async def load_clients(url: str, cafile: str, connections: int, seconds: float) -> None:
    """`connections` keep-alive connections sending back to back for `seconds`."""
    context = ssl.create_default_context(cafile=cafile)
    done, errors = 0, 0
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one_connection(offset: int) -> None:
            nonlocal done, errors
            uid = offset * 1_000_000
            while time.monotonic() < deadline:
                uid += 1
                try:
                    await post(session, url, context, uid)
                    done += 1
                except (TimeoutError, aiohttp.ClientError, NotAdmitted):
                    # The server closes connections past its bounds (count, age, limit).
                    errors += 1

        await asyncio.gather(*(one_connection(n) for n in range(connections)))
    print(json.dumps({"requests": done, "errors": errors, "seconds": seconds}), flush=True)


# -- the measurement ------------------------------------------------------------------------------


async def measure_idle(pid: int, url: str, cafile: Path) -> tuple[float, dict[str, Any]]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "idle-clients",
        url,
        str(cafile),
        str(IDLE_CONNECTIONS),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    line = await asyncio.wait_for(child.stdout.readline(), 300)
    await asyncio.sleep(2)  # let the server settle (closing what exceeds its connection limit)
    held = rss_mib(pid)
    child.stdin.close()
    await asyncio.wait_for(child.wait(), 60)
    return held, json.loads(line)


async def measure_load(pid: int, url: str, cafile: Path) -> tuple[list[float], dict[str, Any]]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "load-clients",
        url,
        str(cafile),
        str(LOAD_CONNECTIONS),
        str(LOAD_SECONDS),
        stdout=asyncio.subprocess.PIPE,
    )
    samples = []
    while child.returncode is None:
        try:
            await asyncio.wait_for(child.wait(), SAMPLE_EVERY)
        except TimeoutError:
            samples.append(rss_mib(pid))
            PSS_PEAK[0] = max(PSS_PEAK[0], pss_uss_mib(pid)[0])
    assert child.stdout is not None
    output = await child.stdout.read()
    if child.returncode != 0:
        raise SystemExit(f"load clients exited {child.returncode}")
    return samples, json.loads(output)


#: The serving process's highest PSS during the load (the scan process shares its imports).
PSS_PEAK = [0.0]


def tree_memory(pid: int) -> str:
    """PSS and USS of the serving process and the processes below it (zygote, scan)."""
    parts = []
    for each in [pid, *descendants(pid)]:
        pss, uss = pss_uss_mib(each)
        name = "operator" if each == pid else process_name(each)
        parts.append(f"{name} PSS {pss:.0f} USS {uss:.0f}")
    return "; ".join(parts) + " MiB"


def run_whole(plane: ControlPlane, workdir: Path) -> None:
    started = time.monotonic()
    with local.operator_process(
        plane.kubeconfig, workdir / "operator", extra_args=OPERATOR_ARGS
    ) as running:
        ready = time.monotonic() - started
        pid = running.process.pid
        assert pid is not None
        at_ready = rss_mib(pid)
        print(f"ready in {ready:.2f} s; RSS at ready {at_ready:.1f} MiB; {tree_memory(pid)}")
        cafile = workdir / "ca.crt"
        cafile.write_bytes(running.ca_pem)
        url = running.url + "/validate"
        time.sleep(5)
        print(f"RSS idle 5 s after ready {rss_mib(pid):.1f} MiB")
        held, opened = asyncio.run(measure_idle(pid, url, cafile))
        print(
            f"RSS with {IDLE_CONNECTIONS} idle TLS connections opened "
            f"({opened['failed']} failed {opened['error'][:200]}): {held:.1f} MiB"
        )
        samples, load = asyncio.run(measure_load(pid, url, cafile))
        print(
            f"RSS during {LOAD_SECONDS:.0f} s at {LOAD_CONNECTIONS} connections "
            f"({load['requests'] / LOAD_SECONDS:,.0f} req/s, {load['errors']} client errors): "
            f"max {max(samples):.1f} MiB, at the end {samples[-1]:.1f} MiB; peak (VmHWM) "
            f"{status_kib(pid, 'VmHWM') / 1024:.1f} MiB; PSS max {PSS_PEAK[0]:.1f} MiB; "
            f"{tree_memory(pid)}"
        )
        time.sleep(SETTLE_SECONDS)
        print(f"RSS {SETTLE_SECONDS:.0f} s after the load: {rss_mib(pid):.1f} MiB")


#: What `imagegate run` imports before it starts, then what each top-level package costs.
IMPORT_PROBE = """
import collections, json, sys
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])
before = rss()
from imagegate.commands import cli
from imagegate.admission import server
from imagegate.cluster import operator
from imagegate.trail import logs
packages = collections.Counter(name.split('.')[0] for name in sys.modules)
print(json.dumps({"kib": rss() - before, "total_kib": rss(), "modules": len(sys.modules),
                  "packages": packages.most_common(12)}))
"""


def run_imports() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True
    )
    found = json.loads(done.stdout)
    print(
        f"importing what `imagegate run` imports: {found['kib'] / 1024:.1f} MiB "
        f"(RSS {found['total_kib'] / 1024:.1f} MiB), {found['modules']} modules; most by package: "
        + ", ".join(f"{name} {count}" for name, count in found["packages"])
    )


def run_ready_only(plane: ControlPlane, workdir: Path, starts: int) -> None:
    for n in range(starts):
        started = time.monotonic()
        with local.operator_process(
            plane.kubeconfig, workdir / f"operator-{n}", extra_args=OPERATOR_ARGS
        ) as running:
            ready = time.monotonic() - started
            pid = running.process.pid
            assert pid is not None
            print(f"start {n + 1}: ready in {ready:.2f} s; RSS at ready {rss_mib(pid):.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ready-only", action="store_true", help="only ready time and RSS")
    parser.add_argument("--starts", type=int, default=3, help="with --ready-only")
    parser.add_argument("--imports", action="store_true", help="only the cost of the imports")
    args = parser.parse_args()
    if args.imports:
        run_imports()
        return
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        plane = ControlPlane(ControlPlaneBinaries.resolve(build.Builder()), workdir / "cp")
        plane.start()
        try:
            apply_policies(plane)
            if args.ready_only:
                run_ready_only(plane, workdir, args.starts)
            else:
                run_whole(plane, workdir)
        finally:
            plane.stop()
    arena = os.environ.get("MALLOC_ARENA_MAX", "glibc default")
    print(
        f"21 policies (one with a cosign key), --policy-reports; MALLOC_ARENA_MAX={arena}; "
        f"{machine()}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["idle-clients"]:
        url, cafile, count = sys.argv[2:]
        asyncio.run(idle_clients(url, cafile, int(count)))
    elif sys.argv[1:2] == ["load-clients"]:
        url, cafile, connections, seconds = sys.argv[2:]
        asyncio.run(load_clients(url, cafile, int(connections), float(seconds)))
    else:
        main()
