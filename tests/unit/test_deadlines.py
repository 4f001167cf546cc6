"""Request deadlines on shared timers (admission/deadlines.py): asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imagegate.admission.deadlines import Deadlines

#: Coarse enough that several requests share a slot in these tests.
RESOLUTION = 0.02


async def test_a_block_past_its_deadline_sees_timeout_error_and_its_task_goes_on() -> None:
    deadlines = Deadlines(RESOLUTION)
    with pytest.raises(TimeoutError), deadlines.within(0.01):
        await asyncio.sleep(30)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    assert len(deadlines) == 0
    await asyncio.sleep(0)  # the task goes on awaiting: nothing pending cancels it again


async def test_a_block_that_ends_in_time_is_not_cancelled_later() -> None:
    deadlines = Deadlines(RESOLUTION)
    with deadlines.within(0.01):
        await asyncio.sleep(0)
    assert len(deadlines) == 0
    await asyncio.sleep(3 * RESOLUTION)  # its slot's timer fires now and finds nothing


async def test_requests_sharing_a_slot_expire_together_and_one_leaving_spares_none() -> None:
    deadlines = Deadlines(RESOLUTION)
    outcomes: dict[str, str] = {}

    async def request(name: str, work: float) -> None:
        try:
            with deadlines.within(0.005):
                await asyncio.sleep(work)
            outcomes[name] = "done"
        except TimeoutError:
            outcomes[name] = "timeout"

    await asyncio.gather(request("quick", 0), request("slow", 30), request("slower", 60))
    assert outcomes == {"quick": "done", "slow": "timeout", "slower": "timeout"}
    assert len(deadlines) == 0


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    deadlines = Deadlines(RESOLUTION)
    entered = asyncio.Event()

    async def request() -> None:
        with deadlines.within(30):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(request())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_a_cancel_from_elsewhere_at_the_deadline_is_not_swallowed() -> None:
    """Cancelled by its deadline and by someone else at once: the cancel goes on, as with
    asyncio.timeout (not TimeoutError, which would let the handler answer and carry on)."""
    deadlines = Deadlines(RESOLUTION)
    entered = asyncio.Event()
    bounds = []

    async def request() -> None:
        with deadlines.within(30) as bound:
            bounds.append(bound)
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(request())
    await entered.wait()
    deadlines._expire(bounds[0].slot)  # its timer, now rather than in 30 s
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_a_deadline_in_the_past_fires_at_once() -> None:
    deadlines = Deadlines(RESOLUTION)
    with pytest.raises(TimeoutError), deadlines.within(-5.0):
        await asyncio.sleep(30)


async def test_requests_one_after_another_in_a_slot_share_its_one_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The point of the module: a busy server sets a timer per slot, not per request, also when
    each request has left before the next arrives."""
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_at = loop.call_at

    def counting_call_at(when: float, *args: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return call_at(when, *args)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    deadlines = Deadlines(resolution=60.0)
    for _ in range(5):
        with deadlines.within(1.0):
            await asyncio.sleep(0)
    assert len(timers) <= 2  # one slot, or two if the clock crossed a slot boundary
    assert len(deadlines) == 0
