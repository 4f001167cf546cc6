"""What a busy neighbour on its core costs a trivial webhook: the machine's share of a scan's cost.

bench/scan.py and bench/run measure imagegate's p99 rising during a scan even with the scan
process under SCHED_IDLE and the API server on the other core, and the floor's rising as much
beside it. This asks the machine alone. The floor (floor.py) and a paced client (scan.py's,
RATE req/s) run on CPU 0, WINDOW seconds a window; each round is a window with nothing else on
CPU 0, then one window per neighbour, a process on CPU 0 that works DUTY of every PERIOD (as a
paced scan works half the time) and sleeps the rest:

- `idle-spin`: SCHED_IDLE, arithmetic only: no memory to speak of, no system call while it
  works, no lock shared with anyone. The kernel preempts it the moment the floor or the client
  wakes. Whatever this costs the floor is the platform's (the VM, its host, the core's caches),
  and no scheduling class in imagegate can take it away.
- `idle-churn`: SCHED_IDLE, building and dropping dicts of strings, as a scan parses pages:
  adds what its cache and allocator pressure cost.
- `nice-spin`: nice 10 under SCHED_OTHER, arithmetic only: the scan process as it was before
  SCHED_IDLE.

Per window: p50, p99, the p99 ÷ the round's quiet window, and CPU 0's steal time (/proc/stat:
time the host ran something else while this guest wanted the core).

    .venv/bin/python bench/neighbour.py [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine
from suite import certificates

from imagegate.testbed import processes

CPU = 0
RATE = 100
WINDOW = 20.0
ROUNDS = 2
DUTY = 0.5
#: Seconds of each work-and-sleep cycle of a neighbour (a paced scan's pages take 10-100 ms).
PERIOD = 0.1
NEIGHBOURS = ("idle-spin", "idle-churn", "nice-spin")
BENCH = Path(__file__).parent


def neighbour_main(kind: str) -> None:
    """The neighbour process: DUTY of every PERIOD at work, the rest asleep, until killed."""
    os.sched_setaffinity(0, {CPU})
    if kind.startswith("idle"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(10)
    churn = kind.endswith("churn")
    while True:
        until = time.monotonic() + DUTY * PERIOD
        while time.monotonic() < until:
            if churn:
                page = [{"name": f"app-{n}", "image": f"registry/{n}:1"} for n in range(2000)]
                del page
            else:
                total = 0
                for n in range(20000):
                    total += n * n
        time.sleep((1 - DUTY) * PERIOD)


@contextlib.contextmanager
def neighbour(kind: str | None) -> Iterator[None]:
    if kind is None:
        yield
        return
    process = multiprocessing.get_context("spawn").Process(
        target=neighbour_main, args=(kind,), daemon=True
    )
    process.start()
    try:
        time.sleep(1.0)  # started, and into its rhythm
        yield
    finally:
        process.kill()
        process.join()


def steal_seconds() -> float:
    """CPU's steal time so far (/proc/stat's eighth figure, in clock ticks)."""
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{CPU}":
            return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"no cpu{CPU} in /proc/stat")


def window(url: str, cafile: Path) -> tuple[list[float], float]:
    """Latencies (s) of a paced window from scan.py's client, and the steal seconds during it."""
    stolen = steal_seconds()
    answer = subprocess.run(
        [
            sys.executable,
            str(BENCH / "scan.py"),
            "client",
            url,
            str(cafile),
            str(WINDOW),
            str(RATE),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(answer.stdout), steal_seconds() - stolen


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    os.sched_setaffinity(0, {CPU})  # the floor and the client inherit it
    with tempfile.TemporaryDirectory() as workdir:
        certs = certificates(Path(workdir))
        cafile, cert, key = certs.ca, certs.cert, certs.key
        port = processes.free_port()
        floor = subprocess.Popen(
            [sys.executable, str(BENCH / "floor.py"), str(cert), str(key), str(port)]
        )
        try:
            context = ssl.create_default_context(cafile=str(cafile))
            for _ in range(100):
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=context)
                    break
                time.sleep(0.1)
            url = f"https://127.0.0.1:{port}/validate"
            summary: dict[str, list[float]] = {}
            for number in range(1, args.rounds + 1):
                quiet = 0.0
                for kind in (None, *NEIGHBOURS):
                    with neighbour(kind):
                        latencies, stolen = window(url, cafile)
                    tail = p99(latencies)
                    if kind is None:
                        quiet = tail
                    else:
                        summary.setdefault(kind, []).append(tail / quiet)
                    print(
                        f"round {number}, {kind or 'quiet':10}: p50 "
                        f"{statistics.median(latencies) * 1000:.2f} ms, p99 {tail:.2f} ms"
                        + (f" ({tail / quiet:.2f}x quiet)" if kind else "")
                        + f"; CPU {CPU} steal {stolen:.2f} s",
                        flush=True,
                    )
        finally:
            floor.kill()
            floor.wait()
    print(
        f"the floor and a {RATE}/s client on CPU {CPU}, beside a neighbour working {DUTY:.0%} of "
        f"every {PERIOD * 1000:.0f} ms; p99 ÷ quiet: "
        + "; ".join(f"{k} {', '.join(f'{r:.2f}' for r in v)}" for k, v in summary.items())
        + f"; {machine()}"
    )


if __name__ == "__main__":
    main()
