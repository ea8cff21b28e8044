"""Per-rule alert quality on the churn labels: the book carries the firings, the learner judges
them (firings, precision, median lead), keeps them across restarts and publishes them."""
from __future__ import annotations

import pickle
import statistics
from typing import Any

import orjson
import pytest

from models.activity import DAY_SECONDS
from models.churn import (
    Example,
    LabelBook,
    SnapshotRefused,
    decode_snapshot,
    encode,
    encode_snapshot,
    snapshot_vector,
)
from streams.churn import ChurnLearner, ChurnScorer, example_value
from tests.unit.test_churn_in_processor import Driver
from tests.unit.test_churn_stream import settings_with
from tests.unit.test_health_in_processor import SETTINGS, D, at, event, usage

X = encode(snapshot_vector({"health_score": 30.0}))


def ex(cid: str, day: int, y: int, rules: list[str] | None = None, lead: int | None = None
       ) -> dict[str, Any]:
    """An examples-topic message as ``example_value`` writes it."""
    out: dict[str, Any] = {"c": cid, "d": D + day, "x": X, "y": y, "p": None, "v": 0}
    if rules:
        out["a"] = rules
    if lead is not None:
        out["l"] = lead
    return out


# --- the book ------------------------------------------------------------------------------

def test_the_book_hands_fired_rules_and_lead_days_to_the_labelled_examples() -> None:
    book = LabelBook()
    book.add(100, {}, 0.4, 1, alerts=["health_red"])
    book.add(101, {}, 0.5, 1)
    book.add(110, {}, 0.6, 1, [0.6, 0.5, 0.4], alerts=["churn_risk_high", "health_red"])
    got = {e.day: (e.label, e.alerts, e.lead_days) for e in book.on_churn(130)}
    assert got == {100: (0, ("health_red",), None),            # 30 days on: survived the horizon
                   101: (1, (), 29),
                   110: (1, ("churn_risk_high", "health_red"), 20)}
    # on the examples topic
    msg = example_value("c1", Example(110, {}, 1, None, 0, alerts=("health_red",), lead_days=20))
    assert msg["a"] == ["health_red"] and msg["l"] == 20
    assert "a" not in example_value("c1", Example(110, {}, 0, None, 0))


def test_a_replaced_snapshot_keeps_the_rules_that_fired_at_its_close() -> None:
    book = LabelBook()
    book.add(100, {}, 0.4, 1, alerts=["health_red"])
    book.add(100, {}, 0.5, 2, alerts=["churn_risk_high"])   # the same close evaluated again
    book.add(100, {}, 0.5, 2)
    [e] = book.on_churn(105)
    assert e.alerts == ("health_red", "churn_risk_high") and e.lead_days == 5


def test_fired_rules_survive_the_changelog_and_old_entries_load() -> None:
    book = LabelBook()
    book.add(100, {}, 0.4, 1, alerts=["health_red"])                       # no scores
    book.add(101, {}, 0.4, 1, [0.4, None, 0.3], alerts=["churn_risk_high"])
    book.add(102, {}, None, 0, [0.4, None, 0.3])                           # no alerts
    state = orjson.loads(orjson.dumps(book.to_state()))
    again = LabelBook.from_state(state)
    assert again == book
    assert [(e.day, e.alerts, e.scores) for e in again.on_churn(103)] == [
        (100, ("health_red",), None), (101, ("churn_risk_high",), (0.4, None, 0.3)),
        (102, (), (0.4, None, 0.3))]
    # an entry written before fired rules were kept: [d0, p, v, x] or [d0, p, v, x, scores]
    old = [state[0], None, [[100, 0.4, 1, state[2][0][3]], [101, 0.4, 1, state[2][1][3],
                                                            [0.4, None, 0.3]]]]
    assert [e.alerts for e in LabelBook.from_state(old).on_churn(110)] == [(), ()]


# --- the learner ---------------------------------------------------------------------------

