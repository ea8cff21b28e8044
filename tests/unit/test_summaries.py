"""A partition's customer summary is kept by adding and taking away shares: its sums must not
depend on the order of those changes (a restart replays them in another order)."""
from __future__ import annotations

import random
from types import SimpleNamespace

from streams.business import add_to_summary, empty_summary, merge_summaries


def share(score: float, cac: float) -> SimpleNamespace:
    return SimpleNamespace(score=score, grade="green", ttv_days=None, eligible=False,
                           succeeded=False, cac=cac)


def test_sums_do_not_depend_on_the_order_of_changes() -> None:
    rng = random.Random(7)
    final = [share(round(rng.uniform(20, 100), 2), round(rng.uniform(50, 900), 2))
             for _ in range(40)]
    seen = set()
    for seed in range(20):
        order = random.Random(seed)
        summary = empty_summary()
        # Earlier shares that were replaced, in an order of this run's own.
        for e in order.sample(final, len(final)):
            old = share(round(order.uniform(20, 100), 2), e.cac)
            add_to_summary(summary, old, 1)
            add_to_summary(summary, old, -1)
            add_to_summary(summary, e, 1)
        seen.add((summary["health_sum"], summary["cac_sum"]))
    assert len(seen) == 1, seen
    halves = [dict(empty_summary()), dict(empty_summary())]
    for i, e in enumerate(final):
        add_to_summary(halves[i % 2], e, 1)
    merged = merge_summaries(halves)
    assert (merged["health_sum"], merged["cac_sum"]) in seen
