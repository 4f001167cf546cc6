"""Giving freed heap back to the kernel after a burst (design.md "Memory and start-up").

glibc keeps what a burst of connections freed (TLS state, request bodies) inside its heaps, so a
replica's RSS stays at its peak long after the load is gone; `malloc_trim(0)` returns the free
pages. Called every `TRIM_INTERVAL` seconds from a worker thread (it takes the allocator's
locks, not the interpreter's for long), a no-op where the C library is not glibc.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

TRIM_INTERVAL = 30.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl has no malloc_trim)
        return None
    return trim


def trim() -> bool:
    """Return freed heap memory to the kernel; whether any was (False without glibc)."""
    malloc_trim = _malloc_trim()
    return malloc_trim is not None and bool(malloc_trim(0))


async def run(interval: float = TRIM_INTERVAL) -> None:
    """Trim every `interval` seconds, for ever (0 or less: never)."""
    if interval <= 0 or _malloc_trim() is None:
        return
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(trim)
