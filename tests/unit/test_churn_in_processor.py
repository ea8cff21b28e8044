"""Churn snapshots, delayed labels and the learner through the customer stage, by hand.

Paying customers p-30 and p-31 subscribe on day 0 and cancel on day 30 and day 31 counted from
their snapshot of day 1 (the first day close after they pay). A "tick" customer moves the
watermark every day so that every day closes. The learner (streams/churn.py ChurnLearner) is
fed what each flush hands out, and publishes to the processor's scorer, as the worker does.
"""
from __future__ import annotations

from typing import Any

import orjson
import pytest

from models.churn import FEATURES
from streams.churn import ChurnLearner, mrr_days_ago, remember_mrr
from streams.state import decode_state, encode_state
from tests.unit.test_health_in_processor import SETTINGS, D, at, event, usage
from tests.unit.test_processor import make

# Churn day; dc - d0 for the day-1 snapshot: 29 and 30. p-stay never churns.
CHURN_DAYS: dict[str, int | None] = {"p-30": 30, "p-31": 31, "p-stay": None}


def script(k: int) -> list[dict[str, Any]]:
    out = [event("support", "tick", at(k, 0.5), type="csat", score=5),
           event("support", "tick", at(k, 12.0), type="csat", score=5)]
    for cid, churn_day in CHURN_DAYS.items():
        if k == 0:
            out += [event("signup", cid, at(0, 9), segment="smb", plan="pro", seats=2),
                    event("billing", cid, at(0, 9.5), type="subscription_started", mrr=50.0)]
        if churn_day is None or k < churn_day:
            out.append(usage(cid, at(k, 10), "u1", "report_created"))
        if k == churn_day:
            out.append(event("billing", cid, at(k, 15), type="subscription_cancelled"))
    return sorted(out, key=lambda e: e["ts"])