def hand_made() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """health_red: ten churners caught once each (leads 1, 3, ..., 19), one churner "x" with two
    firings before the same churn (leads 25 then 20: caught once, at 25), fourteen firings not
    followed by a churn; churn_risk_high: three firings. Snapshots without a firing are not
    judged. Split in two batches, x's second firing in the second."""
    first = [ex(f"c{i}", 0, 1, ["health_red"], 2 * i + 1) for i in range(10)]
    first += [ex(f"n{i}", 0, 0, ["health_red"]) for i in range(14)]
    first += [ex("x", 0, 1, ["health_red"], 25), ex("quiet", 0, 1, None, 4),
              ex("r1", 0, 1, ["churn_risk_high"], 3), ex("r2", 0, 0, ["churn_risk_high"])]
    second = [ex("x", 5, 1, ["health_red", "churn_risk_high"], 20), ex("quiet", 1, 0)]
    return first, second


HEALTH_RED = {"firings": 26, "hits": 12, "precision": round(12 / 26, 4), "churners_caught": 11,
              "median_lead_days": 11.0}           # median of 1, 3, ..., 19, 25
RISK_HIGH = {"firings": 3, "hits": 2, "precision": None,   # 3 judged: below the minimum
             "churners_caught": 2, "median_lead_days": 11.5}   # r1 (3) and x (20)


def test_the_learner_counts_firings_precision_and_median_lead_exactly() -> None:
    learner = ChurnLearner(settings_with())
    first, second = hand_made()
    learner.apply(first)
    learner.apply(second)
    assert learner.alert_quality() == {"churn_risk_high": RISK_HIGH, "health_red": HEALTH_RED}
    assert statistics.median([*range(1, 20, 2), 25]) == HEALTH_RED["median_lead_days"]
    assert learner.metrics_record()["alerts"] == learner.alert_quality()


def test_resent_examples_are_not_judged_twice() -> None:
    learner = ChurnLearner(settings_with())
    first, second = hand_made()
    learner.apply(first)
    learner.apply(first + second)            # a crash resent the first batch
    learner.apply(second)
    assert learner.duplicates == len(first) + len(second)
    assert learner.alert_quality() == {"churn_risk_high": RISK_HIGH, "health_red": HEALTH_RED}


def test_alert_quality_survives_a_restart_mid_churn() -> None:
    learner = ChurnLearner(settings_with())
    first, second = hand_made()
    learner.apply(first)
    again = ChurnLearner(learner.settings, learner.to_bytes())
    assert again.alert_quality() == learner.alert_quality()
    again.apply(second)        # x's later firing: the same churn, so no second lead for it
    assert again.alert_quality() == {"churn_risk_high": RISK_HIGH, "health_red": HEALTH_RED}


def test_a_learner_state_from_before_alert_quality_loads() -> None:
    learner = ChurnLearner(settings_with())
    first, second = hand_made()
    learner.apply(first)
    data = pickle.loads(learner.to_bytes())
    del data["alerts"]
    old = ChurnLearner(learner.settings, pickle.dumps(data))
    assert old.alert_quality() == {} and old.learned == learner.learned
    old.apply(second)
    assert old.alert_quality()["health_red"]["firings"] == 1


