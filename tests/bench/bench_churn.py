"""Churn model quality: the streaming model and the health score against an offline yardstick.

Default: the zoo of churn profiles (tests/bench/churn_profiles.py: usage decline, payment
failures, support pain, silent churn, seasonal usage, pure chance), each a short history, one
table row per profile. ``--simulator``: the project's simulated year, as described next.

Runs the simulator's events through the customer stage in-process (the same code as a worker:
day-close snapshots, delayed labels, the learner, model versions handed to the scorer), then
prints in one run:

- the streaming model's progressive ROC AUC, accuracy, log loss and top-decile precision;
- the AUC of the health score alone as a predictor (lower score = more likely to churn);
- the AUC of an offline batch model (scikit-learn gradient boosting) trained on the first 60 %
  of days and tested on the rest, on the same snapshots, with the streaming model's and the
  health score's AUC on that same test part.

Targets (issue 6): online AUC above the health score's, within 0.03 of the offline yardstick;
accuracy above 80 %.
Usage: python -m tests.bench.bench_churn [--profiles all|name,name] [--customers 250]
       [--days 150] [--seed 1] [--model logistic|forest]
       python -m tests.bench.bench_churn --simulator [--customers 2000] [--days 365] [--seed 11]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import subprocess
import sys
import time
from typing import Any

import orjson

from models.churn import FEATURES
from streams.churn import ChurnLearner
from streams.exporters.metrics import Metrics
from streams.processor import CustomerProcessor
from streams.settings import load_settings
from streams.simulator import SimConfig, generate
from tests.inprocess import valid_events

FLUSH_EVERY = 5000   # events between flushes (a worker flushes every second)


def replay(args: argparse.Namespace, source: Any = None
           ) -> tuple[ChurnLearner, list[dict], int]:
    """Events (the simulator's, or ``source``) through the customer stage and the learner."""
    env = {"VITALS_CHURN__MODEL_SECRET": "bench-only-secret-0123"} if args.model == "forest" else {}
    settings = load_settings(env=env)
    settings = dataclasses.replace(
        settings, churn=dataclasses.replace(settings.churn, model=args.model,
                                            publish_interval_seconds=0.0))
    proc = CustomerProcessor(settings, {}, {}, Metrics(), partition_of=lambda c: 0,
                             wall_clock=None)
    learner = ChurnLearner(settings.churn)
    examples: list[dict] = []
    batch: list[dict] = []
    events = 0
    started = time.monotonic()

    def flush() -> None:
        for message in proc.flush().examples:
            chunk = orjson.loads(message)
            learner.apply(chunk)
            examples.extend(chunk)
        model = learner.publish()
        if model is not None:
            proc.scorer.update(model)

    if source is None:
        source = generate(SimConfig(seed=args.seed, customers=args.customers, days=args.days))
    for ev in valid_events(source, settings):
        batch.append(ev)
        events += 1
        if len(batch) >= FLUSH_EVERY:
            proc.apply(0, batch)
            batch = []
            flush()
            if events % 200_000 < FLUSH_EVERY:
                print(f"\r{events:,} events, {len(examples):,} labelled snapshots, "
                      f"{time.monotonic() - started:.0f} s", end="", file=sys.stderr)
    proc.apply(0, batch)
    flush()
    print(file=sys.stderr)
    return learner, examples, events


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--simulator", action="store_true",
                    help="the project's simulated year instead of the profile zoo")
    ap.add_argument("--profiles", default="all", help="all, or names separated by commas")
    ap.add_argument("--customers", type=int, default=None)
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--model", choices=("logistic", "forest"), default="logistic")
    args = ap.parse_args()
    if not args.simulator:
        zoo(args)
        return
    args.customers = args.customers or 2000
    args.days = args.days or 365
    args.seed = 11 if args.seed is None else args.seed

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    started = time.monotonic()
    learner, examples, events = replay(args)
    elapsed = time.monotonic() - started
    y = [e["y"] for e in examples]
    health_at = FEATURES.index("health_score")
    risk_by_health = [-e["x"][health_at] for e in examples]
    online = learner.metrics_record()
    print(f"{args.customers} customers, {args.days} days, seed {args.seed}, model {args.model}: "
          f"{events:,} events, {len(examples):,} labelled snapshots "
          f"({sum(y) / len(y):.1%} churn within 30 days), {elapsed:.0f} s")
    print(f"streaming model (progressive, {online['labelled']:,} scored): "
          f"AUC {online['auc']:.4f}  accuracy {online['accuracy']:.4f}  "
          f"log loss {online['log_loss']:.4f}  top-decile precision "
          f"{online['precision_top_decile']:.4f}")
    print(f"health score alone (all snapshots):          AUC {roc_auc_score(y, risk_by_health):.4f}")

    days = sorted({e["d"] for e in examples})
    cut = days[0] + 0.6 * (days[-1] - days[0])
    train = [e for e in examples if e["d"] < cut]
    test = [e for e in examples if e["d"] >= cut and e["p"] is not None]
    offline = HistGradientBoostingClassifier(random_state=0)
    offline.fit([e["x"] for e in train], [e["y"] for e in train])
    y_test = [e["y"] for e in test]
    auc_offline = roc_auc_score(y_test, offline.predict_proba([e["x"] for e in test])[:, 1])
    auc_online = roc_auc_score(y_test, [e["p"] for e in test])
    auc_health = roc_auc_score(y_test, [-e["x"][health_at] for e in test])
    print(f"last 40 % of days ({len(test):,} snapshots, {sum(y_test) / len(y_test):.1%} churn):")
    print(f"  offline gradient boosting (trained on first 60 %): AUC {auc_offline:.4f}")
    print(f"  streaming model, same snapshots:                    AUC {auc_online:.4f}")
    print(f"  health score alone, same snapshots:                 AUC {auc_health:.4f}")
    gap = auc_offline - auc_online
    print(f"online - health: {auc_online - auc_health:+.4f} (target > 0); "
          f"offline - online: {gap:+.4f} (target <= 0.03); "
          f"accuracy {online['accuracy']:.4f} (target > 0.80)")