class Driver:
    """One processor and one learner; `restart()` rebuilds the processor from its stores."""

    def __init__(self) -> None:
        self.store: dict[str, Any] = {}
        self.clocks: dict[str, Any] = {}
        self.proc, _ = make(self.store, self.clocks)
        self.learner = ChurnLearner(SETTINGS.churn)
        self.sent: list[dict[str, Any]] = []      # every example message, resends included
        self.records: dict[str, dict[str, Any]] = {}

    def day(self, k: int) -> None:
        assert self.proc.apply(0, script(k)) == []
        self.flush()

    def flush(self) -> None:
        out = self.proc.flush()
        for partition, clock in out.clocks:
            self.clocks[str(partition)] = clock
        for message in out.examples:
            chunk = orjson.loads(message)
            self.sent.extend(chunk)
            self.learner.apply(chunk)
        self.records.update((cid, orjson.loads(v)) for cid, v in out.records)
        model = self.learner.publish(now=float(len(self.sent)) * 1e6)  # no rate limit here
        if model is not None:
            self.proc.scorer.update(model)

    def saved(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the changelogs hold now."""
        return ({cid: encode_state(s) for cid, s in self.store.items()},
                orjson.loads(orjson.dumps(self.clocks)))

    def restart(self, saved: tuple[dict[str, Any], dict[str, Any]] | None = None) -> None:
        """A crash: the processor is rebuilt from the changelogs (as of `saved`, else now)."""
        states, clocks = saved or self.saved()
        self.store.clear()
        self.store.update({cid: decode_state(raw) for cid, raw in states.items()})
        self.clocks.clear()
        self.clocks.update(clocks)
        scorer = self.proc.scorer
        self.proc, _ = make(self.store, self.clocks)
        self.proc.assign([0])
        self.proc.scorer = scorer
        self.learner = ChurnLearner(SETTINGS.churn, self.learner.to_bytes())


def labels(examples: list[dict[str, Any]], cid: str) -> dict[int, int]:
    return {e["d"] - D: e["y"] for e in examples if e["c"] == cid}


@pytest.fixture(scope="module")
def straight() -> Driver:
    run = Driver()
    for k in range(0, 80):
        run.day(k)
    return run


def test_snapshots_are_taken_at_day_close_for_paying_customers_only(straight: Driver) -> None:
    days = labels(straight.sent, "p-31")
    # Paying from day 0 09:30: the first day close after that is day 1 (d0 = 1); cancelled on
    # day 31 15:00, so day 31's close (00:00) still saw it paying: d0 = 1 ... 31.
    assert sorted(days) == list(range(1, 32))
    assert not labels(straight.sent, "tick")      # never paid: never snapshot
    assert straight.proc.store["p-stay"].churn.book.days == list(range(D + 46, D + 80))


def test_churn_on_the_30th_day_is_1_and_on_the_31st_is_0(straight: Driver) -> None:
    p30, p31 = labels(straight.sent, "p-30"), labels(straight.sent, "p-31")
    # p-30 churns on day 30: dc - d0 = 29 for d0 = 1, within the horizon.
    assert p30[1] == 1 and all(p30[d] == 1 for d in p30)
    # p-31 churns on day 31: dc - d0 = 30 for d0 = 1 -> 0; d0 = 2 ... 31 -> 1.
    assert p31[1] == 0 and all(p31[d] == 1 for d in range(2, 32))


def test_no_churn_labels_wait_for_horizon_plus_settle_days() -> None:
    run = Driver()
    horizon, settle = SETTINGS.churn.horizon_days, SETTINGS.churn.settle_days
    for k in range(0, 1 + horizon + settle):     # day closes up to d0 = 1 + H + S
        run.day(k)
    assert 1 not in labels(run.sent, "p-stay")   # p-stay's first snapshot is still pending
    run.day(1 + horizon + settle)
    assert 1 not in labels(run.sent, "p-stay")   # settled by the close of the next day only
    run.day(2 + horizon + settle)
    assert labels(run.sent, "p-stay") == {1: 0}


def test_each_snapshot_is_learnt_once(straight: Driver) -> None:
    distinct = {(e["c"], e["d"]) for e in straight.sent}
    # p-30: d0 = 1…30; p-31: 1…31; p-stay: settled up to d0 + H + S <= 79 - 1, so 1…45.
    assert len(distinct) == len(straight.sent) == straight.learner.learned == 30 + 31 + 45


def test_record_shows_the_score_once_a_model_exists(straight: Driver) -> None:
    # p-31 is gone; a fresh paying customer scored by the published model would show it.
    run = Driver()
    for k in range(0, 45):
        run.day(k)
    assert run.proc.scorer.version > 0
    assert run.records["p-30"]["churn"] is None   # churned: not scored any more
    run2 = Driver()
    run2.proc.scorer = run.proc.scorer
    for k in range(0, 3):
        run2.day(k)
    churn = run2.records["p-31"]["churn"]
    assert set(churn) == {"probability", "risk", "model_ready", "drivers"}
    assert 0.0 <= churn["probability"] <= 1.0 and churn["risk"] in ("low", "medium", "high")
    assert churn["model_ready"] is False           # far fewer than churn.min_labelled labels
    assert all(d["feature"] in FEATURES for d in churn["drivers"])


@pytest.mark.parametrize("changelog_written", [True, False])
@pytest.mark.parametrize("crash_day", [5, 31, 33, 40])
def test_a_restart_neither_loses_nor_double_learns(crash_day: int, changelog_written: bool,
                                                   straight: Driver) -> None:
    """Crash after day `crash_day`'s flush delivered its examples, with or without the
    changelog writes that followed; the day's events are replayed (not acknowledged)."""
    run = Driver()
    for k in range(0, crash_day):
        run.day(k)
    before = run.saved()
    run.day(crash_day)
    run.restart(None if changelog_written else before)
    assert run.proc.apply(0, script(crash_day)) == []
    run.flush()
    for k in range(crash_day + 1, 80):
        run.day(k)
    # Resend everything once more: the learner must not learn any of it again.
    learned = run.learner.learned
    assert run.learner.apply(list(run.sent)) == 0 and run.learner.learned == learned
    # Resent examples carry the same label: the distinct ones are exactly the straight run's.
    sent = {(e["c"], e["d"], e["y"]) for e in run.sent}
    assert len(sent) == len({(e["c"], e["d"]) for e in run.sent})
    if not changelog_written and crash_day in (31, 40):   # days that label something
        assert len(run.sent) > len(sent)                  # so something was resent
    assert sorted(sent) == sorted((e["c"], e["d"], e["y"]) for e in straight.sent)
    assert learned == straight.learner.learned


def test_learner_state_round_trip_keeps_model_and_metrics(straight: Driver) -> None:
    again = ChurnLearner(SETTINGS.churn, straight.learner.to_bytes())
    assert again.learned == straight.learner.learned
    assert again.metrics_record() == straight.learner.metrics_record()
    x = orjson.loads(orjson.dumps(straight.sent[0]["x"]))
    from models.churn import decode
    assert again.model.predict(decode(x)) == straight.learner.model.predict(decode(x))


def test_mrr_history_looks_30_days_back() -> None:
    history: list[list[float]] = []
    mrr_by_day = {d: 0.0 if d < 5 else 100.0 if d < 40 else 150.0 if d < 80 else 0.0
                  for d in range(0, 120)}
    for day, mrr in mrr_by_day.items():          # one day close a day, as the stage does
        remember_mrr(history, day, mrr)
        expected = mrr_by_day[day - 30] if day >= 30 else 0.0
        assert mrr_days_ago(history, day, 30) == expected, day
        assert len(history) <= 3                 # only changes, older ones pruned


def test_a_new_model_version_scores_every_paying_customer_at_once() -> None:
    """After a backfill the next day close may be far off: a new version rescores now."""
    trained = Driver()
    for k in range(0, 45):
        trained.day(k)
    run = Driver()
    for k in range(0, 3):                          # scored by no model yet: probability null
        run.day(k)
    assert run.records["p-31"]["churn"]["probability"] is None
    before = dict(run.proc.store["p-31"].churn.book._pending)
    run.proc.scorer = trained.proc.scorer          # as if a version arrived now
    assert run.proc.rescore() >= 1
    out = run.proc.flush()
    record = {c: orjson.loads(v) for c, v in out.records}["p-31"]
    assert record["churn"]["probability"] is not None
    assert run.proc.store["p-31"].churn.book._pending == before   # snapshots untouched
