"""The decision log: one line per denial, warning and rewrite, plain admissions sampled.

With `--log-format json` each line is one JSON object (trail/logs.py formats it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from imagegate.admission import review as admission

logger = logging.getLogger(__name__)


#: `--log-admits`: which plain admissions (allowed, no warning, no rewrite) get a log line.
AdmitLogging = Literal["none", "sampled", "all"]
ADMIT_LOGGING: tuple[AdmitLogging, ...] = ("none", "sampled", "all")
#: `sampled`: the first plain admission and every 100th after it.
SAMPLE_EVERY = 100
#: Seconds between the count lines that stand for the plain admissions not logged.
COUNT_INTERVAL = 60.0


class DecisionLog:
    """One log line per denial, warning and rewrite; plain admissions as `admits` says.

    At 165k admissions a line each is 87 MB of log saying "allowed" again and again. Denials,
    warnings and rewrites are what people look for: always logged. Plain admissions are logged
    all, one in `sample_every`, or none; unless all, a count line ("N admissions allowed in the
    last 60 s") stands for them, written by `run()` (or by the next decision, when it is late).
    With `--log-format json` each line is one JSON object (trail/logs.py).
    """

    def __init__(
        self,
        admits: AdmitLogging = "sampled",
        *,
        sample_every: int = SAMPLE_EVERY,
        interval: float = COUNT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._admits = admits
        self._every = max(1, sample_every)
        self._interval = interval
        self._clock = clock
        self._window_start = clock()
        self._allowed = 0  # plain admissions in this window
        self._logged = 0  # of which logged
        self._seen = 0  # plain admissions ever: the sample is every `_every`-th

    def log(
        self,
        webhook: str,
        request: admission.AdmissionRequest,
        described: str,
        allowed: bool,
        images: Sequence[Mapping[str, Any]],
        warnings: Sequence[str] = (),
        *,
        rewritten: bool = False,
    ) -> None:
        if allowed and not warnings and not rewritten and not self._log_plain():
            return
        log_decision(webhook, request, described, allowed, images, warnings)

    def _log_plain(self) -> bool:
        """Whether this plain admission gets its line; counts it either way."""
        if self._admits == "all":
            return True
        if self._clock() - self._window_start >= self._interval:
            self.flush()
        self._seen += 1
        self._allowed += 1
        sampled = self._admits == "sampled" and self._seen % self._every == 1 % self._every
        self._logged += sampled
        return sampled

    def flush(self) -> None:
        """The count line for the window now ending (none for an empty one); a new window."""
        now = self._clock()
        seconds = now - self._window_start
        if self._allowed:
            logger.info(
                "%d admissions allowed in the last %.0f s (%d logged)",
                self._allowed,
                seconds,
                self._logged,
                extra={
                    "admissions": {
                        "allowed": self._allowed,
                        "logged": self._logged,
                        "seconds": round(seconds, 3),
                    }
                },
            )
        self._window_start, self._allowed, self._logged = now, 0, 0

    async def run(self) -> None:
        """Write the count line every `interval` seconds (a background task of the operator)."""
        if self._admits == "all":
            return
        while True:
            await asyncio.sleep(max(0.0, self._window_start + self._interval - self._clock()))
            if self._clock() - self._window_start >= self._interval:
                self.flush()


def log_decision(
    webhook: str,
    request: admission.AdmissionRequest,
    described: str,
    allowed: bool,
    images: Sequence[Mapping[str, Any]],
    warnings: Sequence[str],
) -> None:
    """One log line per decision; with `--log-format json`, one JSON object (logs.py)."""
    logger.info(
        "%s %s %s/%s: %s",
        webhook,
        request.operation,
        request.namespace,
        described,
        "allowed" if allowed else "denied",
        extra={
            "decision": {
                "webhook": webhook,
                "uid": request.uid,
                "operation": request.operation,
                "namespace": request.namespace,
                "object": described,
                "user": request.user_info.username,
                "dryRun": request.dry_run,
                "allowed": allowed,
                "images": list(images),
                "warnings": list(warnings),
            }
        },
    )
