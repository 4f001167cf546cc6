"""Decisions per second of the pure engine: a 3-container Pod against 20 policies."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import NAMESPACE_LABELS, POD, machine, twenty_policies

from imagegate.core import workloads
from imagegate.policy import engine


def decide() -> engine.Decision:
    images = workloads.find_images(POD)
    chosen = engine.applicable(POLICIES, "shop", NAMESPACE_LABELS)
    planned = engine.plan_rewrites(images, chosen)
    engine.signature_checks(planned, chosen)
    return engine.evaluate(planned, chosen, {})


POLICIES = twenty_policies()


def main() -> None:
    decision = decide()
    assert decision.allowed, decision.denial_message()
    rates = []
    for _ in range(5):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            decide()
            count += 1
        rates.append(count / (time.perf_counter() - started))
    print(
        f"engine: {statistics.median(rates):,.0f} decisions/s (median of 5 one-second runs; "
        f"min {min(rates):,.0f}, max {max(rates):,.0f}); "
        f"{1e6 / statistics.median(rates):.0f} µs per decision; {machine()}"
    )


if __name__ == "__main__":
    main()
