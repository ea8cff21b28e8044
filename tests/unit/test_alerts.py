"""AlertBook transitions, rule lookup and the vitals.alerts record (CONTRACT.md `vitals.alerts`).

Decisions read from streams/alerts.py and checked here:
- a condition holds only when the metric has a value: a missing or non-numeric value (None, a
  bool, a string, a missing path) makes it false, so a firing alert RESOLVES (with value null)
  and a pending one (waiting for `for_days`) is reset silently;
- `started_at` is when the condition first held, not when the alert fired (for_days > 0);
- `for_days` is measured in event time (as_of - since >= for_days days, the bound included).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import orjson
import pytest

from streams.alerts import OPS, AlertBook, Transition, alert_record, lookup
from streams.settings import AlertRule, load_settings
from streams.state import CustomerState, decode_state, encode_state

DAY = 86400.0
D = 20513  # 2026-03-01 (UTC day number)
T0 = D * DAY
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$")

SETTINGS = load_settings(env={})
RULES = SETTINGS.alerts.rules


def rule(metric: str = "health.score", op: str = "<", threshold: float = 40.0, **kw: Any
         ) -> AlertRule:
    defaults: dict[str, Any] = {"severity": "critical",
                                "summary": "Health of {customer_id} fell to {value:.0f} (red)",
                                "actions": ["Customer success outreach"]}
    defaults.update(kw)
    return AlertRule(metric=metric, op=op, threshold=threshold, **defaults)


def health(score: float | None) -> dict[str, Any]:
    return {"health": {"score": score}}


def run(book: AlertBook, rules: dict[str, AlertRule], figures: dict[str, Any],
        as_of: float, segment: str | None = "smb") -> list[Transition]:
    return book.evaluate(rules, list(rules), figures, segment, as_of)


# ---- transitions -------------------------------------------------------------------------------


def test_fires_once_holds_quietly_resolves_once_and_fires_again_later() -> None:
    rules = {"health_red": rule()}
    book = AlertBook()
    assert run(book, rules, health(55.0), T0) == []              # not holding: nothing
    assert book.state == {}

    fired = run(book, rules, health(31.0), T0 + DAY)             # starts
    assert fired == [Transition("health_red", "firing", 31.0, 40.0, T0 + DAY, T0 + DAY)]
    assert book.firing() == ["health_red"]

    for k in range(2, 6):                                        # holds: silence
        assert run(book, rules, health(20.0 + k), T0 + k * DAY) == []
    assert book.state["health_red"] == {"since": T0 + DAY, "firing": True}

    resolved = run(book, rules, health(45.0), T0 + 6 * DAY)      # ends
    assert resolved == [Transition("health_red", "resolved", 45.0, 40.0, T0 + DAY, T0 + 6 * DAY)]
    assert book.state == {} and book.firing() == []
    assert run(book, rules, health(50.0), T0 + 7 * DAY) == []   # stays ended: silence

    again = run(book, rules, health(12.0), T0 + 9 * DAY)         # a new start: a new started_at
    assert again == [Transition("health_red", "firing", 12.0, 40.0, T0 + 9 * DAY, T0 + 9 * DAY)]


def test_boundary_is_decided_by_the_operator() -> None:
    book = AlertBook()
    rules = {"health_red": rule(op="<", threshold=40.0)}
    assert run(book, rules, health(40.0), T0) == []              # 40 is not < 40
    assert [t.status for t in run(book, rules, health(39.99), T0 + 1)] == ["firing"]
    rules_le = {"drop": rule(metric="health.trend_7d", op="<=", threshold=-15.0)}
    book = AlertBook()
    fired = run(book, rules_le, {"health": {"trend_7d": -15.0}}, T0)
    assert [(t.status, t.value) for t in fired] == [("firing", -15.0)]
    assert OPS[">"](2, 1) and OPS[">="](1, 1) and not OPS[">"](1, 1) and OPS["<="](1, 1)


def test_rules_are_independent_and_only_named_rules_are_evaluated() -> None:
    rules = {"health_red": rule(), "stick": rule(metric="activity.stickiness", threshold=0.1,
                                                 severity="warning")}
    figures = {"health": {"score": 30.0}, "activity": {"stickiness": 0.05}}
    book = AlertBook()
    out = book.evaluate(rules, ["health_red"], figures, "smb", T0)
    assert [t.rule for t in out] == ["health_red"]
    assert "stick" not in book.state
    out = book.evaluate(rules, ["health_red", "stick"], figures, "smb", T0 + DAY)
    assert [t.rule for t in out] == ["stick"]                    # health_red already firing
    figures["activity"]["stickiness"] = 0.5
    out = book.evaluate(rules, ["health_red", "stick"], figures, "smb", T0 + 2 * DAY)
    assert [(t.rule, t.status) for t in out] == [("stick", "resolved")]
    assert book.firing() == ["health_red"]


# ---- for_days (event time) ---------------------------------------------------------------------


def test_for_days_fires_only_after_the_condition_held_that_long() -> None:
    rules = {"stickiness_low": rule(metric="activity.stickiness", threshold=0.1, for_days=7.0,
                                    severity="warning")}
    low = {"activity": {"stickiness": 0.02}}
    book = AlertBook()
    assert run(book, rules, low, T0) == []
    assert book.state["stickiness_low"] == {"since": T0, "firing": False}    # pending
    for k in range(1, 7):
        assert run(book, rules, low, T0 + k * DAY) == []
    assert run(book, rules, low, T0 + 7 * DAY - 1) == []          # one second short
    fired = run(book, rules, low, T0 + 7 * DAY)                  # bound included (>=)
    # started_at is when the condition began, not when the alert fired
    assert fired == [Transition("stickiness_low", "firing", 0.02, 0.1, T0, T0 + 7 * DAY)]
    assert run(book, rules, low, T0 + 8 * DAY) == []


def test_for_days_counts_event_time_not_evaluations() -> None:
    # two evaluations a week apart are enough; a hundred within a day are not
    rules = {"s": rule(metric="activity.stickiness", threshold=0.1, for_days=7.0)}
    low = {"activity": {"stickiness": 0.0}}
    book = AlertBook()
    for i in range(100):
        assert run(book, rules, low, T0 + i * 60) == []
    book = AlertBook()
    assert run(book, rules, low, T0) == []
    assert [t.status for t in run(book, rules, low, T0 + 7 * DAY)] == ["firing"]


def test_a_flap_resets_the_for_days_clock() -> None:
    rules = {"s": rule(metric="activity.stickiness", threshold=0.1, for_days=7.0)}
    low, ok = {"activity": {"stickiness": 0.0}}, {"activity": {"stickiness": 0.3}}
    book = AlertBook()
    run(book, rules, low, T0)
    assert run(book, rules, ok, T0 + 3 * DAY) == []              # pending: no resolved either
    assert book.state == {}
    run(book, rules, low, T0 + 4 * DAY)                          # held again from day 4
    assert run(book, rules, low, T0 + 7 * DAY) == []             # 7 days after the FIRST start
    assert run(book, rules, low, T0 + 10 * DAY) == []
    fired = run(book, rules, low, T0 + 11 * DAY)
    assert [(t.status, t.started_at) for t in fired] == [("firing", T0 + 4 * DAY)]


# ---- threshold_by_segment ----------------------------------------------------------------------


@pytest.mark.parametrize("segment, days, fires, threshold", [
    ("smb", 30.0, False, 30.0),          # "> 30": exactly 30 days is not exceeded
    ("smb", 31.0, True, 30.0),
    ("solo", 31.0, True, 30.0),
    ("enterprise", 31.0, False, 90.0),
    ("enterprise", 89.9, False, 90.0),
    ("enterprise", 90.5, True, 90.0),
    ("mid_market", 91.0, True, 90.0),
    (None, 31.0, True, 30.0),            # no segment: the rule's own threshold
    ("unknown", 31.0, True, 30.0),
])
def test_ttv_threshold_by_segment(segment: str | None, days: float, fires: bool,
                                  threshold: float) -> None:
    rules = {"ttv_exceeded": RULES["ttv_exceeded"]}
    book = AlertBook()
    out = run(book, rules, {"onboarding": {"days_without_aha": days}}, T0, segment)
    assert [t.status for t in out] == (["firing"] if fires else [])
    if fires:
        assert out[0].threshold == threshold and out[0].value == days


def test_segment_threshold_is_reported_on_resolve_too() -> None:
    rules = {"ttv_exceeded": RULES["ttv_exceeded"]}
    book = AlertBook()
    run(book, rules, {"onboarding": {"days_without_aha": 95.0}}, T0, "enterprise")
    out = run(book, rules, {"onboarding": {"days_without_aha": None}}, T0 + DAY, "enterprise")
    assert [(t.status, t.threshold, t.value) for t in out] == [("resolved", 90.0, None)]


# ---- lookup and missing values -----------------------------------------------------------------


def test_lookup_nested_paths() -> None:
    figures = {"health": {"score": 31, "components": {"support": 25.0}, "grade": "red",
                          "trend_7d": None, "flag": True},
               "activity": {"stickiness": 0.25}, "flat": 3}
    assert lookup(figures, "health.score") == 31.0 and isinstance(lookup(figures, "health.score"),
                                                                  float)
    assert lookup(figures, "health.components.support") == 25.0
    assert lookup(figures, "activity.stickiness") == 0.25
    assert lookup(figures, "flat") == 3.0
    assert lookup(figures, "health.trend_7d") is None            # null value
    assert lookup(figures, "health.grade") is None               # not a number
    assert lookup(figures, "health.flag") is None                # bools are not numbers
    assert lookup(figures, "health.missing") is None             # missing leaf
    assert lookup(figures, "revenue.mrr") is None                # missing branch
    assert lookup(figures, "flat.deeper") is None                # leaf used as a branch
    assert lookup(figures, "health") is None                     # a mapping is not a value
    assert lookup({"health": None}, "health.score") is None


def test_missing_value_resolves_a_firing_alert() -> None:
    rules = {"health_red": rule()}
    book = AlertBook()
    run(book, rules, health(20.0), T0)
    out = run(book, rules, {"health": {"score": None}}, T0 + DAY)    # e.g. no score any more
    assert out == [Transition("health_red", "resolved", None, 40.0, T0, T0 + DAY)]
    assert book.state == {}
    assert run(book, rules, {}, T0 + 2 * DAY) == []                # still missing: nothing
    # when the value comes back below the threshold it is a new start
    out = run(book, rules, health(10.0), T0 + 3 * DAY)
    assert [(t.status, t.started_at) for t in out] == [("firing", T0 + 3 * DAY)]


def test_missing_value_resets_a_pending_alert_silently() -> None:
    rules = {"s": rule(metric="activity.stickiness", threshold=0.1, for_days=7.0)}
    book = AlertBook()
    run(book, rules, {"activity": {"stickiness": 0.0}}, T0)
    assert run(book, rules, {"activity": {}}, T0 + DAY) == []
    assert book.state == {}


# ---- alert_record ------------------------------------------------------------------------------


def test_alert_record_shape_matches_the_contract() -> None:
    r = RULES["health_red"]
    t = Transition("health_red", "firing", 31.0, 40.0, T0 + 3600.0, T0 + 2 * DAY)
    explain = {"components": {"usage_frequency": 10.0}, "pulled_down_by": ["usage_frequency"]}
    rec = alert_record("health_red", r, t, {"customer_id": "c-42", "segment": "smb"}, "c-42",
                       explain)
    assert list(rec) == ["alert_id", "rule", "status", "severity", "subject", "metric", "value",
                         "threshold", "started_at", "as_of", "summary", "actions", "explain"]
    assert rec["alert_id"] == "health_red:c-42"
    assert rec["rule"] == "health_red" and rec["status"] == "firing"
    assert rec["severity"] == "critical"
    assert rec["subject"] == {"customer_id": "c-42", "segment": "smb"}
    assert rec["metric"] == "health.score"
    assert rec["value"] == 31.0 and rec["threshold"] == 40.0
    assert rec["started_at"] == "2026-03-01T01:00:00Z"
    assert rec["as_of"] == "2026-03-03T00:00:00Z"
    assert RFC3339_Z.match(rec["started_at"]) and RFC3339_Z.match(rec["as_of"])
    assert rec["summary"] == "Health of c-42 fell to 31 (red)"   # the CONTRACT's example
    assert rec["actions"] == ["Customer success outreach",
                              "Review the weakest health components with the account team"]
    assert rec["actions"] is not r.actions                        # a copy, not the config list
    assert rec["explain"] == explain
    # JSON-serialisable as it goes on the topic
    assert orjson.loads(orjson.dumps(rec)) == rec


def test_alert_record_resolved_and_without_explain() -> None:
    r = RULES["stickiness_low"]
    t = Transition("stickiness_low", "resolved", 0.3, 0.1, T0, T0 + 10 * DAY + 0.25)
    rec = alert_record("stickiness_low", r, t, {"customer_id": "c-7", "segment": None}, "c-7")
    assert "explain" not in rec
    assert rec["status"] == "resolved" and rec["severity"] == "warning"
    # A resolution states the value now, not the firing text (which would read "is low").
    assert rec["summary"] == ("Resolved: stickiness_low for c-7: activity.stickiness is now 0.3 "
                              "(fires when < 0.1)")
    assert rec["as_of"] == "2026-03-11T00:00:00.250Z"            # fractions keep milliseconds
    assert rec["started_at"] == "2026-03-01T00:00:00Z"


def test_alert_record_summary_falls_back_when_the_template_does_not_fit() -> None:
    r = dataclasses.replace(RULES["health_red"], summary="{account} is {value:.0f}")
    t = Transition("health_red", "firing", 31.0, 40.0, T0, T0)
    rec = alert_record("health_red", r, t, {"customer_id": "c-1", "segment": "smb"}, "c-1")
    assert rec["summary"] == "health_red firing for c-1: health.score = 31.0"


def test_resolved_without_value_has_no_nan_in_summary() -> None:
    r = RULES["ttv_exceeded"]
    t = Transition("ttv_exceeded", "resolved", None, 30.0, T0, T0 + 40 * DAY)
    rec = alert_record("ttv_exceeded", r, t, {"customer_id": "c-1", "segment": "smb"}, "c-1")
    assert rec["value"] is None
    assert "nan" not in rec["summary"].lower()


# ---- hysteresis (resolve_margin, resolve_for_days) ---------------------------------------------


def test_margin_keeps_a_below_rule_firing_inside_the_band() -> None:
    rules = {"health_red": rule(threshold=40.0, resolve_margin=10.0)}
    book = AlertBook()
    assert [t.status for t in run(book, rules, health(31.0), T0)] == ["firing"]
    for k, score in enumerate((45.0, 39.0, 49.99, 41.0), start=1):   # in [40, 50): no resolve
        assert run(book, rules, health(score), T0 + k * DAY) == []
    assert book.firing() == ["health_red"]
    out = run(book, rules, health(50.0), T0 + 5 * DAY)               # 50 is not < 50: resolves
    assert out == [Transition("health_red", "resolved", 50.0, 40.0, T0, T0 + 5 * DAY)]
    assert book.state == {}
    assert run(book, rules, health(45.0), T0 + 6 * DAY) == []        # the band does not fire
    assert [t.status for t in run(book, rules, health(39.0), T0 + 7 * DAY)] == ["firing"]


def test_margin_of_an_above_rule_is_below_its_threshold() -> None:
    rules = {"risk": rule(metric="churn.probability", op=">=", threshold=0.5,
                          resolve_margin=0.15)}
    book = AlertBook()

    def p(x: float) -> dict[str, Any]:
        return {"churn": {"probability": x}}

    assert run(book, rules, p(0.49), T0) == []
    assert [t.status for t in run(book, rules, p(0.5), T0 + DAY)] == ["firing"]
    assert run(book, rules, p(0.36), T0 + 2 * DAY) == []
    assert run(book, rules, p(0.35), T0 + 3 * DAY) == []             # 0.35 >= 0.35 still holds
    out = run(book, rules, p(0.34), T0 + 4 * DAY)
    assert [(t.status, t.value, t.threshold) for t in out] == [("resolved", 0.34, 0.5)]


def test_resolve_for_days_needs_the_clear_side_to_hold_and_a_relapse_restarts_it() -> None:
    rules = {"health_red": rule(resolve_margin=5.0, resolve_for_days=2.0)}
    book = AlertBook()
    run(book, rules, health(30.0), T0)
    assert run(book, rules, health(60.0), T0 + DAY) == []            # clear since day 1
    assert book.state["health_red"] == {"since": T0, "firing": True, "clear_since": T0 + DAY}
    assert run(book, rules, health(42.0), T0 + 2 * DAY) == []        # back in the band: reset
    assert book.state["health_red"] == {"since": T0, "firing": True}
    assert run(book, rules, health(60.0), T0 + 3 * DAY) == []        # clear since day 3
    assert run(book, rules, health(70.0), T0 + 4 * DAY) == []        # 1 day of 2
    out = run(book, rules, health(70.0), T0 + 5 * DAY)
    assert [(t.status, t.started_at, t.as_of) for t in out] == [("resolved", T0, T0 + 5 * DAY)]


def test_a_missing_value_resolves_at_once_despite_hysteresis() -> None:
    rules = {"health_red": rule(resolve_margin=10.0, resolve_for_days=3.0)}
    book = AlertBook()
    run(book, rules, health(30.0), T0)
    out = run(book, rules, health(None), T0 + DAY)
    assert [(t.status, t.value) for t in out] == [("resolved", None)]


def test_hysteresis_state_survives_a_restart() -> None:
    rules = {"health_red": rule(resolve_margin=5.0, resolve_for_days=2.0)}
    state = CustomerState("c-1")
    state.alerts.evaluate(rules, list(rules), health(30.0), "smb", T0)
    state.alerts.evaluate(rules, list(rules), health(60.0), "smb", T0 + DAY)
    back = decode_state(encode_state(state))
    assert back.alerts.state == {"health_red": {"since": T0, "firing": True,
                                                "clear_since": T0 + DAY}}
    out = back.alerts.evaluate(rules, list(rules), health(60.0), "smb", T0 + 3 * DAY)
    assert [t.status for t in out] == ["resolved"]


@pytest.mark.parametrize("key", ["resolve_margin", "resolve_for_days", "for_days"])
def test_negative_hysteresis_settings_are_refused(key: str, tmp_path: Any) -> None:
    from streams.settings import SettingsError

    path = tmp_path / "o.toml"
    path.write_text(f"[alerts.rules.health_red]\nmetric = 'health.score'\nop = '<'\n"
                    f"threshold = 40.0\nseverity = 'critical'\nsummary = 's'\nactions = []\n"
                    f"{key} = -1.0\n")
    with pytest.raises(SettingsError, match=key):
        load_settings(str(path), env={})


# ---- persistence -------------------------------------------------------------------------------


def test_alert_book_round_trips_through_customer_state() -> None:
    rules = {"health_red": rule(),
             "stick": rule(metric="activity.stickiness", threshold=0.1, for_days=7.0)}
    figures = {"health": {"score": 30.0}, "activity": {"stickiness": 0.0}}
    state = CustomerState("c-1")
    state.segment = "smb"
    assert [t.rule for t in state.alerts.evaluate(rules, list(rules), figures, "smb", T0)] == \
        ["health_red"]
    back = decode_state(encode_state(state))
    assert back.alerts.state == {"health_red": {"since": T0, "firing": True},
                                 "stick": {"since": T0, "firing": False}}
    assert back.alerts.firing() == ["health_red"]
    # the restored book neither fires twice nor forgets the pending since
    assert back.alerts.evaluate(rules, list(rules), figures, "smb", T0 + DAY) == []
    out = back.alerts.evaluate(rules, list(rules), figures, "smb", T0 + 7 * DAY)
    assert [(t.rule, t.status, t.started_at) for t in out] == [("stick", "firing", T0)]
    figures = {"health": {"score": 80.0}, "activity": {"stickiness": 0.5}}
    again = decode_state(encode_state(back))
    out = again.alerts.evaluate(rules, list(rules), figures, "smb", T0 + 8 * DAY)
    assert sorted((t.rule, t.status) for t in out) == [("health_red", "resolved"),
                                                       ("stick", "resolved")]
    empty = decode_state(encode_state(again))
    assert empty.alerts.state == {} and empty.to_dict()["al"] == {}


def test_state_without_alerts_key_decodes_to_an_empty_book() -> None:
    data = CustomerState("c-1").to_dict()
    del data["al"]
    state = CustomerState.from_dict(data)
    assert state.alerts.state == {} and state.alerts.firing() == []


# ---- default configuration ---------------------------------------------------------------------


def test_default_rules_load() -> None:
    a = load_settings(env={}).alerts
    assert a.customer_rules == ["health_red", "health_dropping", "ttv_exceeded",
                                "payment_failing", "stickiness_low", "churn_risk_high"]
    assert a.feature_rules == ["feature_adoption_low"]
    assert set(a.customer_rules) <= set(a.rules)
    got = {name: (r.metric, r.op, r.threshold, r.severity, r.for_days)
           for name, r in a.rules.items() if name in a.customer_rules}
    assert got == {
        "health_red": ("health.score", "<", 40.0, "critical", 1.0),
        "health_dropping": ("health.trend_7d", "<=", -15.0, "warning", 0.0),
        "ttv_exceeded": ("onboarding.days_without_aha", ">", 30.0, "warning", 0.0),
        "payment_failing": ("payments.failed_30d", ">=", 2.0, "critical", 0.0),
        "stickiness_low": ("activity.stickiness", "<", 0.1, "warning", 7.0),
        "churn_risk_high": ("churn.probability", ">=", 0.5, "critical", 1.0),
    }
    # hysteresis: (resolve_margin, resolve_for_days); none elsewhere
    assert {name: (r.resolve_margin, r.resolve_for_days) for name, r in a.rules.items()
            if r.resolve_margin or r.resolve_for_days} == {"health_red": (10.0, 3.0),
                                                            "churn_risk_high": (0.25, 5.0)}
    adoption = a.rules["feature_adoption_low"]
    assert (adoption.metric, adoption.op, adoption.threshold) == (
        "feature.adoption_30d_after_release", "<", 0.2)
    assert len(adoption.actions) == 3  # onboarding, discoverability, value communication
    assert a.rules["ttv_exceeded"].threshold_by_segment == {
        "smb": 30.0, "solo": 30.0, "mid_market": 90.0, "enterprise": 90.0}
    for name in a.customer_rules:
        r = a.rules[name]
        assert r.actions and all(isinstance(x, str) and x for x in r.actions), name
        assert "{customer_id}" in r.summary and "{value" in r.summary, name
        assert isinstance(r.threshold, float) and r.op in OPS, name
        # every summary template formats with the fields alert_record gives it
        r.summary.format(customer_id="c-1", segment="smb", value=1.5)
