"""Onboarding milestones: out-of-order events, eureka, habit across ISO years, success."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from models.onboarding import (
    MilestoneParams,
    Onboarding,
    day_of,
    iso_week,
    rfc3339,
    stage,
    succeeded,
    success_eligible,
    ttv_days,
)

DAY = 86400.0


def ts(text: str) -> float:
    """Epoch seconds of a UTC wall time like '2026-03-01T12:00:00'."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# ---- helpers --------------------------------------------------------------------------------


def test_day_of_and_iso_week_ordinal() -> None:
    # 2026-03-01 is epoch day 20513 (20513 * 86400 = 1772323200).
    assert day_of(ts("2026-03-01T00:00:00")) == 20513
    assert day_of(ts("2026-03-01T23:59:59")) == 20513
    # Day 0 is Thursday 1970-01-01 → ISO week ordinal 0 runs Mon 1969-12-29 … Sun 1970-01-04.
    assert iso_week(-3) == 0 and iso_week(3) == 0 and iso_week(4) == 1
    # 2020-12-28 (Mon, 2020-W53) and 2021-01-04 (Mon, 2021-W01) are consecutive ordinals.
    w53 = iso_week(day_of(ts("2020-12-28T00:00:00")))
    w01 = iso_week(day_of(ts("2021-01-04T00:00:00")))
    assert w01 == w53 + 1
    # Sunday 2021-01-03 still belongs to 2020-W53.
    assert iso_week(day_of(ts("2021-01-03T23:00:00"))) == w53


def test_rfc3339() -> None:
    assert rfc3339(ts("2026-03-01T12:00:00")) == "2026-03-01T12:00:00Z"
    assert rfc3339(ts("2026-03-01T12:00:00") + 0.25) == "2026-03-01T12:00:00.250Z"
    assert rfc3339(None) is None


def test_ttv_days() -> None:
    s = ts("2026-03-01T12:00:00")
    # aha 2 days 9h36m later: 2 + 9.6/24 = 2.4 days
    assert ttv_days(s, s + 2 * DAY + 9.6 * 3600) == pytest.approx(2.4)
    assert ttv_days(s, None) is None
    assert ttv_days(None, s) is None
    # aha stamped before signup counts as zero, never negative
    assert ttv_days(s, s - 3600) == 0.0


def test_stage_is_furthest_funnel_step() -> None:
    assert stage(None, 1.0, 2.0) is None  # milestones without a signup: no stage yet
    assert stage(1.0) == "signed_up"
    assert stage(1.0, 2.0) == "account_setup"
    assert stage(1.0, None, 3.0) == "aha"  # setup skipped
    assert stage(1.0, 2.0, 3.0, 4.0) == "eureka"
    assert stage(1.0, 2.0, 3.0, 4.0, 5.0) == "habit"


def test_succeeded_within_90_days_vs_91() -> None:
    s = ts("2026-01-01T08:00:00")
    assert succeeded(s, s + 90 * DAY) is True  # exactly 90 days: within
    assert succeeded(s, s + 91 * DAY) is False
    assert succeeded(s, s + 90 * DAY + 1) is False
    assert succeeded(s, None) is False
    assert succeeded(None, s) is False
    assert succeeded(s, s + 10 * DAY, success_days=7) is False
    # denominator of success_rate_90d: only signups at least 90 days before as_of
    assert success_eligible(s, s + 90 * DAY) is True
    assert success_eligible(s, s + 89 * DAY) is False
    assert success_eligible(None, s) is False


# ---- milestones -----------------------------------------------------------------------------


def test_account_setup_and_aha_are_earliest_qualifying_events() -> None:
    o = Onboarding()
    assert o.on_signup(ts("2026-03-01T09:00:00"))
    assert not o.on_usage("login", ts("2026-03-01T09:05:00"))  # neither setup nor value
    assert o.on_billing("subscription_started", ts("2026-03-02T10:00:00"))
    assert o.on_usage("report_created", ts("2026-03-03T10:00:00"))
    assert o.stage() == "aha"
    # late, earlier setup action moves account_setup back
    assert o.on_usage("email_confirmed", ts("2026-03-01T09:30:00"))
    assert o.account_setup == ts("2026-03-01T09:30:00")
    # a later one changes nothing
    assert not o.on_usage("onboarding_completed", ts("2026-03-05T00:00:00"))
    assert not o.on_billing("payment_succeeded", ts("2026-03-01T09:10:00"))
    # late, earlier feature event (a value action by default) moves aha back
    assert o.on_feature(ts("2026-03-02T21:00:00"))
    assert o.aha == ts("2026-03-02T21:00:00")
    # aha − signup = 1 day 12 h = 1.5 days
    assert o.ttv_days() == pytest.approx(1.5)


