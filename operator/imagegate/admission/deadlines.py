"""Request deadlines on shared timers.

`asyncio.timeout` puts one timer on the loop per request and takes it off again; on the warm path
that was about a twentieth of an admission's CPU. Here every request whose deadline falls in the
same `resolution`-wide slot shares one timer, so a busy server sets a few timers a second, not
one per request. A deadline fires up to `resolution` late, which the webhook's margin absorbs
(an 8 s deadline under a 10 s webhook timeout; docs/design.md §4.10).

The semantics are `asyncio.timeout`'s: past the deadline the task is cancelled, and the
`CancelledError` leaving the block becomes `TimeoutError`, unless someone else also cancelled
the task, in which case the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Any

#: Seconds each shared timer covers: how late a deadline may fire.
RESOLUTION = 0.05


class Deadlines:
    """The deadlines of the requests one server is handling (made and used on its loop)."""

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self.resolution = resolution
        #: Slot number → the tasks whose deadline falls in it (a timer per slot).
        self._slots: dict[int, set[asyncio.Task[Any]]] = {}
        #: Tasks cancelled for their deadline and not yet out of their block.
        self._expired: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        """Requests with a deadline now (tests)."""
        return sum(len(tasks) for tasks in self._slots.values())

    def within(self, delay: float, task: asyncio.Task[Any] | None = None) -> Bound:
        """A `with` block that `task` (default: the current one) must leave within `delay`
        seconds, or be cancelled and see `TimeoutError`."""
        if task is None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("a deadline needs a task to cancel")
        loop = task.get_loop()
        slot = math.ceil((loop.time() + max(0.0, delay)) / self.resolution)
        tasks = self._slots.get(slot)
        if tasks is None:
            tasks = self._slots[slot] = set()
            loop.call_at(slot * self.resolution, self._expire, slot)
        return Bound(self, task, slot, tasks)

    def _expire(self, slot: int) -> None:
        for task in self._slots.pop(slot, ()):
            if not task.done():
                self._expired.add(task)
                task.cancel()

    def _leave(self, bound: Bound) -> bool:
        """Take `bound` off its slot; whether its deadline had cancelled its task.

        An emptied slot stays until its timer fires: the next request in it then finds the
        timer set, where dropping the slot would set another (one per request again).
        """
        bound.tasks.discard(bound.task)
        if bound.task in self._expired:
            self._expired.discard(bound.task)
            return True
        return False


class Bound:
    """One task's deadline, as a synchronous context manager (no await to enter or leave)."""

    __slots__ = ("_cancelling", "_deadlines", "slot", "task", "tasks")

    def __init__(
        self,
        deadlines: Deadlines,
        task: asyncio.Task[Any],
        slot: int,
        tasks: set[asyncio.Task[Any]],
    ) -> None:
        self._deadlines = deadlines
        self.task = task
        self.slot = slot
        self.tasks = tasks
        self._cancelling = 0

    def __enter__(self) -> Bound:
        self._cancelling = self.task.cancelling()
        self.tasks.add(self.task)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        expired = self._deadlines._leave(self)
        if not expired:
            return
        # Our cancel is undone either way; only a cancel of ours alone turns into TimeoutError.
        if self.task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise TimeoutError from error
