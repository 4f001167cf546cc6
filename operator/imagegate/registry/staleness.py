"""Stale-if-error: what may be answered from memory while a registry cannot be reached.

An outage is not a verdict on an image. While a registry is unreachable (5xx, timeouts,
connection errors, rate limiting), the last digest verified for a tag, and the last positive
signature verdict for a digest, may be served for a bounded time (`--stale-digest-ttl`).
Refusals (401/403), "not found" (404) and digest mismatches are answers: never served stale.

Each stale answer is reported here, so the admission that used it says so in a warning. The
reviewers open a `collecting()` scope per admission; caches `report()` into it. A context
variable, so the report finds its admission through `asyncio.gather` and concurrent requests
never see each other's notices. No aiohttp here: the pure reviewers import this module.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass

from imagegate.registry.errors import RateLimited, RegistryUnavailable

#: One hour: long enough to ride out a registry incident, short enough that a tag moved during
#: it is followed soon after (and a revoked signature stops being trusted).
STALE_TTL = 3600.0

#: The errors that mean "no answer", as opposed to an answer imagegate must honour.
UNREACHABLE: tuple[type[Exception], ...] = (RegistryUnavailable, RateLimited)


@dataclass(frozen=True)
class StaleAnswer:
    """A tag's digest or a digest's verdict, served from memory because `registry` was down."""

    registry: str
    what: str  # "digest" or "signature verdict"
    subject: str  # "tag T" or "digest D"
    age: float

    def warning(self) -> str:
        return (
            f"imagegate: registry {self.registry} unreachable; used the {self.what} verified "
            f"{self.age:.0f}s ago for {self.subject}"
        )


_collected: contextvars.ContextVar[list[StaleAnswer] | None] = contextvars.ContextVar(
    "imagegate_stale_answers", default=None
)


class collecting:  # lower case: it reads as the function it replaced
    """The stale answers served within this block (one admission).

    A class, not `@contextlib.contextmanager`: every admission opens one, and a generator-based
    context manager costs several times as much to enter and leave.
    """

    __slots__ = ("_answers", "_token")

    def __enter__(self) -> list[StaleAnswer]:
        self._answers: list[StaleAnswer] = []
        self._token = _collected.set(self._answers)
        return self._answers

    def __exit__(self, *exc_info: object) -> None:
        _collected.reset(self._token)


def report(answer: StaleAnswer) -> None:
    collected = _collected.get()
    if collected is not None:
        collected.append(answer)


def served(answer: StaleAnswer, on_stale: Callable[[str], None] | None) -> None:
    """`answer` is being served from memory: the admission's warning, and the metric."""
    report(answer)
    if on_stale is not None:
        on_stale(answer.registry)


def warnings(answers: list[StaleAnswer]) -> list[str]:
    """One warning per distinct stale answer, in the order they were served."""
    first: dict[tuple[str, str, str], StaleAnswer] = {}
    for answer in answers:
        first.setdefault((answer.registry, answer.what, answer.subject), answer)
    return [answer.warning() for answer in first.values()]