def test_feature_events_not_value_when_disabled() -> None:
    o = Onboarding(params=MilestoneParams(feature_events_are_value=False))
    assert not o.on_feature(ts("2026-03-02T21:00:00"))
    assert o.aha is None


def test_usage_before_signup_records_milestones_ttv_null_until_signup() -> None:
    o = Onboarding()
    o.on_usage("message_sent", ts("2026-03-02T12:00:00"))
    assert o.aha == ts("2026-03-02T12:00:00")
    assert o.ttv_days() is None
    assert o.stage() is None
    rec = o.to_record()
    assert rec["aha"] == "2026-03-02T12:00:00Z" and rec["ttv_days"] is None
    o.on_signup(ts("2026-03-01T00:00:00"))
    # 2026-03-02T12:00 − 2026-03-01T00:00 = 1.5 days
    assert o.to_record() == {
        "signed_up": "2026-03-01T00:00:00Z",
        "account_setup": None,
        "aha": "2026-03-02T12:00:00Z",
        "eureka": None,
        "habit": None,
        "ttv_days": 1.5,
        "stage": "aha",
    }


def test_eureka_is_first_value_action_of_third_distinct_day() -> None:
    o = Onboarding()
    o.on_signup(ts("2026-03-01T08:00:00"))
    o.on_usage("report_created", ts("2026-03-01T10:00:00"))  # day 1
    o.on_usage("report_created", ts("2026-03-01T15:00:00"))  # day 1 again: still 1 day
    o.on_usage("login", ts("2026-03-02T10:00:00"))  # not a value action
    assert o.eureka is None
    o.on_usage("message_sent", ts("2026-03-04T09:00:00"))  # day 2 (distinct)
    assert o.eureka is None
    o.on_usage("message_sent", ts("2026-03-06T08:00:00"))  # day 3 → eureka
    assert o.eureka == ts("2026-03-06T08:00:00")
    assert o.stage() == "eureka"
    # late, earlier event on that same 3rd day moves eureka to it
    o.on_feature(ts("2026-03-06T07:00:00"))
    assert o.eureka == ts("2026-03-06T07:00:00")
    # late event on a new earlier day (03-03): the 3rd distinct day is now 03-04
    o.on_usage("integration_connected", ts("2026-03-03T20:00:00"))
    assert o.eureka == ts("2026-03-04T09:00:00")
    # bounded: only the K=3 earliest days are kept
    assert sorted(o.days) == [day_of(ts(f"2026-03-0{d}T00:00:00")) for d in (1, 3, 4)]
    # later days can never matter again for eureka (the week is still kept, for habit)
    o.on_usage("report_created", ts("2026-03-20T09:00:00"))
    assert len(o.days) == 3 and o.eureka == ts("2026-03-04T09:00:00")
    assert o.succeeded()  # eureka 3 days after signup ≤ 90 days


def test_any_arrival_order_gives_the_same_milestones() -> None:
    events = [
        ("signup", ts("2026-03-01T08:00:00")),
        ("email_confirmed", ts("2026-03-01T08:30:00")),
        ("report_created", ts("2026-03-02T11:00:00")),
        ("feature", ts("2026-03-02T09:00:00")),
        ("message_sent", ts("2026-03-05T12:00:00")),
        ("feature", ts("2026-03-09T12:00:00")),
        ("report_created", ts("2026-03-16T12:00:00")),
        ("message_sent", ts("2026-03-23T07:00:00")),
        ("message_sent", ts("2026-03-24T07:00:00")),
    ]

    def apply(order: tuple[tuple[str, float], ...]) -> dict:
        o = Onboarding()
        for kind, t in order:
            if kind == "signup":
                o.on_signup(t)
            elif kind == "feature":
                o.on_feature(t)
            else:
                o.on_usage(kind, t)
        return o.to_record()

    expected = apply(tuple(events))
    # weeks (Mon-based): 03-02..08 (W10), 03-09 (W11), 03-16 (W12), 03-23 (W13): 4 in a row;
    # 03-01 is a Sunday (W09) with no value action.
    assert expected["aha"] == "2026-03-02T09:00:00Z"
    assert expected["eureka"] == "2026-03-09T12:00:00Z"  # days 03-02, 03-05, 03-09
    assert expected["habit"] == "2026-03-23T07:00:00Z"
    assert expected["stage"] == "habit"
    rng = random.Random(7)  # 300 seeded shuffles of the 362 880 orders keep this fast
    for _ in range(300):
        order = list(events)
        rng.shuffle(order)
        assert apply(tuple(order)) == expected
    assert apply(tuple(reversed(events))) == expected


