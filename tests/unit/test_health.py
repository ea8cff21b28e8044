"""Health score: every component by hand, renormalisation, grades, trend, decay, state."""

from __future__ import annotations

import json

import pytest

from models.health import (
    COMPONENTS,
    HealthParams,
    SupportAndPayments,
    components,
    engagement,
    feature_adoption,
    grade,
    health_record,
    payment,
    score,
    support,
    trend_7d,
    usage_frequency,
    weakest_components,
)

DAY = 86400.0
D = 20513  # 2026-03-01


def at(day: int, hour: float = 12.0) -> float:
    """Epoch seconds of `hour` o'clock on epoch day `day`."""
    return day * DAY + hour * 3600.0


# ---- components -----------------------------------------------------------------------------


def test_usage_frequency() -> None:
    assert usage_frequency(15, 30, 20) == pytest.approx(75.0)  # 15 / 20 = 0.75
    assert usage_frequency(20, 30, 20) == 100.0  # exactly the target
    assert usage_frequency(25, 30, 20) == 100.0  # min(1, 25/20)
    assert usage_frequency(0, 30, 20) == 0.0


def test_usage_frequency_young_customer_scales_target() -> None:
    # n = 5: target 20 · 5/30 = 3.333…; 3 active days → 3 / 3.333 = 0.9 → 90
    assert usage_frequency(3, 5, 20) == pytest.approx(90.0)
    assert usage_frequency(4, 5, 20) == 100.0  # 4 / 3.333 > 1
    # n = 1 (signup day): target 0.667; 1 active day → 100
    assert usage_frequency(1, 1, 20) == 100.0
    # n above 30 is clamped to the window
    assert usage_frequency(15, 45, 20) == pytest.approx(75.0)


def test_feature_adoption() -> None:
    assert feature_adoption(3, 4) == pytest.approx(75.0)  # 3/4
    assert feature_adoption(0, 5) == 0.0
    assert feature_adoption(0, 0) is None  # nothing released: no component


def test_support() -> None:
    assert support(0, 8) == 100.0
    assert support(2, 8) == pytest.approx(75.0)  # 1 − 2/8
    assert support(6.5, 8) == pytest.approx(18.75)  # 1 − 6.5/8 = 0.1875
    assert support(8, 8) == 0.0
    assert support(12, 8) == 0.0  # floored at 0


def test_payment() -> None:
    assert payment(3, 1) == pytest.approx(75.0)  # 3 / 4
    assert payment(0, 2) == 0.0
    assert payment(0, 0) is None  # no payments: no component


def test_engagement() -> None:
    # stickiness only: 0.2 / 0.5 = 0.4 → 40
    assert engagement(0.2) == pytest.approx(40.0)
    # 0.3/0.5 = 0.6; 7/10 seats = 0.7; NPS 8/10 = 0.8; CSAT (4−1)/4 = 0.75
    # mean = (0.6 + 0.7 + 0.8 + 0.75) / 4 = 2.85 / 4 = 0.7125 → 71.25
    assert engagement(0.3, mau=7, seats=10, nps=8, csat=4) == pytest.approx(71.25)
    # caps: stickiness 0.6/0.5 → 1, 10 users on 5 seats → 1
    assert engagement(0.6, mau=10, seats=5) == 100.0
    # seats without mau is not a signal; NPS 0 and CSAT 1 are signals at 0
    # (0.25/0.5 = 0.5, 0, 0) → 0.5/3 = 0.1667 → 16.67
    assert engagement(0.25, seats=5, nps=0, csat=1) == pytest.approx(100 / 6)
    # custom stickiness target: 0.2 / 0.4 = 0.5 → 50
    assert engagement(0.2, stickiness_target=0.4) == pytest.approx(50.0)


COMPS = {
    "usage_frequency": 90.0,
    "feature_adoption": 60.0,
    "support": 80.0,
    "payment": 100.0,
    "engagement": 41.0,
}


def test_score_all_components() -> None:
    # 0.30·90 + 0.25·60 + 0.20·80 + 0.15·100 + 0.10·41 = 27 + 15 + 16 + 15 + 4.1 = 77.1
    assert score(COMPS, HealthParams().weights) == pytest.approx(77.1)


