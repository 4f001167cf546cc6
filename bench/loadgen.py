"""vegeta as the load generator, and what a server process spends while it runs.

vegeta (built from its Go module into the test bed's cache, `build.VEGETA`) sends the requests
from its own process, on a fixed schedule (`-rate R/s`: a slow answer does not delay the next
request, so there is no coordinated omission) or as fast as N workers can (`-rate 0`). Its
results (one per request, with the answer's body) are read back with `vegeta encode`; a request
counts as admitted only when it got HTTP 200 and `"allowed": true`.

A server's CPU time is utime + stime from /proc/PID/stat of the process and its descendants
(so several worker processes add up), its memory the sum of their VmRSS.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REQUEST_TIMEOUT = "5s"
#: No HTTP/2: aiohttp does not speak it, and keep-alive HTTP/1.1 is what the comparison needs.
#: Connections per side, below imagegate's 256-connection bound (ConnectionBounds): an API server
#: holds a bounded pool too, and past the bound imagegate closes the oldest idle connection,
#: which would count as failures of a client no cluster has.
MAX_CONNECTIONS = 200
COMMON_FLAGS = (
    "-http2=false",
    "-keepalive=true",
    f"-timeout={REQUEST_TIMEOUT}",
    f"-max-connections={MAX_CONNECTIONS}",
)
_ALLOWED = re.compile(rb'"allowed"\s*:\s*true')


@dataclass(frozen=True)
class Side:
    """One webhook under test: where vegeta sends the review, and which process answers."""

    name: str
    url: str
    root_cert: Path
    pid: int
    #: vegeta `-connect-to` mapping, for a certificate issued to a name rather than 127.0.0.1.
    connect_to: str = ""
    #: The AdmissionReview this side is sent; None: the one `Vegeta` was made with.
    body: Path | None = None


@dataclass(frozen=True)
class Attack:
    """What one vegeta attack measured, with the server's CPU and memory over it."""

    side: str
    mode: str
    rate: int
    latencies_ms: tuple[float, ...]
    sent: int
    admitted: int
    seconds: float
    cpu_seconds: float
    rss_mib: float
    #: Seconds the side took, before the attack, to answer one review quickly again.
    settled_seconds: float = 0.0
    #: The most frequent failures (vegeta's error text, or the HTTP status), most first.
    errors: tuple[str, ...] = ()

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def admitted_share(self) -> float:
        return self.admitted / self.sent if self.sent else 0.0

    @property
    def throughput(self) -> float:
        """Admissions answered per second of the attack."""
        return self.admitted / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / self.sent if self.sent else 0.0