def _auc(y: list[int], scores: list[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, scores) if 0 < sum(y) < len(y) else None


def _f(x: float | None) -> str:
    return "  -   " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def profile_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One profile through the service's churn code, and the yardstick on its snapshots."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from tests.bench.churn_profiles import generate as profile_events

    started = time.monotonic()
    learner, examples, events = replay(args, profile_events(name, args.customers, args.days,
                                                              args.seed))
    rec = learner.metrics_record()
    y = [e["y"] for e in examples]
    days = sorted({e["d"] for e in examples})
    cut = days[0] + 0.6 * (days[-1] - days[0])
    train = [e for e in examples if e["d"] < cut]
    # Only snapshots whose non-churners are labelled too: the last month holds the churners
    # only (a "no churn" label takes the horizon), which would bias any AUC measured there.
    mature = max(e["d"] for e in examples if not e["y"])
    test = [e for e in examples if cut <= e["d"] <= mature and e.get("s")
            and None not in e["s"] and e["p"] is not None]
    y_test = [e["y"] for e in test]
    offline = HistGradientBoostingClassifier(random_state=0)
    offline.fit([e["x"] for e in train], [e["y"] for e in train])
    return {
        "profile": name, "events": events, "snapshots": len(examples),
        "base_rate": sum(y) / len(y), "test": len(test), "seconds": time.monotonic() - started,
        "model_auc": rec["model_auc"], "health_auc": rec["health_auc"],
        "champion_auc": rec["auc"], "champion": rec["champion"],
        "log_loss": rec["log_loss"], "log_loss_constant": rec["log_loss_constant"],
        "ece": rec["ece"],
        # the last 40 % of days: the yardstick and the three, on the same snapshots
        "gb_test": _auc(y_test, list(offline.predict_proba([e["x"] for e in test])[:, 1])),
        "model_test": _auc(y_test, [e["s"][1] for e in test]),
        "health_test": _auc(y_test, [e["s"][2] for e in test]),
        "champion_test": _auc(y_test, [e["p"] for e in test]),
    }


def zoo(args: argparse.Namespace) -> None:
    from tests.bench.churn_profiles import PROFILES

    args.customers = args.customers or 250
    args.days = args.days or 150
    args.seed = 1 if args.seed is None else args.seed
    names = PROFILES if args.profiles == "all" else tuple(args.profiles.split(","))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or "?"
    except OSError:
        commit = "?"
    print(f"# churn profiles: {args.customers} customers, {args.days} days, seed {args.seed}, "
          f"model {args.model}, {time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit}")
    print("Progressive (every labelled prediction) | last 40 % of days, same snapshots")
    header = ("| profile | churn 30d | model AUC | health AUC | champion AUC (now) | "
              "log loss / constant | ECE | GB yardstick | model | health | champion |")
    print(header)
    print("|" + "---|" * 11)
    for name in names:
        r = profile_row(name, args)
        print(f"| {r['profile']} | {r['base_rate']:.1%} | {_f(r['model_auc'])} | "
              f"{_f(r['health_auc'])} | {_f(r['champion_auc'])} ({r['champion']}) | "
              f"{_f(r['log_loss'])} / {_f(r['log_loss_constant'])} | {_f(r['ece'])} | "
              f"{_f(r['gb_test'])} | {_f(r['model_test'])} | {_f(r['health_test'])} | "
              f"{_f(r['champion_test'])} |", flush=True)
        print(f"  ({r['events']:,} events, {r['snapshots']:,} labelled snapshots, "
              f"{r['test']:,} in the last 40 %, {r['seconds']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
