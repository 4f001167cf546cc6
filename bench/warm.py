"""CPU of the warm path in-process: parse → /mutate → /validate → serialise, no network.

Wall time on this VM drifts by tens of percent; instruction counts do not. For a figure that
does not drift, run it twice under callgrind and take the difference per admission:

    N=100 valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python bench/warm.py
    N=600 valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python bench/warm.py

(instructions per admission = (Ir at 600 - Ir at 100) / 500; the imports cancel out).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import POD, StaticPolicies, machine, review_body

from imagegate.admission import review as admission
from imagegate.admission import reviewers
from imagegate.trail import logs
from imagegate.trail.metrics import Metrics


async def admit_all(bodies: list[bytes]) -> None:
    metrics = Metrics()
    source = StaticPolicies()
    mutate = reviewers.Mutator(source, recorders=[metrics])
    validate = reviewers.Validator(source, recorders=[metrics])
    for body in bodies:
        for reviewer in (mutate, validate):
            review = admission.parse_review(body)
            response = await reviewer(review, time.monotonic() + 10)
            json.dumps(response.to_review(review.api_version))


def main() -> None:
    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(logs.JsonFormatter())
    decisions = logging.getLogger("imagegate.admission.decisions")
    decisions.addHandler(handler)
    decisions.setLevel(logging.INFO)
    count = int(os.environ.get("N", "4000"))
    bodies = [review_body(n, POD) for n in range(count)]
    started = time.perf_counter()
    asyncio.run(admit_all(bodies))
    elapsed = time.perf_counter() - started
    print(f"{machine()}: {elapsed / count * 1e6:.0f} µs per admission (/mutate + /validate)")


if __name__ == "__main__":
    main()