def test_score_renormalises_over_non_null_components() -> None:
    comps = dict(COMPS, feature_adoption=None, payment=None)
    # (27 + 16 + 4.1) / (0.30 + 0.20 + 0.10) = 47.1 / 0.6 = 78.5
    assert score(comps) == pytest.approx(78.5)
    assert score(dict.fromkeys(COMPONENTS)) is None
    # a component without weight is ignored: only usage (90) counts
    assert score({"usage_frequency": 90.0, "mystery": 0.0}) == pytest.approx(90.0)


def test_grade_boundaries() -> None:
    assert grade(70.0) == "green"
    assert grade(69.999) == "yellow"
    assert grade(40.0) == "yellow"
    assert grade(39.999) == "red"
    assert grade(100.0) == "green" and grade(0.0) == "red"
    assert grade(None) is None
    assert grade(75.0, {"green": 80.0, "yellow": 50.0}) == "yellow"


def test_trend_7d() -> None:
    assert trend_7d(72.5, 76.5) == pytest.approx(-4.0)
    assert trend_7d(72.5, None) is None  # no history: no trend
    assert trend_7d(None, 70.0) is None


def test_weakest_components() -> None:
    w = HealthParams().weights
    # points lost: usage 0.3·10 = 3, adoption 0.25·40 = 10, support 0.2·20 = 4,
    # payment 0, engagement 0.1·59 = 5.9 → adoption, engagement, support
    assert weakest_components(COMPS, 2, w) == ["feature_adoption", "engagement"]
    assert weakest_components(COMPS, 3, w) == ["feature_adoption", "engagement", "support"]
    # unweighted: the lowest values, engagement 41 then adoption 60
    assert weakest_components(COMPS) == ["engagement", "feature_adoption"]
    # nulls and perfect components never explain a drop
    assert weakest_components({"payment": None, "support": 100.0}) == []


def test_health_record_rounds_and_nulls() -> None:
    comps = dict(COMPS, payment=None)
    rec = health_record(comps, HealthParams(), score_7d_ago=80.0)
    # (27 + 15 + 16 + 4.1) / 0.85 = 62.1 / 0.85 = 73.0588… → 73.06; trend 73.06 − 80 = −6.94
    assert rec == {
        "score": 73.06,
        "grade": "green",
        "trend_7d": -6.94,
        "components": {
            "usage_frequency": 90.0,
            "feature_adoption": 60.0,
            "support": 80.0,
            "payment": None,
            "engagement": 41.0,
        },
    }
    assert health_record(comps)["trend_7d"] is None


def test_health_record_grades_the_published_score() -> None:
    # 69.996 is published as 70.0, and graded as what is published
    rec = health_record({"usage_frequency": 69.996})
    assert rec["score"] == 70.0 and rec["grade"] == "green"


def test_components_young_trial_customer() -> None:
    # n = 5, 3 active days → usage 90; stickiness (3/5)/1 = 0.6 → engagement 100;
    # no key features, no payments → null; no tickets → support 100.
    comps = components(
        active_days_30d=3, n=5, stickiness=0.6, key_used=0, key_released=0,
        weighted_tickets=0.0, payments_succeeded=0, payments_failed=0, mau=1,
    )
    assert comps["feature_adoption"] is None and comps["payment"] is None
    # (0.3·90 + 0.2·100 + 0.1·100) / 0.6 = 57 / 0.6 = 95.0
    assert score(comps) == pytest.approx(95.0)


# ---- state -----------------------------------------------------------------------------------


def test_tickets_window_and_priority_weights() -> None:
    s = SupportAndPayments()
    s.on_ticket_opened("t1", at(D - 29), "low")  # first day of D-29 … D: in
    s.on_ticket_opened("t2", at(D - 10), "urgent")
    s.on_ticket_opened("t3", at(D, 23.9), "high")
    s.on_ticket_opened("t0", at(D - 30), "normal")  # one day too old
    s.on_ticket_opened("t4", at(D + 1), "normal")  # after as_of
    s.on_ticket_opened("t2", at(D - 10, 13), "urgent")  # resent open of an open ticket
    # W = 0.5 + 4 + 2 = 6.5 over 3 tickets
    assert s.tickets_30d(D) == (3, 6.5)
    assert s.open_tickets() == 5 and s.open_tickets("urgent") == 1
    s.on_ticket_closed("t2", at(D - 2))
    assert s.open_tickets("urgent") == 0
    # a close that arrives before its open: counted as opened, never left open
    s.on_ticket_closed("t9", at(D, 15))
    s.on_ticket_opened("t9", at(D, 14), "urgent")
    assert s.open_tickets("urgent") == 0
    assert s.tickets_30d(D) == (4, 10.5)  # 6.5 + 4


