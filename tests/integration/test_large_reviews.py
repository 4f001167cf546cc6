"""Large AdmissionReviews in flight are bounded (README "Bounds"): what bodies in flight hold
stays inside the pod's memory limit, and small reviews are never kept waiting by large ones.

The reviewer here records when each review enters and leaves it, and holds the review named
`hold` until the test lets it go: with `max_large_in_flight=1` a second large review must not
enter before the first has left, while a small one enters at once. Order, not time, is checked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from imagegate.admission import builder
from imagegate.admission import review as admission
from imagegate.admission.server import LARGE_BODY, build_app


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def __call__(
        self, review: admission.AdmissionReview, deadline: float
    ) -> admission.AdmissionResponse:
        name = review.request.name
        self.events.append(f"enter {name}")
        if name == "hold":
            self.holding.set()
            await self.release.wait()
        self.events.append(f"leave {name}")
        return admission.AdmissionResponse(uid=review.request.uid, allowed=True)


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    app = build_app(validate=recorder, mutate=recorder, deadline=30, max_large_in_flight=1)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/validate", recorder
    finally:
        recorder.release.set()
        await runner.cleanup()


def _body(name: str, padding: int) -> bytes:
    review = builder.review_for(builder.pod(name, "cgr.dev/chainguard/static:latest"))
    review["request"]["object"]["metadata"]["annotations"] = {"pad": "a" * padding}
    return json.dumps(review).encode()


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        return r.status


async def test_a_second_large_review_waits_for_the_first_and_a_small_one_does_not(
    served: tuple[str, Recorder],
) -> None:
    url, recorder = served
    async with aiohttp.ClientSession() as session:
        held = asyncio.ensure_future(_post(session, url, _body("hold", 2 * LARGE_BODY)))
        await asyncio.wait_for(recorder.holding.wait(), 10)
        waiting = asyncio.ensure_future(_post(session, url, _body("second", 2 * LARGE_BODY)))
        assert await _post(session, url, _body("small", 100)) == 200
        await asyncio.sleep(0.3)  # room for `second` to enter, were it not bounded
        assert "enter second" not in recorder.events
        recorder.release.set()
        assert await held == 200
        assert await waiting == 200
    assert recorder.events.index("enter small") < recorder.events.index("leave hold")
    assert recorder.events.index("leave hold") < recorder.events.index("enter second")
