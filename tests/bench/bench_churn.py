"""Churn model quality: the streaming model and the health score against an offline yardstick.

Default: the zoo of churn profiles (tests/bench/churn_profiles.py: usage decline, payment
failures, support pain, silent churn, seasonal usage, pure chance), each a short history: one
row per profile of model quality, one per profile and alert rule of alert quality
(models/alert_quality.py), and which targets hold (tests/bench/README.md).
``--simulator``: the project's simulated year, as described next.

Runs the simulator's events through the customer stage in-process (the same code as a worker:
day-close snapshots, delayed labels, the learner, model versions handed to the scorer), then
prints in one run:

- the streaming model's progressive ROC AUC, accuracy, log loss and top-decile precision;
- the AUC of the health score alone as a predictor (lower score = more likely to churn);
- the AUC of an offline batch model (scikit-learn gradient boosting) trained on the first 60 %
  of days and tested on the rest, on the same snapshots, with the streaming model's and the
  health score's AUC on that same test part.

Its targets: online AUC above the health score's, within 0.03 of the offline yardstick;
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

from models.alert_quality import AlertQuality, alert_quality, episodes
from models.churn import FEATURES
from streams.churn import ChurnLearner
from streams.events import parse_rfc3339
from streams.exporters.metrics import Metrics
from streams.processor import CustomerProcessor
from streams.settings import load_settings
from streams.simulator import SimConfig, generate
from tests.inprocess import valid_events

FLUSH_EVERY = 5000   # events between flushes (a worker flushes every second)


@dataclasses.dataclass
class Replay:
    """What one replay produced: the learner, the labelled snapshots and what happened."""
    learner: ChurnLearner
    examples: list[dict]
    events: int
    alerts: list[tuple[str, str, str, float]] = dataclasses.field(default_factory=list)
    paying_from: dict[str, float] = dataclasses.field(default_factory=dict)
    churned_at: dict[str, float] = dataclasses.field(default_factory=dict)
    ready_at: float | None = None      # event time when the scorer first had a ready model
    last_ts: float = 0.0
    first_ts: float | None = None
    # (event time, new champion) at each change of champion
    switches: list[tuple[float, str]] = dataclasses.field(default_factory=list)


def replay(args: argparse.Namespace, source: Any = None, settings: Any = None) -> Replay:
    """Events (the simulator's, or ``source``) through the customer stage and the learner."""
    env = {"VITALS_CHURN__MODEL_SECRET": "bench-only-secret-0123"} if args.model == "forest" else {}
    settings = settings or load_settings(env=env)
    settings = dataclasses.replace(
        settings, churn=dataclasses.replace(settings.churn, model=args.model,
                                            publish_interval_seconds=0.0))
    proc = CustomerProcessor(settings, {}, {}, Metrics(), partition_of=lambda c: 0,
                             wall_clock=None)
    out = Replay(ChurnLearner(settings.churn), [], 0)
    batch: list[dict] = []
    started = time.monotonic()

    def flush() -> None:
        flushed = proc.flush()
        for message in flushed.examples:
            chunk = orjson.loads(message)
            out.learner.apply(chunk)
            out.examples.extend(chunk)
        for _, raw in flushed.alerts:
            alert = orjson.loads(raw)
            out.alerts.append((alert["subject"]["customer_id"], alert["rule"], alert["status"],
                               parse_rfc3339(alert["as_of"])))
        before = out.learner.champion
        model = out.learner.publish()
        if model is not None:
            proc.scorer.update(model)
            if out.learner.champion != before:
                out.switches.append((out.last_ts, out.learner.champion))
        if out.ready_at is None and proc.scorer.ready:
            out.ready_at = out.last_ts

    if source is None:
        source = generate(SimConfig(seed=args.seed, customers=args.customers, days=args.days))
    for ev in valid_events(source, settings):
        batch.append(ev)
        out.events += 1
        out.last_ts = max(out.last_ts, ev["ts"])
        out.first_ts = ev["ts"] if out.first_ts is None else min(out.first_ts, ev["ts"])
        if ev["family"] == "billing" and ev.get("type") == "subscription_started":
            out.paying_from.setdefault(ev["customer_id"], ev["ts"])
        elif ev["family"] == "billing" and ev.get("type") == "subscription_cancelled":
            out.churned_at.setdefault(ev["customer_id"], ev["ts"])
        if len(batch) >= FLUSH_EVERY:
            proc.apply(0, batch)
            batch = []
            flush()
            if out.events % 200_000 < FLUSH_EVERY:
                print(f"\r{out.events:,} events, {len(out.examples):,} labelled snapshots, "
                      f"{time.monotonic() - started:.0f} s", end="", file=sys.stderr)
    proc.apply(0, batch)
    flush()
    print(file=sys.stderr)
    return out


def rule_quality(run: Replay, rule: str, horizon_days: float,
                 after: float | None = None) -> AlertQuality:
    """One rule's precision, recall, lead time and flaps over the paying customers, each
    watched from when it started paying (or ``after``, if later) to the end of the data."""
    start_at = after or 0.0
    observed = {c: (max(t, start_at), run.last_ts) for c, t in run.paying_from.items()
                if run.churned_at.get(c, run.last_ts) > start_at}
    by = episodes((c, status, at) for c, r, status, at in run.alerts if r == rule)
    return alert_quality(by, run.churned_at, observed, horizon_days)


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
    run = replay(args)
    learner, examples, events = run.learner, run.examples, run.events
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


ALERT_RULES = ("churn_risk_high", "health_red")


def profile_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One profile through the service's churn code, and the yardstick on its snapshots."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from tests.bench.churn_profiles import generate as profile_events

    started = time.monotonic()
    settings = load_settings(env={})
    run = replay(args, profile_events(name, args.customers, args.days, args.seed), settings)
    learner, examples = run.learner, run.examples
    rec = learner.metrics_record()
    y = [e["y"] for e in examples]
    days = sorted({e["d"] for e in examples})
    cut = days[0] + 0.6 * (days[-1] - days[0])
    horizon = settings.churn.horizon_days
    # Trained on what is known at the cut: a snapshot's label needs the horizon after it, so
    # the snapshots of the last horizon before the cut would carry the test period's churns.
    train = [e for e in examples if e["d"] + horizon < cut]
    # Only snapshots whose non-churners are labelled too: the last month holds the churners
    # only (a "no churn" label takes the horizon), which would bias any AUC measured there.
    mature = max(e["d"] for e in examples if not e["y"])
    test = [e for e in examples if cut <= e["d"] <= mature and e.get("s")
            and None not in e["s"] and e["p"] is not None]
    y_test = [e["y"] for e in test]
    # Progressive, exactly (not the learner's 1000-bin histograms), on the snapshots where the
    # published probability and both candidates' are known, up to the last day whose
    # non-churners are labelled (as the last 40 %: past it, only churners); the champion's is
    # the score of the candidate that published it (to 6 digits as the candidates', not the 4
    # published): its figure then equals a candidate's wherever that one published throughout.
    scored = [e for e in examples if e["p"] is not None and e.get("s") and None not in e["s"]
              and e["d"] <= mature]
    y_scored = [e["y"] for e in scored]
    # Every published probability up to that day (the health score's before the model's
    # first version too): what the log losses are measured on.
    published = [e for e in examples if e["p"] is not None and e["d"] <= mature]
    y_published = [e["y"] for e in published]
    rate = sum(y_published) / len(y_published) if published else 0.5
    gb_test = None
    # A short history may leave no labelled snapshot (or one class only) before the cut.
    if len({e["y"] for e in train}) == 2 and test:
        offline = HistGradientBoostingClassifier(random_state=0)
        offline.fit([e["x"] for e in train], [e["y"] for e in train])
        gb_test = _auc(y_test, list(offline.predict_proba([e["x"] for e in test])[:, 1]))
    return {
        "profile": name, "events": run.events, "snapshots": len(examples),
        "base_rate": sum(y) / len(y), "test": len(test), "seconds": time.monotonic() - started,
        "model_auc": _auc(y_scored, [e["s"][1] for e in scored]),
        "health_auc": _auc(y_scored, [e["s"][2] for e in scored]),
        "champion_auc": _auc(y_scored, [_published(e)[1] for e in scored]),
        "champion": rec["champion"],
        # As the learner reports it (churn_model): every label so far, so the last month
        # weighs its churners without their non-churners.
        "learner_log_loss": rec["log_loss"], "learner_log_loss_constant": rec["log_loss_constant"],
        # Up to the last day whose non-churners are labelled, as the AUCs: the published
        # probability, the best constant in hindsight, and a constant learnt online.
        "log_loss": _log_loss(y_published, [e["p"] for e in published]),
        "log_loss_constant": _log_loss(y_published, [rate] * len(published)),
        "log_loss_online": online_constant_log_loss(
            examples, horizon + settings.churn.settle_days + 1, published),
        "ece": rec["ece"],
        # the last 40 % of days: the yardstick and the three, on the same snapshots
        "gb_test": gb_test,
        "model_test": _auc(y_test, [e["s"][1] for e in test]),
        "health_test": _auc(y_test, [e["s"][2] for e in test]),
        "champion_test": _auc(y_test, [_published(e)[1] for e in test]),
        "switches": [(int((t - (run.first_ts or 0.0)) // 86400), who) for t, who in run.switches],
        "published": published_by(scored),
        # churn_risk_high can fire only once the model is ready: watched from then on
        "alerts": {rule: rule_quality(run, rule, horizon,
                                      run.ready_at if rule.startswith("churn") else None)
                   for rule in ALERT_RULES},
    }


def _log_loss(y: list[int], p: list[float]) -> float | None:
    if not y:
        return None
    return -sum(math.log(q if t else 1.0 - q) for t, q in zip(y, p, strict=True)) / len(y)


def online_constant_log_loss(examples: list[dict], known_after_days: int,
                             judged: list[dict]) -> float | None:
    """Log loss of a constant that is learnt online: at snapshot day d, the churn rate of the
    snapshots of days up to d - ``known_after_days`` (both classes labelled by then; Laplace
    smoothed), over the ``judged`` snapshots. The "constant" column is the best constant in
    hindsight, which no online predictor can know in advance."""
    by_day: dict[int, list[int]] = {}
    for e in examples:
        by_day.setdefault(e["d"], [0, 0])
        by_day[e["d"]][0] += e["y"]
        by_day[e["d"]][1] += 1
    days = sorted(by_day)
    rate: dict[int, float] = {}
    total = n = 0.0
    i = 0
    for d in days:
        while i < len(days) and days[i] <= d - known_after_days:
            total += by_day[days[i]][0]
            n += by_day[days[i]][1]
            i += 1
        rate[d] = (total + 1.0) / (n + 2.0)
    return _log_loss([e["y"] for e in judged], [rate[e["d"]] for e in judged])


def _published(e: dict) -> tuple[str | None, float]:
    """Which candidate gave a snapshot's published probability (the one whose calibrated
    score it is, rounded to 4 digits), and that score; (None, p) if neither."""
    p, sc = e["p"], e["s"]
    for who, score in (("health", sc[2]), ("model", sc[1])):
        if abs(p - score) <= 0.5e-4 + 1e-9:
            return who, score
    return None, p


def published_by(examples: list[dict]) -> dict[str, dict[str, Any]]:
    """The published probabilities split by the candidate that gave them (the one whose
    calibrated score at the snapshot it equals): how many, the churn rate among them, their
    mean, and their AUC; the two parts pool into the progressive champion figure, which is
    fair only if both are calibrated (mean probability = churn rate)."""
    parts: dict[str, tuple[list[int], list[float]]] = {"health": ([], []), "model": ([], [])}
    for e in examples:
        p, sc = e["p"], e.get("s")
        if p is None or not sc or None in sc:
            continue
        who = _published(e)[0]
        if who is not None:
            parts[who][0].append(e["y"])
            parts[who][1].append(p)
    return {who: {"n": len(y), "rate": sum(y) / len(y) if y else None,
                  "mean_p": sum(ps) / len(ps) if ps else None, "auc": _auc(y, ps) if y else None}
            for who, (y, ps) in parts.items()}


def _pct(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.0%}"


def _days(x: float | None) -> str:
    return " - " if x is None else f"{x:.0f}"


def _ok(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def targets(r: dict[str, Any]) -> dict[str, bool | None]:
    """The targets every profile is held to (tests/bench/README.md)."""
    risk: AlertQuality = r["alerts"]["churn_risk_high"]
    chance = r["profile"] == "chance"

    def at_least(a: float | None, b: float | None) -> bool | None:
        return None if a is None or b is None else a >= b

    both = [at_least(r["champion_auc"], r["health_auc"]),
            at_least(r["champion_test"], r["health_test"])]
    return {
        "champion >= health": None if None in both else all(both),
        "model within 0.02 of GB": None if chance else at_least(
            r["model_test"], None if r["gb_test"] is None else r["gb_test"] - 0.02),
        "precision >= 2x base": None if chance else at_least(risk.customer_precision,
                                                              2 * r["base_rate"]),
        "log loss <= online constant": at_least(r["log_loss_online"], r["log_loss"]),
        "<= 1 flap/quarter": all(q.max_flaps_in_quarter <= 1 for q in r["alerts"].values()),
        "chance: flagged < 2x base": (None if not chance or risk.flagged_share is None
                                      else risk.flagged_share < 2 * r["base_rate"]),
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
              "log loss / constant / online constant | learner's log loss / constant | ECE | "
              "GB yardstick | model | health | champion |")
    print(header)
    print("|" + "---|" * 12)
    rows = []
    for name in names:
        r = profile_row(name, args)
        rows.append(r)
        print(f"| {r['profile']} | {r['base_rate']:.1%} | {_f(r['model_auc'])} | "
              f"{_f(r['health_auc'])} | {_f(r['champion_auc'])} ({r['champion']}) | "
              f"{_f(r['log_loss'])} / {_f(r['log_loss_constant'])} / "
              f"{_f(r['log_loss_online'])} | {_f(r['learner_log_loss'])} / "
              f"{_f(r['learner_log_loss_constant'])} | {_f(r['ece'])} | "
              f"{_f(r['gb_test'])} | {_f(r['model_test'])} | {_f(r['health_test'])} | "
              f"{_f(r['champion_test'])} |", flush=True)
        print(f"  ({r['events']:,} events, {r['snapshots']:,} labelled snapshots, "
              f"{r['test']:,} in the last 40 %, {r['seconds']:.0f} s)", file=sys.stderr)
    print()
    print("Alerts (paying customers; precision: customers / firings; lead: median days)")
    print("| profile | rule | flagged | firings | precision | recall | lead | "
          "flaps/customer/quarter (max) |")
    print("|" + "---|" * 8)
    for r in rows:
        for rule, q in r["alerts"].items():
            print(f"| {r['profile']} | {rule} | {q.flagged}/{q.customers} "
                  f"({_pct(q.flagged_share)}) | {q.firings} | {_pct(q.customer_precision)} / "
                  f"{_pct(q.precision)} | {q.caught}/{q.churners} ({_pct(q.recall)}) | "
                  f"{_days(q.lead_days_median)} | "
                  f"{_f(q.flaps_per_quarter)} ({q.max_flaps_in_quarter}) |")
    print()
    print("Published probability by the candidate that gave it (progressive; the champion "
          "figure pools them)")
    print("| profile | champion changes (day) | health: snapshots, churn, mean p, AUC | "
          "model: snapshots, churn, mean p, AUC |")
    print("|" + "---|" * 4)
    for r in rows:
        cells = []
        for who in ("health", "model"):
            q = r["published"][who]
            cells.append("-" if not q["n"] else
                         f"{q['n']:,}, {_pct(q['rate'])}, {_pct(q['mean_p'])}, {_f(q['auc'])}")
        changes = ", ".join(f"{who} d{d}" for d, who in r["switches"]) or "none"
        print(f"| {r['profile']} | {changes} | {cells[0]} | {cells[1]} |")
    print()
    print("Targets")
    names_t = list(targets(rows[0])) if rows else []
    print("| profile | " + " | ".join(names_t) + " |")
    print("|" + "---|" * (len(names_t) + 1))
    for r in rows:
        print(f"| {r['profile']} | " + " | ".join(_ok(v) for v in targets(r).values()) + " |")


if __name__ == "__main__":
    main()
