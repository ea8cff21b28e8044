"""Health grades and alerts of simulated customers: is the spread believable?

Runs the simulator's events through the customer stage in-process (no broker: the stage logic
is the same, and a year of events takes seconds) and prints grades by segment at the end.
Usage: python -m tests.bench.grade_spread [--customers N] [--days D] [--seed S]
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import orjson

from streams.exporters.metrics import Metrics
from streams.processor import CustomerProcessor
from streams.settings import load_settings
from streams.simulator import SimConfig, generate
from tests.inprocess import valid_events


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=300)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    settings = load_settings(env={})
    proc = CustomerProcessor(settings, {}, {}, Metrics(), partition_of=lambda c: 0,
                             wall_clock=None)
    batch, alerts = [], Counter()
    for ev in valid_events(generate(SimConfig(seed=args.seed, customers=args.customers,
                                              days=args.days)), settings):
        batch.append(ev)
        if len(batch) >= 2000:
            proc.apply(0, batch)
            batch = []
            for _, value in proc.flush().alerts:
                a = orjson.loads(value)
                alerts[(a["rule"], a["status"])] += 1
    proc.apply(0, batch)
    for _, value in proc.flush().alerts:
        a = orjson.loads(value)
        alerts[(a["rule"], a["status"])] += 1
    grades: dict[str, Counter] = defaultdict(Counter)
    for e in proc.contrib.values():
        grades[e.segment][e.grade] += 1
    print(f"{args.customers} customers, {args.days} days, seed {args.seed}")
    print(f"{'segment':<12}{'green':>8}{'yellow':>8}{'red':>8}")
    for segment in sorted(grades):
        g = grades[segment]
        print(f"{segment:<12}{g['green']:>8}{g['yellow']:>8}{g['red']:>8}")
    total = sum(grades.values(), Counter())
    print(f"{'all':<12}{total['green']:>8}{total['yellow']:>8}{total['red']:>8}")
    print("alert transitions:", ", ".join(f"{r} {s} {n}" for (r, s), n in sorted(alerts.items())))


if __name__ == "__main__":
    main()
