"""Where `imagegate run`'s start-up time goes: a timeline from exec to the first 200 of /readyz.

Starts the test bed's etcd + kube-apiserver on 127.0.0.1 with what bench/memory.py applies (the
twenty benchmark policies and one with a cosign key; `--policy-reports`, as the chart runs it),
then starts `imagegate run` RUNS times, each a fresh process, and prints for each phase the
seconds since exec (median over the runs), the total, and the process's CPU seconds and RSS at
ready. The serving certificate is made before the clock starts. A first start, which writes
the policies' status, is made before and not counted.

Bytecode: the container image ships every module compiled (Dockerfile: UV_COMPILE_BYTECODE=1;
its root filesystem is read-only, so nothing could be written at run time). `--bytecode image`
(the default) does the same: each side's modules are compiled once, by an uncounted start, into
a private PYTHONPYCACHEPREFIX. `--bytecode as-is` keeps the environment's own setting: with
PYTHONDONTWRITEBYTECODE=1 and a venv that `uv sync` made without bytecode (as in this repo's dev
set-up), every start compiles every module from source, about 1.2 s of CPU on this machine that
no deployed replica pays (design.md §11).

The process is `imagegate run` itself (`cli.main`), started through this file's `child` mode,
which wraps a few functions (no behaviour changes) to note when each phase is reached:

    imports        the run path's modules are imported (interpreter start-up included), as
                   `run` configures logging
    kopf.run       kopf is entered (the API client made, handlers registered)
    login          kopf's login handler is called
    startup        imagegate's start-up handler begins (kopf has made its settings)
    policies       policies listed and compiled (PolicyWatch.load)
    certificates   serving certificates in hand
    webhook        the webhook server listens
    list <plural>  kopf's initial list of a watched resource is done
    ready          /readyz answers 200 (polled every 5 ms from here)

    .venv/bin/python bench/startup.py             # 5 starts
    .venv/bin/python bench/startup.py --runs 9
    .venv/bin/python bench/startup.py --first-starts   # each start writes the policies' status
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

#: Where the child writes its phases (one JSON line each: phase, wall-clock time, CPU seconds).
PHASES_FILE = "IMAGEGATE_BENCH_PHASES"


def child(argv: list[str]) -> int:
    """`imagegate run argv...`, noting the time each phase is reached in $IMAGEGATE_BENCH_PHASES."""
    phases = open(os.environ[PHASES_FILE], "a", buffering=1)  # noqa: SIM115 (open for the run)

    def note(phase: str) -> None:
        phases.write(json.dumps([phase, time.time(), time.process_time()]) + "\n")

    from imagegate.commands import cli
    from imagegate.trail import logs

    configure = logs.configure

    def imported(*args: Any, **kwargs: Any) -> None:
        # `run` configures logging right after its imports: note them, then wrap the rest.
        note("imports")
        wrap_phases(note)
        configure(*args, **kwargs)

    logs.configure = imported
    return cli.main(["run", *argv])


def wrap_phases(note: Callable[[str], None]) -> None:
    """Wrap what `run` calls later so that it notes each phase (imported by now)."""
    import kopf
    from kopf._cogs.clients import fetching

    from imagegate.admission import server
    from imagegate.cluster import operator, policies

    def after(owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = await original(*args, **kwargs)
            note(phase)
            return result

        setattr(owner, name, wrapped)

    def before(owner: Any, name: str, phase: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            note(phase)
            return original(*args, **kwargs)

        setattr(owner, name, wrapped)

    before(kopf, "run", "kopf.run")
    before(kopf, "login_with_kubeconfig", "login")
    before(operator, "_attempt_start", "startup")
    after(policies.PolicyWatch, "load", "policies")
    after(operator, "_certificates", "certificates")
    after(server.WebhookServer, "start", "webhook")
    listing = fetching.fetch_objs

    async def noted_listing(*, resource: Any, **kwargs: Any) -> Any:
        async for chunk in listing(resource=resource, **kwargs):
            yield chunk
        note(f"list {resource.plural}")

    fetching.fetch_objs = noted_listing  # type: ignore[assignment]


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    sys.exit(child(sys.argv[2:]))

# -- the parent: nothing above is imported before the child's clock starts -----------------------

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

PHASE_ORDER = (
    "imports",
    "kopf.run",
    "login",
    "startup",
    "policies",
    "certificates",
    "webhook",
    "list namespaces",
    "list clusterimagepolicies",
    "list imagepolicies",
    "ready",
)
POLL_INTERVAL = 0.005
START_TIMEOUT = 60.0


def ready(health_url: str) -> bool:
    try:
        with urllib.request.urlopen(health_url + "/readyz", timeout=1) as reply:
            return int(reply.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def child_env(bytecode: str, pycache: Path) -> dict[str, str]:
    """The children's environment: bytecode compiled once and kept, as in the image, or as-is."""
    env = dict(os.environ)
    if bytecode == "image":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def clear_status(kubeconfig: Path) -> None:
    """Every policy without a status, so the next start writes them all (`--first-starts`)."""
    from kubernetes import client

    from imagegate.cluster import kube, resources
    from imagegate.policy import model

    api = kube.api_client(kubeconfig)
    policies = resources.PolicyResources(api)
    objects = client.CustomObjectsApi(api)

    def listed() -> list[dict[str, Any]]:
        found = objects.list_cluster_custom_object(
            model.GROUP, model.VERSION, resources.CLUSTER_PLURAL
        )
        assert isinstance(found, dict)
        return list(found["items"])

    for item in listed():
        policies.patch_status(None, item["metadata"]["name"], {"status": None})
    if any(item.get("status") for item in listed()):
        raise SystemExit("--first-starts: a policy's status was not cleared")