def percentile(values: tuple[float, ...] | list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    if share == 50:
        return statistics.median(ordered)
    index = min(len(ordered) - 1, max(0, round(len(ordered) * share / 100) - 1))
    return ordered[index]


# -- the server's process -------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(parents.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants, so far."""
    ticks = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants (sum of VmRSS)."""
    kib = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, flags=re.MULTILINE)
        kib += int(match[1]) if match else 0
    return kib / 1024


# -- vegeta -------------------------------------------------------------------------------------


class Vegeta:
    def __init__(self, binary: Path, workdir: Path, body: bytes) -> None:
        self.binary = binary
        self.workdir = workdir
        self.body_file = workdir / "review.json"
        self.body_file.write_bytes(body)

    def write_body(self, name: str, body: bytes) -> Path:
        """Another review to send (a `Side.body`), kept in the work directory."""
        path = self.workdir / f"review-{name}.json"
        path.write_bytes(body)
        return path

    def _targets(self, side: Side) -> Path:
        path = self.workdir / f"targets-{_file_name(side.name)}.txt"
        body = side.body or self.body_file
        path.write_text(f"POST {side.url}\nContent-Type: application/json\n@{body}\n")
        return path

    def attack(
        self,
        side: Side,
        mode: str,
        *,
        rate: int,
        seconds: float,
        workers: int = 0,
        settle: bool = True,
    ) -> Attack:
        """Attack `side` at `rate`/s (0: as fast as `workers` connections go) for `seconds`,
        once it answers quickly again (`settle`)."""
        output = self.workdir / f"results-{_file_name(side.name)}.bin"
        waited = self.settle(side) if settle else 0.0
        cpu_before = cpu_seconds(side.pid)
        started = time.perf_counter()
        self._vegeta_attack(side, output, rate=rate, seconds=seconds, workers=workers)
        wall = time.perf_counter() - started
        cpu = cpu_seconds(side.pid) - cpu_before
        latencies, sent, admitted, span, errors = self._read(output)
        output.unlink(missing_ok=True)
        return Attack(
            side=side.name,
            mode=mode,
            rate=rate,
            latencies_ms=tuple(latencies),
            sent=sent,
            admitted=admitted,
            seconds=span or wall,
            cpu_seconds=cpu,
            rss_mib=rss_mib(side.pid),
            settled_seconds=waited,
            errors=errors,
        )

    def settle(self, side: Side, *, quiet_ms: float = 100.0, timeout: float = 180.0) -> float:
        """Wait until `side` answers a few reviews within `quiet_ms`: seconds waited.

        A side left behind by the last attack (policy-controller past its API client's limit
        keeps serving the requests vegeta gave up on) would otherwise charge its backlog to
        the next attack.
        """
        output = self.workdir / f"probe-{_file_name(side.name)}.bin"
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            self._vegeta_attack(side, output, rate=4, seconds=1.0)
            latencies, sent, admitted, _, _ = self._read(output)
            if sent and admitted == sent and max(latencies) < quiet_ms:
                break
        output.unlink(missing_ok=True)
        return time.perf_counter() - started

    def _vegeta_attack(
        self, side: Side, output: Path, *, rate: int, seconds: float, workers: int = 0
    ) -> None:
        argv = [
            str(self.binary),
            "attack",
            f"-targets={self._targets(side)}",
            "-format=http",
            f"-rate={rate}/s",
            f"-duration={seconds}s",
            f"-root-certs={side.root_cert}",
            f"-output={output}",
            *COMMON_FLAGS,
        ]
        if side.connect_to:
            argv.append(f"-connect-to={side.connect_to}")
        if workers:
            argv += [f"-workers={workers}", f"-max-workers={workers}"]
        else:
            # Enough to hold the schedule through a slow patch, bounded for a peer that stalls.
            argv += ["-max-workers=512"]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)

    def _read(self, output: Path) -> tuple[list[float], int, int, float, tuple[str, ...]]:
        """Latencies (ms) of admitted requests, sent, admitted, the span first send → last
        answer in seconds, and the most frequent failures."""
        encoded = subprocess.run(
            [str(self.binary), "encode", "-to=json", str(output)],
            check=True,
            capture_output=True,
        ).stdout
        latencies, sent, admitted = [], 0, 0
        failures: collections.Counter[str] = collections.Counter()
        first, last = float("inf"), 0.0
        for line in encoded.splitlines():
            result = json.loads(line)
            sent += 1
            body = base64.b64decode(result.get("body") or "")
            if result["code"] == 200 and _ALLOWED.search(body):
                admitted += 1
                latencies.append(result["latency"] / 1e6)
            else:
                failures[result.get("error") or f"HTTP {result['code']}: {body[:80]!r}"] += 1
            sent_at = _unix_seconds(result["timestamp"])
            first = min(first, sent_at)
            last = max(last, sent_at + result["latency"] / 1e9)
        span = max(0.0, last - first) if sent else 0.0
        return latencies, sent, admitted, span, tuple(f for f, _ in failures.most_common(3))


def _file_name(side: str) -> str:
    """A side's name as part of a file name ("imagegate signed" → "imagegate-signed")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", side)


def _unix_seconds(timestamp: str) -> float:
    """vegeta's RFC 3339 timestamp with nanoseconds, as Unix seconds (to the microsecond)."""
    match = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", timestamp)
    if match is None:
        raise ValueError(f"unexpected vegeta timestamp {timestamp!r}")
    whole, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + float("0." + (fraction or "0"))
