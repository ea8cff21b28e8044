"""`make chaos`: the determinism and crash matrices, each run compared with a reference run.

    python -m tests.chaos.matrix [--customers N] [--days D] [--seeds 1,2] [--kills 5]
                                 [--only "PART|PART"] [--markdown]

One dataset per seed (simulated, with bad and duplicate records) is written to shared input
topics. The reference is one worker on the pre-filled topics. Every other scenario changes one
thing: how events arrive (burst while running, paced), how many workers share the work (2, 3,
5; 3 and 5 do not divide the 4 partitions), workers joining or leaving, SIGKILLs at seeded random
moments, the RocksDB store. Differences are listed field by field; the exit code is 1 when any
scenario differs.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.broker import EmbeddedBroker
from streams.events import InvalidEvent, parse_rfc3339
from streams.simulator import SimConfig, generate
from tests.chaos.harness import Comparison, Outputs, Run, compare, fill, kill_moments, report
from tests.integration.kafka import In


@dataclass
class Scenario:
    name: str
    workers: int
    action: Callable[[Context, Run], None]
    store: str = "memory://"
    own_input: bool = False   # events produced while the run is up, into topics of its own


@dataclass
class Context:
    broker: EmbeddedBroker
    events: list[tuple[str, Any]]
    span: float               # seconds the reference took to work off the input
    seed: int
    kills: int


def prefilled(ctx: Context, run: Run) -> None:
    run.start()


def burst(ctx: Context, run: Run) -> None:
    run.start()
    In(ctx.broker.address).send_events(run.inputs, ctx.events)


def paced(ctx: Context, run: Run) -> None:
    """The same events at about a third of the reference's speed, in file order."""
    run.start()
    producer = In(ctx.broker.address)
    seconds = max(20.0, 3 * ctx.span)
    chunk = max(1, len(ctx.events) // int(seconds * 10))
    for i in range(0, len(ctx.events), chunk):
        producer.send_events(run.inputs, ctx.events[i:i + chunk])
        time.sleep(0.1)


def joining(ctx: Context, run: Run) -> None:
    run.start(1)
    time.sleep(0.3 * ctx.span)
    run.add_worker()


def leaving(ctx: Context, run: Run) -> None:
    run.start()
    time.sleep(0.4 * ctx.span)
    run.stop_worker(len(run.procs) - 1)


def kills(ctx: Context, run: Run) -> None:
    run.start()
    _kill_at_random(ctx, run)


def burst_and_kills(ctx: Context, run: Run) -> None:
    """The burst, with workers killed at random moments while they work it off."""
    run.start()
    In(ctx.broker.address).send_events(run.inputs, ctx.events)
    _kill_at_random(ctx, run)


def _kill_at_random(ctx: Context, run: Run) -> None:
    rng = random.Random(ctx.seed * 7919 + run.workers)
    started = time.monotonic()
    for moment in kill_moments(ctx.seed + run.workers, ctx.kills, max(ctx.span, 10.0)):
        time.sleep(max(0.0, started + moment - time.monotonic()))
        run.kill_and_restart(rng.randrange(len(run.procs)))


SCENARIOS = [
    Scenario("prefilled, 2 workers", 2, prefilled),
    Scenario("prefilled, 3 workers", 3, prefilled),
    Scenario("prefilled, 5 workers", 5, prefilled),
    Scenario("burst while running, 1 worker", 1, burst, own_input=True),
    Scenario("paced, 1 worker", 1, paced, own_input=True),
    Scenario("burst while running, 2 workers", 2, burst, own_input=True),
    Scenario("second worker joins", 2, joining),
    Scenario("one of 2 workers leaves", 2, leaving),
    Scenario("SIGKILL, 1 worker, memory", 1, kills),
    Scenario("SIGKILL, 1 worker, rocksdb", 1, kills, store="rocksdb://"),
    Scenario("SIGKILL, 2 workers, memory", 2, kills),
    Scenario("SIGKILL, 2 workers, rocksdb", 2, kills, store="rocksdb://"),
    Scenario("SIGKILL, 3 workers, memory", 3, kills),
    Scenario("burst + SIGKILL, 2 workers, rocksdb", 2, burst_and_kills, store="rocksdb://",
             own_input=True),
    Scenario("burst + SIGKILL, 3 workers, memory", 3, burst_and_kills, own_input=True),
]


def hostile(events: list[tuple[str, Any]], seed: int) -> list[tuple[str, Any]]:
    """The simulated history made harder, deterministically per seed: 0.5 % of the usage and
    feature events arrive up to 20 hours late (in their partition, within the allowed
    lateness), and a few events carry clocks of 2099 (``future_ts``) or 1970 (``invalid_ts``).
    The simulator's own bad records add clocks weeks ahead but in the past."""
    rng = random.Random(seed * 104729)
    times = [_event_time(e) for _, e in events]
    out: list[tuple[float, int, tuple[str, Any]]] = []
    last = times[0] or 0.0
    for i, ((family, event), ts) in enumerate(zip(events, times, strict=True)):
        when = last if ts is None else ts
        last = when
        if ts is not None and family in ("usage", "feature") and rng.random() < 0.005:
            when = ts + rng.uniform(1, 20) * 3600          # produced later than its time
        out.append((when, i, (family, event)))
        if isinstance(event, dict) and "event_id" in event and "ts" in event \
                and rng.random() < 0.001:
            bad = dict(event, event_id=f"{event['event_id']}-clock",
                       ts=rng.choice(("2099-06-01T00:00:00Z", "1970-01-02T00:00:00Z")))
            out.append((when, i, (family, bad)))
    out.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in out]