def one_start(
    kubeconfig: Path, workdir: Path, source: Path | None, env: Mapping[str, str]
) -> dict[str, float]:
    """One `imagegate run`: each phase's seconds since exec, plus cpu and rss at ready."""
    from imagegate.cluster import tls
    from imagegate.testbed import processes

    workdir.mkdir(parents=True)
    pair = tls.CertificateAuthority.create("startup-ca").issue(
        "imagegate", ip_addresses=["127.0.0.1"]
    )
    (workdir / "tls.crt").write_bytes(pair.cert_pem)
    (workdir / "tls.key").write_bytes(pair.key_pem)
    phases_file = workdir / "phases.jsonl"
    health_port = processes.free_port()
    argv = [
        *("--kubeconfig", str(kubeconfig), "--host", "127.0.0.1"),
        *("--tls-cert", str(workdir / "tls.crt"), "--tls-key", str(workdir / "tls.key")),
        *("--port", str(processes.free_port()), "--health-port", str(health_port)),
        "--policy-reports",
    ]
    env = {**env, PHASES_FILE: str(phases_file), "PYTHONUNBUFFERED": "1"}
    if source is not None:  # ahead of the installed (editable) package on sys.path
        env["PYTHONPATH"] = str(source)
    with open(workdir / "operator.log", "wb") as log:
        started = time.time()
        process = subprocess.Popen(
            [sys.executable, __file__, "child", *argv], stdout=log, stderr=log, env=env
        )
        try:
            while not ready(f"http://127.0.0.1:{health_port}"):
                if process.poll() is not None or time.time() - started > START_TIMEOUT:
                    raise SystemExit(f"not ready: see {workdir / 'operator.log'}")
                time.sleep(POLL_INTERVAL)
            at_ready = time.time() - started
            found = {"cpu": cpu_seconds(process.pid), "rss": rss_mib(process.pid)}
        finally:
            process.terminate()
            process.wait(30)
    for line in phases_file.read_text().splitlines():
        phase, when, cpu = json.loads(line)
        found.setdefault(phase, when - started)  # a retried start-up: its first attempt
        found.setdefault(f"cpu {phase}", cpu)
    found["ready"] = at_ready
    found["cpu ready"] = found.pop("cpu")
    return found


def median(runs: list[dict[str, float]], key: str) -> str:
    values = [run[key] for run in runs if key in run]
    return f"{statistics.median(values):.2f}" if values else "-"


def print_timeline(runs: list[dict[str, float]]) -> None:
    """Medians: wall seconds since exec, and the process's CPU seconds by then (a shared
    machine stretches the first; the second is what start-up itself costs)."""
    print(f"{'phase':28} {'wall s':>7} {'CPU s':>7}   wall s of each run")
    for phase in PHASE_ORDER:
        each = " ".join(f"{run[phase]:.2f}" for run in runs if phase in run)
        print(f"{phase:28} {median(runs, phase):>7} {median(runs, 'cpu ' + phase):>7}   {each}")
    print(f"{'RSS at ready, MiB':28} {median(runs, 'rss'):>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a directory holding another imagegate package (e.g. `git archive main operator`"
        " unpacked: its operator/): its starts alternate with the installed one's",
    )
    parser.add_argument(
        "--bytecode",
        choices=["image", "as-is"],
        default="image",
        help="image: modules compiled once and kept, as the container image ships them"
        " (default); as-is: the environment's own PYTHONDONTWRITEBYTECODE and caches",
    )
    parser.add_argument(
        "--first-starts",
        action="store_true",
        help="clear every policy's status before each start, so each writes them (as a first"
        " start, or one after policy edits, does)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import memory
    from common import machine

    from imagegate.testbed import build
    from imagegate.testbed.controlplane import ControlPlane, ControlPlaneBinaries

    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        plane = ControlPlane(ControlPlaneBinaries.resolve(build.Builder()), workdir / "cp")
        plane.start()
        try:
            memory.apply_policies(plane)
            # The first start writes the policies' status (a second or more on a busy machine):
            # not counted, or whichever side starts first would pay it.
            env = child_env(args.bytecode, workdir / "pycache")
            first = one_start(plane.kubeconfig, workdir / "first", None, env)
            print(f"first start (writes the policies' status), not counted: {first['ready']:.2f} s")
            if args.baseline is not None and args.bytecode == "image":
                # The baseline's own first start: its modules compiled, not counted either.
                one_start(plane.kubeconfig, workdir / "base-first", args.baseline, env)
            runs: dict[str, list[dict[str, float]]] = {"installed": [], "baseline": []}
            for n in range(args.runs):
                if args.first_starts:
                    clear_status(plane.kubeconfig)
                installed = one_start(plane.kubeconfig, workdir / f"run-{n}", None, env)
                runs["installed"].append(installed)
                if args.baseline is not None:
                    base = workdir / f"base-{n}"
                    if args.first_starts:
                        clear_status(plane.kubeconfig)
                    runs["baseline"].append(one_start(plane.kubeconfig, base, args.baseline, env))
        finally:
            plane.stop()
    for name, timeline in runs.items():
        if timeline:
            print(f"-- {name}" + (f" ({args.baseline})" if name == "baseline" else ""))
            print_timeline(timeline)
    print(
        f"{args.runs} starts; 21 policies (one with a cosign key), --policy-reports;"
        f" bytecode {args.bytecode}{'; first starts' if args.first_starts else ''}; {machine()}"
    )


if __name__ == "__main__":
    main()
