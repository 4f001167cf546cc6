"""bench/run's output: the Markdown table (bench/results/run.md) and the latency plot.

Every figure comes from the rounds just measured; a cell lists one value per round
("a / b"), and each ratio is taken within a round, never across them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import loadgen
from common import machine

if TYPE_CHECKING:
    from suite import Options, Round, ScanWindow

MISSING = "-"
SIDES = ("imagegate", "floor", "policy-controller")
COLORS = {"imagegate": "tab:blue", "floor": "tab:gray", "policy-controller": "tab:orange"}


def _cells(values: Sequence[float | None], fmt: str) -> str:
    shown = [format(v, fmt) if v is not None and not math.isnan(v) else MISSING for v in values]
    return " / ".join(shown) if shown else MISSING


def _per_round(
    rounds: Sequence[Round], side: str, mode: str, value: Callable[[loadgen.Attack], float]
) -> list[float | None]:
    found = [r.find(side, mode) for r in rounds]
    return [value(a) if a is not None else None for a in found]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def best_rate_under(rounds: Sequence[Round], side: str, bound_ms: float) -> list[float | None]:
    """Per round: the highest sweep rate admitted in full (≥ 99 %) with p99 under the bound."""
    best: list[float | None] = []
    for record in rounds:
        rates = [
            a.rate
            for a in record.attacks
            if a.side == side
            and a.mode == "sweep"
            and a.admitted_share >= 0.99
            and a.p99 < bound_ms
        ]
        best.append(float(max(rates)) if rates else None)
    return best


def markdown(
    rounds: Sequence[Round],
    options: Options,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    started: float,
) -> str:
    from suite import PACED_RATE, SATURATION_P99_MS, SATURATION_WORKERS

    sides = [s for s in SIDES if any(r.find(s, "paced") for r in rounds)]
    cores = len(os.sched_getaffinity(0))
    lines = [
        "# bench/run results",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{len(rounds)} round(s), {machine()}; load average before "
        f"{load_before[0]:.1f}, after {load_after[0]:.1f}. This machine is shared (other "
        "agents' builds and tests run beside it): compare within a run, not across runs.",
        "Command: `bench/run"
        + (
            f" --imagegate-args '{' '.join(options.imagegate_args)}'"
            if options.imagegate_args
            else ""
        )
        + ("" if options.peer else " --no-peer")
        + ("" if options.signed else " --no-signed")
        + ("" if options.scan else " --no-scan")
        + "`. Each cell is one value per round (`round 1 / round 2`).",
        "",
        "Workload: one AdmissionReview (a 3-container Pod pinned by digest) posted by vegeta over "
        "HTTPS (HTTP/1.1 keep-alive) on 127.0.0.1; one policy matching every image, no registry "
        "or signature work. imagegate = `imagegate run` (default flags"
        + (f" + `{' '.join(options.imagegate_args)}`" if options.imagegate_args else "")
        + "); floor = bench/floor.py (aiohttp, parses the review, allows); policy-controller "
        "v0.13.1 with a `static: pass` policy. vegeta runs on the same cores. Python modules "
        "are compiled before the first start, as the image ships them (bench/suite.py "
        "`compile_as_the_image_does`).",
        "",
        "## Per webhook",
        "",
        f"| | paced {PACED_RATE}/s p50 ms | p99 ms | CPU-ms/req | saturation req/s "
        f"({SATURATION_WORKERS} workers) | its p99 ms | CPU-ms/req | CPU-bound estimate req/s "
        f"({cores} cores) | top sweep rate with p99 < {SATURATION_P99_MS:.0f} ms "
        "| RSS MiB at ready | RSS MiB after | ready s | p99 ms, first 2 s at 100/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for side in sides:
        sat_cpu = _per_round(rounds, side, "saturation", lambda a: a.cpu_ms_per_request)
        estimate = [cores * 1000 / c if c else None for c in sat_cpu]
        after = _per_round(rounds, side, "saturation", lambda a: a.rss_mib)
        ready = [r.ready_seconds for r in rounds] if side == "imagegate" else []
        lines.append(
            f"| {side} "
            f"| {_cells(_per_round(rounds, side, 'paced', lambda a: a.p50), '.2f')} "
            f"| {_cells(_per_round(rounds, side, 'paced', lambda a: a.p99), '.2f')} "
            f"| {_cells(_per_round(rounds, side, 'paced', lambda a: a.cpu_ms_per_request), '.3f')} "
            f"| {_cells(_per_round(rounds, side, 'saturation', lambda a: a.throughput), ',.0f')} "
            f"| {_cells(_per_round(rounds, side, 'saturation', lambda a: a.p99), '.1f')} "
            f"| {_cells(sat_cpu, '.3f')} "
            f"| {_cells(estimate, ',.0f')} "
            f"| {_cells(best_rate_under(rounds, side, SATURATION_P99_MS), ',.0f')} "
            f"| {_cells([r.ready_rss.get(side) for r in rounds], '.0f')} "
            f"| {_cells(after, '.0f')} "
            f"| {_cells(ready, '.2f') if ready else MISSING} "
            f"| {_cells(_per_round(rounds, side, 'after-ready', lambda a: a.p99), '.1f')} |"
        )
    lines += [
        "",
        "CPU-ms/req: the server process's utime + stime (with its children) over the attack, "
        "divided by requests sent. CPU-bound estimate: cores ÷ CPU per request at saturation, "
        "what the process would reach if CPU were all that limited it (for policy-controller, "
        "whose API client caps it at about 40 admissions/s, the unthrottled figure). "
        "The last column is the first attack after imagegate and the floor start (ready, then "
        "200 reviews at 100/s; policy-controller runs through all rounds). Measurements run in "
        "this order on every side in turn: that first attack, the sweep, saturation, then the "
        "paced run; before each attack the side must answer 4 reviews within 100 ms.",
        "",
        "## Ratios (within each round)",
        "",
        "| | " + " | ".join(f"imagegate/{s}" for s in sides if s != "imagegate") + " |",
        "|---|" + "---|" * (len(sides) - 1),
    ]
    metrics: list[tuple[str, str, Callable[[loadgen.Attack], float]]] = [
        (f"paced {PACED_RATE}/s p50", "paced", lambda a: a.p50),
        (f"paced {PACED_RATE}/s p99", "paced", lambda a: a.p99),
        ("CPU per request, paced", "paced", lambda a: a.cpu_ms_per_request),
        ("saturation throughput", "saturation", lambda a: a.throughput),
        ("CPU per request, saturation", "saturation", lambda a: a.cpu_ms_per_request),
    ]
    for label, mode, value in metrics:
        ours = _per_round(rounds, "imagegate", mode, value)
        cells = []
        for side in sides:
            if side != "imagegate":
                theirs = _per_round(rounds, side, mode, value)
                cells.append(
                    _cells([_ratio(a, b) for a, b in zip(ours, theirs, strict=True)], ".2f")
                )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    rss_cells = [
        _cells([_ratio(r.ready_rss.get("imagegate"), r.ready_rss.get(s)) for r in rounds], ".2f")
        for s in sides
        if s != "imagegate"
    ]
    lines.append("| RSS at ready | " + " | ".join(rss_cells) + " |")
    lines += _sweep_table(rounds, sides)
    lines += _pod_create_table(rounds)
    lines += _signed_tables(rounds, cores)
    lines += _scan_table(rounds, options)
    lines += [
        "",
        "Not measured here: keyless signatures and attestations (bench/verify.py measures "
        "verification alone against cosign).",
        "",
    ]
    return "\n".join(lines)


def _signed_tables(rounds: Sequence[Round], cores: int) -> list[str]:
    from suite import SATURATION_WORKERS, SIGNED_RATE, SIGNED_WARM_UP_SECONDS

    sides = [
        s
        for s in ("imagegate", "policy-controller")
        if any(r.find(f"{s} signed", "paced") for r in rounds)
    ]
    if not sides:
        return []
    lines = [
        "",
        "## Signed images (cosign key)",
        "",
        "A 3-container Pod (init + 2) whose images were pushed to the test bed's OCI registry "
        "(127.0.0.1, plain HTTP) with crane and signed with `cosign sign --key` (legacy `.sig`, no "
        "transparency log), fresh images each round, reviewed in namespace `signed`. imagegate: a "
        "ClusterImagePolicy selecting that namespace and requiring that public key (with the "
        "`**` ClusterImagePolicy beside it); policy-controller: a "
        "ClusterImagePolicy with a `key:` authority holding the same key (with `static: pass` "
        "beside it). First: the round's first signed review, one request on a new connection "
        "(imagegate started this round, so it is its first verification since start; "
        "policy-controller runs through all rounds). Cold: right after, one review of another "
        "Pod whose images neither has seen (a verdict computed afresh by a warm process). "
        f"That Pod again for {SIGNED_WARM_UP_SECONDS:.0f} s at {SIGNED_RATE}/s to "
        f"warm up, paced {SIGNED_RATE}/s (under policy-controller's ~40/s API client limit), "
        f"saturation ({SATURATION_WORKERS} workers). After them a Pod with one unsigned image "
        "from the same registry must be denied by both, or the round stops. imagegate keeps a "
        "verdict per digest; policy-controller v0.13.1 verifies on every admission (its "
        "webhook's ResultCache is NoCache: nothing puts another in the context).",
        "",
        f"| | first ms | cold ms | paced {SIGNED_RATE}/s p50 ms | p99 ms | CPU-ms/req "
        f"| saturation req/s | its p99 ms | CPU-ms/req "
        f"| CPU-bound estimate req/s ({cores} cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for side in sides:
        name = f"{side} signed"
        sat_cpu = _per_round(rounds, name, "saturation", lambda a: a.cpu_ms_per_request)
        lines.append(
            f"| {side} "
            f"| {_cells(_per_round(rounds, name, 'first', lambda a: a.p50), '.1f')} "
            f"| {_cells(_per_round(rounds, name, 'cold', lambda a: a.p50), '.1f')} "
            f"| {_cells(_per_round(rounds, name, 'paced', lambda a: a.p50), '.2f')} "
            f"| {_cells(_per_round(rounds, name, 'paced', lambda a: a.p99), '.2f')} "
            f"| {_cells(_per_round(rounds, name, 'paced', lambda a: a.cpu_ms_per_request), '.3f')} "
            f"| {_cells(_per_round(rounds, name, 'saturation', lambda a: a.throughput), ',.0f')} "
            f"| {_cells(_per_round(rounds, name, 'saturation', lambda a: a.p99), '.1f')} "
            f"| {_cells(sat_cpu, '.3f')} "
            f"| {_cells([cores * 1000 / c if c else None for c in sat_cpu], ',.0f')} |"
        )
    if len(sides) < 2:
        return lines
    metrics: list[tuple[str, str, Callable[[loadgen.Attack], float]]] = [
        ("first signed review of the round", "first", lambda a: a.p50),
        ("cold (new images, warm process)", "cold", lambda a: a.p50),
        (f"paced {SIGNED_RATE}/s p50", "paced", lambda a: a.p50),
        (f"paced {SIGNED_RATE}/s p99", "paced", lambda a: a.p99),
        ("CPU per request, paced", "paced", lambda a: a.cpu_ms_per_request),
        ("saturation throughput", "saturation", lambda a: a.throughput),
        (
            "CPU-bound estimate",
            "saturation",
            lambda a: 1 / a.cpu_ms_per_request if a.cpu_ms_per_request else math.nan,
        ),
        ("CPU per request, saturation", "saturation", lambda a: a.cpu_ms_per_request),
    ]
    lines += [
        "",
        "| signed, within each round | imagegate/policy-controller |",
        "|---|---|",
    ]
    for label, mode, value in metrics:
        ours = _per_round(rounds, "imagegate signed", mode, value)
        theirs = _per_round(rounds, "policy-controller signed", mode, value)
        ratios = [_ratio(a, b) for a, b in zip(ours, theirs, strict=True)]
        lines.append(f"| {label} | {_cells(ratios, '.2f')} |")
    return lines


def _scan_table(rounds: Sequence[Round], options: Options) -> list[str]:
    from suite import CLUSTER_CPU, SCAN_INTERVAL, SCAN_RATE, WEBHOOK_CPU

    if not any(r.scan for r in rounds):
        return []
    lines = [
        "",
        "## Admission during a background scan",
        "",
        f"{options.scan_workloads:,} workloads stored in the API server (never run), "
        f"{options.scan_namespaces} namespaces, half Pods, half Deployments, peer.py's Pod spec. "
        f"Idle: the round's imagegate at {SCAN_RATE}/s for {options.scan_seconds:.0f} s. "
        f"Scanning: a second `imagegate run` with `--policy-reports --scan-interval "
        f"{SCAN_INTERVAL:g}` (same flags otherwise), warmed up (200 reviews at 100/s), then, "
        f"once its first scan has logged `background scan: N objects`, {SCAN_RATE}/s for "
        f"{options.scan_seconds:.0f} s. In a scan: the share of that window between a scan's "
        f"start (taken as {SCAN_INTERVAL:g} s after the last one ended, so a lower bound) and its "
        "end line. Scan seconds: end to end of each scan after the first, less the interval. "
        f"The floor: {SCAN_RATE}/s for as long, idle (before the scanning process starts) and "
        "right after imagegate's window, during the same back-to-back scans: its ratio is what "
        "this machine's contention alone costs a trivial webhook. Scans after the first find "
        "what its reports say and write none (a steady cluster's scan, at the default "
        "`--scan-duty`); `bench/scan.py` also measures scans that rewrite every report.",
        "",
        *_SCAN_HEADER,
    ]
    lines += _scan_rows(rounds, "scan-idle", "scan", lambda r: r.scan)
    if any(r.split_scan for r in rounds):
        lines += [
            "",
            "### The same, with the control plane on a core of its own",
            "",
            f"As above, but kube-apiserver and etcd on CPU {CLUSTER_CPU}, and the round's "
            "imagegate, the scanning one (serving and scan process), the floor and vegeta on "
            f"CPU {WEBHOOK_CPU} (`suite.split_cores`): as in a cluster, where the API server runs "
            "on other nodes than the webhook's pod. What is left is what a scan process costs "
            "whatever serves on the core it shares (the floor's ratio: a trivial neighbour's).",
            "",
            *_SCAN_HEADER,
        ]
        lines += _scan_rows(rounds, "split-idle", "split", lambda r: r.split_scan)
    return lines


_SCAN_HEADER = (
    "| round | idle p50 ms | idle p99 ms | scanning p50 ms | scanning p99 ms "
    "| p99 scanning/idle | admitted while scanning | objects a scan | scan s "
    "| window in a scan | floor idle p99 ms | floor scanning p99 ms "
    "| floor p99 scanning/idle | floor's window in a scan |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
)


def _scan_rows(
    rounds: Sequence[Round],
    idle_mode: str,
    scan_mode: str,
    window_of: Callable[[Round], ScanWindow | None],
) -> list[str]:
    lines = []
    for number, record in enumerate(rounds, 1):
        idle, during, scan = (
            record.find("imagegate", idle_mode),
            record.find("imagegate scanning", scan_mode),
            window_of(record),
        )
        if idle is None or during is None or scan is None:
            continue
        durations = ", ".join(f"{d:.1f}" for d in scan.durations) or MISSING
        floor_idle, floor_during = (
            record.find("floor", idle_mode),
            record.find("floor", scan_mode),
        )
        if floor_idle is None or floor_during is None:
            floor_cells = f"{MISSING} | {MISSING} | {MISSING} | {MISSING}"
        else:
            floor_cells = (
                f"{floor_idle.p99:.2f} | {floor_during.p99:.2f} "
                f"| {_cells([_ratio(floor_during.p99, floor_idle.p99)], '.2f')} "
                f"| {100 * scan.floor_coverage:.0f} %"
            )
        lines.append(
            f"| {number} | {idle.p50:.2f} | {idle.p99:.2f} | {during.p50:.2f} | {during.p99:.2f} "
            f"| {_cells([_ratio(during.p99, idle.p99)], '.2f')} "
            f"| {100 * during.admitted_share:.1f} % | {scan.scans[-1][1]:,} | {durations} "
            f"| {100 * scan.coverage:.0f} % | {floor_cells} |"
        )
    return lines


def _sweep_table(rounds: Sequence[Round], sides: Sequence[str]) -> list[str]:
    lines = [
        "",
        "## Rate sweep (p50 / p99 ms, share admitted)",
        "",
        "A side stops climbing after a rate it does not keep up with (under 99 % admitted within "
        f"{loadgen.REQUEST_TIMEOUT}, or p99 over 1 s).",
        "",
        "| rate/s | round | " + " | ".join(sides) + " |",
        "|---|---|" + "---|" * len(sides),
    ]
    rates = sorted({a.rate for r in rounds for a in r.attacks if a.mode == "sweep"})
    for rate in rates:
        for number, record in enumerate(rounds, 1):
            cells = []
            for side in sides:
                attack = next(
                    (
                        a
                        for a in record.attacks
                        if a.side == side and a.mode == "sweep" and a.rate == rate
                    ),
                    None,
                )
                cells.append(
                    f"{attack.p50:.2f} / {attack.p99:.1f} ({100 * attack.admitted_share:.0f} %)"
                    if attack
                    else MISSING
                )
            lines.append(f"| {rate:,} | {number} | " + " | ".join(cells) + " |")
    return lines


def _pod_create_table(rounds: Sequence[Round]) -> list[str]:
    setups = [
        k for k in ("no webhook", "floor", "imagegate") if any(k in r.pod_create for r in rounds)
    ]
    if not setups:
        return []
    lines = [
        "",
        "## Pod create through the API server (dryRun=All, sequential)",
        "",
        "Webhooks registered as imagegate's own configurations (mutating + validating, by URL); "
        "the floor's answer both without a patch.",
        "",
        "| webhooks | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for setup in setups:
        found = [r.pod_create.get(setup) for r in rounds]
        lines.append(
            f"| {setup} | {_cells([f[0] if f else None for f in found], '.2f')} "
            f"| {_cells([f[1] if f else None for f in found], '.2f')} |"
        )
    return lines


def plot(rounds: Sequence[Round], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from suite import PACED_RATE

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    styles = ("-", "--", ":", "-.")
    for number, record in enumerate(rounds):
        for side in SIDES:
            attack = record.find(side, "paced")
            if attack is None or not attack.latencies_ms:
                continue
            ordered = sorted(attack.latencies_ms)
            shares = [100 * (n + 1) / len(ordered) for n in range(len(ordered))]
            left.plot(
                ordered,
                shares,
                styles[number % 4],
                color=COLORS[side],
                label=f"{side}, round {number + 1}",
            )
            sweep = sorted(
                (a.rate, a.p99) for a in record.attacks if a.side == side and a.mode == "sweep"
            )
            right.plot(
                [s[0] for s in sweep],
                [s[1] for s in sweep],
                styles[number % 4],
                marker="o",
                color=COLORS[side],
                label=f"{side}, round {number + 1}",
            )
    left.set_xscale("log")
    left.set_xlabel("latency, ms (log)")
    left.set_ylabel("% of admitted requests answered within")
    left.set_title(f"Latency distribution, paced {PACED_RATE} req/s")
    left.axhline(99, color="black", linewidth=0.5)
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("offered rate, req/s (log)")
    right.set_ylabel("p99 latency, ms (log)")
    right.set_title("Rate sweep: p99")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
