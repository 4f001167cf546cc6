"""bench/run's own logic without running it: options, scan coverage, the scan log, the tables.

No timing is asserted: the figures here are made up, only how they are read and shown is checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench() -> tuple[ModuleType, ModuleType, ModuleType]:
    """bench/suite.py, report.py and loadgen.py, imported as bench/run does (bench/ on the path)."""
    sys.path.insert(0, str(BENCH))
    try:
        import loadgen
        import report
        import suite
    finally:
        sys.path.remove(str(BENCH))
    return suite, report, loadgen


def attack(loadgen: Any, side: str, mode: str, latency_ms: float, *, cpu: float = 1.0) -> Any:
    return loadgen.Attack(
        side=side,
        mode=mode,
        rate=25,
        latencies_ms=(latency_ms,) * 100,
        sent=100,
        admitted=100,
        seconds=4.0,
        cpu_seconds=cpu,
        rss_mib=50.0,
    )


def test_the_new_phases_are_on_by_default_and_each_can_be_skipped(bench: Any) -> None:
    suite, _, _ = bench
    default = suite.parse_options([])
    assert (default.signed, default.scan, default.scan_workloads) == (True, True, 5000)
    skipped = suite.parse_options(["--no-signed", "--no-scan"])
    assert (skipped.signed, skipped.scan) == (False, False)
    quick = suite.parse_options(["--quick"])
    assert quick.rounds == 1
    assert quick.scan_workloads < default.scan_workloads
    assert quick.scan_seconds < default.scan_seconds


def test_coverage_is_the_share_of_the_window_between_a_scans_start_and_its_end(
    bench: Any,
) -> None:
    suite, _, _ = bench
    gap = suite.SCAN_INTERVAL
    # Scans end at 10, 20 and 30: the second runs 10 + gap .. 20, the third 20 + gap .. 30.
    ends = [10.0, 20.0, 30.0]
    assert suite.scan_coverage(ends, 12.0, 18.0) == pytest.approx(1.0)
    assert suite.scan_coverage(ends, 15.0, 25.0) == pytest.approx((5 + 5 - gap) / 10)
    # Before the first end line nothing is known to be a scan.
    assert suite.scan_coverage(ends, 0.0, 10.0) == 0.0
    # A window after the last end line is not counted as scanned.
    assert suite.scan_coverage(ends, 30.0, 40.0) == 0.0


def test_the_scan_log_notes_each_background_scan_line_as_it_appears(
    bench: Any, tmp_path: Path
) -> None:
    suite, _, _ = bench
    path = tmp_path / "imagegate.log"
    path.write_text("serving /validate\n")
    with suite.ScanLog(path) as log:
        with path.open("a") as out:
            out.write("INFO background scan: 5000 objects, 5000 pass\nINFO background sc")
            out.flush()
            log.wait_for(1, "first scan")
            out.write("an: 4999 objects, no results\n")
        log.wait_for(2, "second scan")
        time.sleep(0.2)
    assert [objects for _, objects in log.scans] == [5000, 4999]


def test_the_report_gives_signed_and_scan_ratios_within_a_round(bench: Any) -> None:
    suite, report, loadgen = bench
    record = suite.Round()
    record.attacks += [
        attack(loadgen, "imagegate signed", "first", 90.0),
        attack(loadgen, "policy-controller signed", "first", 30.0),
        attack(loadgen, "imagegate signed", "cold", 90.0),
        attack(loadgen, "policy-controller signed", "cold", 45.0),
        attack(loadgen, "imagegate signed", "paced", 3.0),
        attack(loadgen, "policy-controller signed", "paced", 24.0),
        attack(loadgen, "imagegate signed", "saturation", 50.0, cpu=0.2),
        attack(loadgen, "policy-controller signed", "saturation", 250.0, cpu=0.8),
        attack(loadgen, "imagegate", "scan-idle", 4.0),
        attack(loadgen, "imagegate scanning", "scan", 10.0),
        attack(loadgen, "floor", "scan-idle", 2.0),
        attack(loadgen, "floor", "scan", 3.0),
        attack(loadgen, "imagegate", "split-idle", 2.0),
        attack(loadgen, "imagegate scanning", "split", 7.0),
        attack(loadgen, "floor", "split-idle", 1.0),
        attack(loadgen, "floor", "split", 4.0),
    ]
    record.scan = suite.ScanWindow([(0.0, 5000), (30.0, 5000)], (5.0, 25.0), 1.0, 0.5)
    record.split_scan = suite.ScanWindow([(0.0, 5000), (30.0, 5000)], (5.0, 25.0), 0.75, 0.25)
    text = report.markdown([record], suite.parse_options([]), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 0.0)
    signed = text.split("## Signed images")[1].split("## ")[0]
    ratios = {
        line.split(" | ")[0]: line.split(" | ")[1] for line in signed.splitlines() if " | " in line
    }
    assert ratios["| first signed review of the round"] == "3.00 |"
    assert ratios["| cold (new images, warm process)"] == "2.00 |"
    assert ratios["| paced 25/s p50"] == "0.12 |"
    assert ratios["| CPU per request, saturation"] == "0.25 |"
    assert ratios["| CPU-bound estimate"] == "4.00 |"
    scan, split = text.split("## Admission during a background scan")[1].split("### The same")
    row = next(line for line in scan.splitlines() if line.startswith("| 1 |"))
    assert row.split(" | ")[5] == "2.50"  # scanning p99 / idle p99
    assert "| 100 % |" in row
    cells = row.split(" | ")
    assert cells[10:13] == ["2.00", "3.00", "1.50"]  # the floor: idle, scanning, ratio
    assert cells[13] == "50 % |"
    # The split-core table reads the split attacks and window, not the shared ones.
    cells = next(line for line in split.splitlines() if line.startswith("| 1 |")).split(" | ")
    assert cells[5] == "3.50"
    assert cells[9:13] == ["75 %", "1.00", "4.00", "4.00"]
    assert cells[13] == "25 % |"


def test_split_cores_pins_the_control_plane_and_the_webhooks_apart_and_back(bench: Any) -> None:
    suite, _, _ = bench
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("splitting the cores takes two")
    everything = os.sched_getaffinity(0)
    plane, webhook = (subprocess.Popen(["sleep", "30"]) for _ in range(2))
    try:

        class Plane:
            def pids(self) -> list[int]:
                return [plane.pid]

        with suite.split_cores(Plane(), [webhook.pid]):
            assert os.sched_getaffinity(plane.pid) == {suite.CLUSTER_CPU}
            assert os.sched_getaffinity(webhook.pid) == {suite.WEBHOOK_CPU}
            assert os.sched_getaffinity(0) == {suite.WEBHOOK_CPU}  # what it starts inherits
        assert os.sched_getaffinity(plane.pid) == everything
        assert os.sched_getaffinity(webhook.pid) == everything
        assert os.sched_getaffinity(0) == everything
    finally:
        for process in (plane, webhook):
            process.kill()
            process.wait()