def test_payments_and_surveys_windows() -> None:
    s = SupportAndPayments()
    s.on_payment(at(D - 89), ok=True)  # first day of D-89 … D
    s.on_payment(at(D - 90), ok=False)  # too old
    s.on_payment(at(D - 5), ok=False)
    s.on_payment(at(D), ok=True)
    assert s.payments_90d(D) == (2, 1)
    assert payment(*s.payments_90d(D)) == pytest.approx(200 / 3)  # 66.67

    s.on_nps(9, at(D - 89))
    s.on_nps(3, at(D - 120))  # late and older: does not replace the latest answer
    assert s.nps_90d(D) == 9.0
    assert s.nps_90d(D + 1) is None  # answer now 91 days old
    s.on_csat(5, at(D - 1))
    s.on_csat(2, at(D))
    assert s.csat_90d(D) == 2.0


def test_trend_from_score_history() -> None:
    s = SupportAndPayments()
    kw = dict(n=30, mau=1, key_used=0, key_released=0)
    first = s.evaluate(D - 7, active_days_30d=20, stickiness=0.5, **kw)
    # usage 100, support 100, engagement 100 → 100, no history yet
    assert first["score"] == 100.0 and first["trend_7d"] is None
    now = s.evaluate(D, active_days_30d=10, stickiness=0.25, **kw)
    # usage 10/20 → 50; engagement 0.25/0.5 → 50; support 100
    # (0.3·50 + 0.2·100 + 0.1·50) / 0.6 = 40 / 0.6 = 66.666… → 66.67; trend 66.67 − 100
    assert now["score"] == 66.67 and now["grade"] == "yellow"
    assert now["trend_7d"] == -33.33
    assert s.evaluate(D + 1, active_days_30d=10, stickiness=0.25, **kw)["trend_7d"] is None


def _activity(day: int, signup: int, active: set[int], uses: dict[str, set[int]]) -> dict:
    """Activity inputs of a one-user customer (DAU = 1 on each active day)."""
    n = min(30, day - signup + 1)  # young customers: days since signup
    window = set(range(day - 29, day + 1))
    active_30 = len(active & window)
    mau = 1 if active_30 else 0
    dau_sum = len(active & set(range(day - n + 1, day + 1)))
    stickiness = (dau_sum / n) / mau if mau else 0.0
    used = sum(1 for days in uses.values() if days & window)
    return dict(active_days_30d=active_30, n=n, stickiness=stickiness, mau=mau, key_used=used)


def test_decay_over_idle_days_green_yellow_red() -> None:
    signup = D - 29
    active = set(range(signup, signup + 30))  # active every day up to D, then idle
    uses = {"a": set(range(D - 4, D + 1)), "b": {D}}  # 2 of 4 key features, lately
    s = SupportAndPayments()
    s.on_payment(at(signup + 20), ok=True)
    s.on_payment(at(signup + 20, 13), ok=False)  # payment 50 for 90 days
    records = {}
    for day in range(D, D + 31):  # day closes, no new events
        s.prune(day)
        records[day] = s.evaluate(day, key_released=4, **_activity(day, signup, active, uses))
    # D+10: 20 active days in D-19 … D+10 → usage 100; adoption 2/4 = 50; support 100;
    # payment 50; stickiness (20/30)/1 = 0.667 → engagement 100.
    # 30 + 12.5 + 20 + 7.5 + 10 = 80.0
    assert records[D + 10]["score"] == 80.0 and records[D + 10]["grade"] == "green"
    # D+20: 10 active days → usage 10/20 = 50; adoption 50; stickiness 1/3 → 0.667 → 66.67
    # 15 + 12.5 + 20 + 7.5 + 6.667 = 61.667 → 61.67
    assert records[D + 20]["score"] == 61.67 and records[D + 20]["grade"] == "yellow"
    # D+13 (7 days earlier): 17 active days → usage 85; engagement 100:
    # 25.5 + 12.5 + 20 + 7.5 + 10 = 75.5 → trend 61.67 − 75.5 = −13.83
    assert records[D + 13]["score"] == 75.5
    assert records[D + 20]["trend_7d"] == -13.83
    # D+30: nothing in D+1 … D+30 → usage 0, adoption 0/4 = 0, engagement 0;
    # support 100 and payment 50 remain: 20 + 7.5 = 27.5
    assert records[D + 30]["score"] == 27.5 and records[D + 30]["grade"] == "red"
    assert records[D + 30]["components"] == {
        "usage_frequency": 0.0,
        "feature_adoption": 0.0,
        "support": 100.0,
        "payment": 50.0,
        "engagement": 0.0,
    }
    assert len(s.scores) == 8  # D+23 … D+30: bounded history