def test_habit_across_iso_year_boundary() -> None:
    o = Onboarding()
    value_days = ["2020-12-22", "2020-12-30", "2021-01-06", "2021-01-13"]
    # these are ISO weeks 2020-W52, 2020-W53, 2021-W01, 2021-W02: consecutive
    assert [datetime.fromisoformat(d).isocalendar()[:2] for d in value_days] == [
        (2020, 52), (2020, 53), (2021, 1), (2021, 2)
    ]
    for d in value_days[:3]:
        o.on_usage("report_created", ts(f"{d}T10:00:00"))
    assert o.habit is None  # only 3 weeks
    o.on_usage("report_created", ts("2021-01-13T10:00:00"))
    assert o.habit == ts("2021-01-13T10:00:00")


def test_habit_late_event_fills_gap() -> None:
    o = Onboarding()
    # weeks of 2026: W02 (01-05), W03 (01-12), W05 (01-26), W06 (02-02), W07 (02-09)
    for d in ("2026-01-06", "2026-01-13", "2026-01-27", "2026-02-03", "2026-02-10"):
        o.on_feature(ts(f"{d}T10:00:00"))
    # W05..W07 are only 3 in a row
    assert o.habit is None
    # a late event in W04 (01-21): W02..W05 is a run of 4, complete at W05's first value ts
    o.on_feature(ts("2026-01-21T10:00:00"))
    assert o.habit == ts("2026-01-27T10:00:00")
    # weeks after the habit week are dropped (a run ending later completes later)
    assert max(o.weeks) == iso_week(day_of(ts("2026-01-27T00:00:00")))
    # an earlier event in W05 moves habit back
    o.on_feature(ts("2026-01-26T06:00:00"))
    assert o.habit == ts("2026-01-26T06:00:00")
    # 2019-12-30 is a Monday in ISO 2020-W01; four weeks 2019-W51 … 2020-W02
    p = Onboarding()
    for d in ("2019-12-16", "2019-12-23", "2019-12-30", "2020-01-06"):
        p.on_usage("message_sent", ts(f"{d}T12:00:00"))
    assert p.habit == ts("2020-01-06T12:00:00")


def test_habit_weeks_bounded_without_habit() -> None:
    o = Onboarding()
    start = ts("2026-01-05T12:00:00")  # a Monday
    for k in range(60):  # every other week for ~2 years: never 4 in a row
        o.on_feature(start + 14 * k * DAY)
    assert o.habit is None
    assert len(o.weeks) <= o.params.max_weeks


def test_prune_drops_final_evidence() -> None:
    o = Onboarding()
    o.on_signup(ts("2026-01-01T00:00:00"))
    for d in ("2026-01-06", "2026-01-13", "2026-01-20", "2026-01-27"):
        o.on_feature(ts(f"{d}T10:00:00"))
    assert o.eureka == ts("2026-01-20T10:00:00") and o.habit == ts("2026-01-27T10:00:00")
    before = o.to_record()
    o.prune(ts("2026-01-25T00:00:00"))  # past eureka, not past habit
    assert o.days == {} and o.weeks  # eureka final; habit still movable within W05
    o.prune(ts("2026-02-01T00:00:00"))  # past habit
    assert o.weeks == {}
    assert o.to_record() == before
    # events after pruning leave the final milestones alone
    o.on_feature(ts("2026-02-02T10:00:00"))
    assert o.to_record() == before
    assert o.to_dict() == {
        "s": ts("2026-01-01T00:00:00"),
        "a": ts("2026-01-06T10:00:00"),
        "e": ts("2026-01-20T10:00:00"),
        "h": ts("2026-01-27T10:00:00"),
    }


def test_prune_without_habit_keeps_only_weeks_that_can_join_a_run() -> None:
    o = Onboarding()
    for d in ("2026-01-06", "2026-01-13", "2026-02-10", "2026-02-17"):
        o.on_feature(ts(f"{d}T10:00:00"))
    # frozen in W08 (02-16..22): a new event lies in W08 or later, so a run of 4 reaching it
    # starts in W05 or later → W02 and W03 go; W07, W08 stay.
    o.prune(ts("2026-02-17T00:00:00"))
    assert sorted(o.weeks) == [iso_week(day_of(ts(d))) for d in ("2026-02-10T00:00:00",
                                                                 "2026-02-17T00:00:00")]


def test_to_dict_round_trip_is_json_and_compact() -> None:
    o = Onboarding()
    o.on_signup(ts("2026-03-01T08:00:00"))
    o.on_usage("email_confirmed", ts("2026-03-01T09:00:00"))
    o.on_usage("report_created", ts("2026-03-02T09:00:00"))
    o.on_usage("report_created", ts("2026-03-03T09:00:00"))
    d = o.to_dict()
    text = json.dumps(d)
    back = Onboarding.from_dict(json.loads(text))
    assert back == o
    assert back.to_record() == o.to_record()
    assert len(text) < 200
    assert Onboarding.from_dict({}).to_record()["stage"] is None