def _event_time(event: Any) -> float | None:
    """Its ts in epoch seconds (the simulator writes RFC 3339 text or epoch numbers)."""
    if not isinstance(event, dict):
        return None
    ts = event.get("ts")
    if isinstance(ts, int | float):
        return float(ts) / 1000 if ts > 1e11 else float(ts)
    try:
        return parse_rfc3339(str(ts))
    except InvalidEvent:     # the simulator's bad records
        return None


def run_seed(broker: EmbeddedBroker, workdir: Path, seed: int, customers: int, days: int,
             kill_count: int, only: set[str] | None) -> list[tuple[str, Comparison, Run]]:
    prefix = f"cx{seed}"
    events = hostile(list(generate(SimConfig(seed=seed, customers=customers, days=days,
                                             bad_fraction=0.005, duplicate_fraction=0.01))),
                     seed)
    fill(broker.address, prefix, events)
    reference = Run(broker.url, broker.address, prefix, "ref", 1, workdir).start()
    try:
        span = reference.wait_caught_up(timeout=900)
        expected = reference.outputs()
    finally:
        reference.stop()
    print(f"seed {seed}: {len(events)} events, reference caught up in {span:.0f} s",
          flush=True)
    ctx = Context(broker, events, span, seed, kill_count)
    results = []
    for i, scenario in enumerate(SCENARIOS):
        if only and not any(o in scenario.name for o in only):
            continue
        name = f"s{i}"
        run = Run(broker.url, broker.address, prefix, name, scenario.workers, workdir,
                  store=scenario.store,
                  input_prefix=f"{prefix}-{name}" if scenario.own_input else prefix)
        try:
            scenario.action(ctx, run)
            run.wait_caught_up(timeout=900)
            actual: Outputs = run.outputs()
        finally:
            run.stop()
        result = compare(expected, actual)
        print(report(f"seed {seed}, {scenario.name} ({run.kills} kills)", result, limit=15),
              flush=True)
        results.append((scenario.name, result, run))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=60)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--only", default="", help="parts of scenario names, separated by |")
    parser.add_argument("--markdown", action="store_true", help="print the results table")
    args = parser.parse_args(argv)
    only = {o.strip() for o in args.only.split("|") if o.strip()} or None
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitals-chaos-") as tmp:
        workdir = Path(tmp)
        with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
            for seed in (int(s) for s in args.seeds.split(",")):
                for name, result, run in run_seed(broker, workdir, seed, args.customers,
                                                  args.days, args.kills, only):
                    rows.append((seed, name, run.kills, result))
    if args.markdown:
        print("\n| seed | scenario | kills | keys compared | differences | churn fields apart "
              "| daily-series differences |")
        print("|---|---|---|---|---|---|---|")
        for seed, name, killed, r in rows:
            print(f"| {seed} | {name} | {killed} | {r.keys} | {len(r.differences)} "
                  f"| {r.churn_differences} | {len(r.series)} |")
    return 1 if any(not r.ok for *_, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
