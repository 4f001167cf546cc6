"""Freed heap goes back to the kernel on a timer (cluster/heap.py); bench/memory.py measures it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from imagegate.admission import server
from imagegate.cluster import heap, operator


def test_trimming_frees_what_a_burst_left_on_glibc() -> None:
    if heap._malloc_trim() is None:
        pytest.skip("not glibc")
    burst = [bytearray(4096) for _ in range(20_000)]  # 80 MiB of malloc'd blocks
    pinned = bytearray(4096)  # above them: free() alone cannot shrink the heap past it
    del burst
    assert heap.trim() is True  # glibc says it released memory
    del pinned


def test_an_interval_of_zero_never_trims() -> None:
    asyncio.run(asyncio.wait_for(heap.run(0), 1))  # returns at once


def test_the_operator_trims_every_30_s_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = operator.OperatorConfig(None, server.TLSFiles(Path("c"), Path("k")))
    assert config.heap_trim_interval == heap.TRIM_INTERVAL == 30.0
    monkeypatch.setenv("IMAGEGATE_HEAP_TRIM_INTERVAL", "0")
    config = operator.OperatorConfig(None, server.TLSFiles(Path("c"), Path("k")))
    assert config.heap_trim_interval == 0.0
