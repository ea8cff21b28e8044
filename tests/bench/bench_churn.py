"""Churn model quality on a simulated year: the streaming model against two yardsticks.

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
Usage: python -m tests.bench.bench_churn [--customers 2000] [--days 365] [--seed 11]
       [--model logistic|forest]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import orjson

from models.churn import FEATURES
from streams.churn import ChurnLearner
from streams.exporters.metrics import Metrics
from streams.processor import CustomerProcessor
from streams.settings import load_settings
from streams.simulator import SimConfig, generate
from tests.inprocess import valid_events

FLUSH_EVERY = 5000   # events between flushes (a worker flushes every second)


def replay(args: argparse.Namespace) -> tuple[ChurnLearner, list[dict], int]:
    settings = load_settings(env={})
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

    cfg = SimConfig(seed=args.seed, customers=args.customers, days=args.days)
    for ev in valid_events(generate(cfg), settings):
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
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--model", choices=("logistic", "forest"), default="logistic")
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