def test_prune_bounds_state_without_changing_results() -> None:
    s = SupportAndPayments()
    for k in range(120):
        s.on_ticket_opened(f"t{k}", at(D - k), "normal")
        s.on_ticket_closed(f"t{k}", at(D - k, 13))
        s.on_payment(at(D - k), ok=k % 3 != 0)
    s.on_ticket_closed("never-opened", at(D - 40))
    s.on_nps(7, at(D - 100))
    before = (s.tickets_30d(D), s.payments_90d(D), s.nps_90d(D))
    s.prune(D)
    assert (s.tickets_30d(D), s.payments_90d(D), s.nps_90d(D)) == before
    assert len(s.tickets) == 30 and len(s.payments) == 90
    assert s.orphan_closes == {} and s.nps is None and s.open == {}


def test_open_tickets_are_capped() -> None:
    s = SupportAndPayments(params=HealthParams(max_open_tickets=3))
    for k in range(5):
        s.on_ticket_opened(f"t{k}", at(D, k), "urgent")
    assert sorted(s.open) == ["t2", "t3", "t4"]  # the oldest go first


def test_to_dict_round_trip() -> None:
    s = SupportAndPayments()
    s.on_ticket_opened("t1", at(D - 1), "urgent")
    s.on_ticket_opened("t2", at(D), "low")
    s.on_ticket_closed("t2", at(D, 13))
    s.on_ticket_closed("t3", at(D, 14))
    s.on_payment(at(D - 3), ok=True)
    s.on_nps(8, at(D - 2))
    s.on_csat(4, at(D - 2))
    s.record_score(D - 1, 71.25)
    back = SupportAndPayments.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    assert SupportAndPayments.from_dict({}) == SupportAndPayments()


def test_trend_across_a_day_with_an_urgent_ticket_uses_the_close_of_d_minus_7() -> None:
    """Inputs held fixed: U = 100 (20 of 30 active days), adoption 1/1 = 100, stickiness 0.5
    → E = 100, no payment (null): weights 0.85. No ticket: score 100. An urgent ticket on E = D−7
    (W = 4 → S = 50): (30 + 25 + 10 + 10)/0.85 = 88.24 from its hour on, also at E's close.
    At D the usage halves (10 days → U = 50) with the ticket still in the window:
    (15 + 25 + 10 + 10)/0.85 = 70.59 → trend = 70.59 − 88.24 = −17.65 (against the score of E
    before the ticket, 100, it would be −29.41)."""
    s = SupportAndPayments()
    e = D - 7
    full = dict(active_days_30d=20, n=30, stickiness=0.5, mau=1, key_used=1, key_released=1)
    morning = s.evaluate(e, **full, remember=False)        # in-day, before the ticket
    assert morning["score"] == 100.0
    s.on_ticket_opened("t-urgent", at(e, 15), "urgent")
    close = s.evaluate(e, **full)                            # the close of E (as of E+1 00:00)
    assert close["score"] == 88.24 and close["components"]["support"] == 50.0
    assert s.score_on(e) == 88.24
    for day in range(e + 1, D):                              # the closes in between
        s.prune(day)
        s.evaluate(day, **full)
    s.prune(D)
    assert s.score_on(e) == 88.24                            # D-7 is kept at the close of D
    now = s.evaluate(D, **{**full, "active_days_30d": 10})
    assert now["score"] == 70.59
    assert now["trend_7d"] == -17.65
    assert s.evaluate(D + 8, **full)["trend_7d"] is None     # no close of D+1: no trend