def test_minimum_of_judged_firings_for_a_precision() -> None:
    learner = ChurnLearner(settings_with())
    learner.apply([ex(f"n{i}", 0, i % 2, ["health_red"], 3 if i % 2 else None)
                   for i in range(learner.min_judged_firings - 1)])
    assert learner.alert_quality()["health_red"]["precision"] is None
    learner.apply([ex("last", 0, 1, ["health_red"], 3)])
    n = learner.min_judged_firings
    assert learner.alert_quality()["health_red"]["precision"] == round((n // 2 + n % 2) / n, 4)


def samples(families: list[Any]) -> dict[str, dict[tuple[str, ...], float]]:
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in families:
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(s.labels.values())] = s.value
    return out


def test_gauges_per_rule_in_base_units_and_none_below_the_minimum() -> None:
    learner = ChurnLearner(settings_with())
    for batch in hand_made():
        learner.apply(batch)
    got = samples(learner.alert_gauges())
    assert got["vitals_alert_precision_ratio"] == {("health_red",): pytest.approx(12 / 26)}
    assert got["vitals_alert_firings_judged_total"] == {("churn_risk_high",): 3.0,
                                                        ("health_red",): 26.0}
    assert got["vitals_alert_lead_time_seconds"] == {("churn_risk_high",): 11.5 * DAY_SECONDS,
                                                     ("health_red",): 11.0 * DAY_SECONDS}
    assert samples(ChurnLearner(settings_with()).alert_gauges()) == {}


def test_published_model_versions_carry_the_alert_figures_to_every_worker() -> None:
    learner = ChurnLearner(settings_with())
    for batch in hand_made():
        learner.apply(batch)
    blob = learner.publish(now=1.0)
    assert blob is not None
    scorer = ChurnScorer(learner.settings)
    assert scorer.update(blob)
    rec = scorer.model_record()
    assert rec is not None and rec["alerts"] == {"churn_risk_high": RISK_HIGH,
                                                 "health_red": HEALTH_RED}


@pytest.mark.parametrize("alerts", [{"r": {"precision": "high"}}, {"r": {"firings": True}},
                                    {"r": [1, 2]}, {"r": {"x": {"y": 1}}}, {"r" * 40: {"firings": 1}}])
def test_a_snapshot_with_bad_alert_figures_is_refused(alerts: Any) -> None:
    learner = ChurnLearner(settings_with())
    good = encode_snapshot(1, learner.model, learner.metrics_record())
    assert decode_snapshot(good).metrics["alerts"] == {}
    bad = encode_snapshot(1, learner.model, {**learner.metrics_record(), "alerts": alerts})
    with pytest.raises(SnapshotRefused):
        decode_snapshot(bad)


# --- through the customer stage ------------------------------------------------------------

CANCEL = {"quit": 40, "idle": None, "busy": None}    # day of the cancellation


def script(k: int) -> list[dict[str, Any]]:
    """Paying from day 0: quit and idle stop using the product after day 1 (their health
    falls and rules fire), quit cancels on day 40; busy stays active; tick moves the clock."""
    out = [event("support", "tick", at(k, 0.5), type="csat", score=5)]
    for cid, cancel in CANCEL.items():
        if k == 0:
            out += [event("signup", cid, at(0, 9), segment="smb", plan="pro", seats=2),
                    event("billing", cid, at(0, 9.5), type="subscription_started", mrr=50.0)]
        if (cid == "busy" or k < 2) and (cancel is None or k < cancel):
            out.append(usage(cid, at(k, 10), "u1", "report_created"))
        if k == cancel:
            out.append(event("billing", cid, at(k, 15), type="subscription_cancelled"))
    return sorted(out, key=lambda e: e["ts"])


def test_firings_at_day_closes_are_judged_by_the_churn_labels() -> None:
    run = Driver()
    firings: list[tuple[str, str, int]] = []
    for k in range(75):
        assert run.proc.apply(0, script(k)) == []
        out = run.proc.flush()
        for partition, clock in out.clocks:
            run.clocks[str(partition)] = clock
        for _, raw in out.alerts:
            a = orjson.loads(raw)
            if a["status"] == "firing":
                firings.append((a["rule"], a["subject"]["customer_id"], a["as_of"]))
        for message in out.examples:
            run.learner.apply(orjson.loads(message))
    # What to expect, from the firings themselves: a firing of a paying customer at the close
    # as of day f is judged once labelled; a hit when quit cancels within the horizon
    # (40 - f < 30), its lead then 40 - f days. tick never pays; quit's firings after its
    # churn are not predictions; idle's are labelled once the horizon and settling passed
    # (the last close, as of day 74, settled snapshots up to day 73 - H - S).
    horizon, settle = SETTINGS.churn.horizon_days, SETTINGS.churn.settle_days
    expected: dict[str, dict[str, Any]] = {}
    for rule, cid, as_of in firings:
        f = int(_epoch(as_of) // DAY_SECONDS) - D
        if cid == "tick" or (cid == "quit" and f > CANCEL["quit"]):
            continue
        if cid != "quit" and f > 73 - horizon - settle:
            continue
        e = expected.setdefault(rule, {"firings": 0, "hits": 0, "leads": []})
        e["firings"] += 1
        if cid == "quit" and CANCEL["quit"] - f < horizon:
            e["hits"] += 1
            e["leads"].append(CANCEL["quit"] - f)
    got = run.learner.alert_quality()
    assert sum(e["hits"] for e in expected.values()) >= 1       # the scenario has both kinds
    assert sum(e["firings"] - e["hits"] for e in expected.values()) >= 1
    assert {r: (g["firings"], g["hits"], g["median_lead_days"]) for r, g in got.items()} == {
        r: (e["firings"], e["hits"], statistics.median(e["leads"]) if e["leads"] else None)
        for r, e in expected.items()}


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
