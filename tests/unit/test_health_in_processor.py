"""Health, onboarding and alerts through the customer stage (CustomerProcessor), by hand.

The scripted customer c-1 (smb, 5 seats, signed up on day 0 = D = 2026-03-01, a Sunday):
  day 0        signup 09:00, subscription_started 09:30, payment_succeeded 09:45
  days 0-29    users u1…u5 each do `report_created` (10:00 … 14:00)
  day 31       3 high-priority tickets (W = 3 · 2 = 6 → support = 100 · (1 − 6/8) = 25)
  days 70-95   usage resumes as before
A "tick" customer on the same partition sends a support `csat` at 00:30 and 12:00 every day:
it moves the watermark (at most max_skew = 1 day at a time), so every day closes, and it
changes no figure of c-1. One flush a day, after the day's events; "the record of day k" is the
customer's view as of the watermark then (12:00 on quiet days, 14:00 on usage days), as the
HTTP API gives it. Alerts are judged at day closes: the close as of day k 00:00 (over days
k-30 … k-1) runs in day k's batch.

Health (METRICS.md) with no feature events: feature_adoption is null, so the weights
renormalise over 0.30 + 0.20 + 0.15 + 0.10 = 0.75:
  score = (0.30·U + 0.20·S + 0.15·P + 0.10·E) / 0.75
  U = 100 · min(1, active_days_30d / (20 · n / 30)); n = min(30, D − 0 + 1)
  E = 100 · mean(min(1, stickiness / 0.5), min(1, mau / seats))   (no NPS/CSAT for c-1)
  P = 100 (one succeeded payment on day 0, inside the 90-day window until day 89)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.events import EventValidator, event_hash
from streams.exporters.metrics import Metrics
from streams.processor import CustomerProcessor
from streams.settings import load_settings
from streams.state import CustomerState, decode_state, encode_state
from streams.time import rfc3339
from tests.unit.test_processor import make

SETTINGS = load_settings(env={})
VALIDATOR = EventValidator(SETTINGS.app.reporting_currency, SETTINGS.revenue.currency_rates)
DAY = 86400.0
D = 20513  # 2026-03-01, a Sunday
_ids = itertools.count()

Events = Callable[[int], list[dict[str, Any]]]


def at(day: int, hour: float = 12.0) -> float:
    return (D + day) * DAY + hour * 3600.0


def iso(day: int, hour: float = 0.0) -> str:
    return rfc3339(at(day, hour))


def event(family: str, cid: str, ts: float, **fields: Any) -> dict[str, Any]:
    """An event as ingest hands it on: validated, hashed, with its raw text."""
    obj = {"event_id": f"{family}-{next(_ids)}", "customer_id": cid, "ts": rfc3339(ts), **fields}
    out = VALIDATOR.validate(family, obj)
    out["h"] = event_hash(out["event_id"])
    out["raw"] = orjson.dumps(obj).decode()
    return out


def usage(cid: str, ts: float, user: str, action: str) -> dict[str, Any]:
    return event("usage", cid, ts, user_id=user, action=action)


class Run:
    """Drives one processor a day at a time and keeps what each day's flush handed out."""

    def __init__(self, script: Events, proc: CustomerProcessor,
                 clock_store: dict[str, dict[str, Any]]) -> None:
        self.script, self.proc, self.clock_store = script, proc, clock_store
        self.records: dict[int, dict[str, dict[str, Any]]] = {}   # day -> cid -> record
        self.alerts: list[tuple[int, dict[str, Any]]] = []        # (day, alert record)
        self.last: dict[str, dict[str, Any]] = {}                  # records of the last flush

    def day(self, k: int) -> None:
        batch = [event("support", "tick", at(k, 0.5), type="csat", score=5),
                 event("support", "tick", at(k, 12.0), type="csat", score=5),
                 *self.script(k)]
        batch.sort(key=lambda e: e["ts"])
        assert self.proc.apply(0, batch) == []                    # nothing dead-lettered
        self.take(k)
        self.records[k] = self.last

    def take(self, k: int) -> None:
        """One flush; its alerts are filed under day k."""
        out = self.proc.flush()
        for partition, clock in out.clocks:                       # what the flush timer writes
            self.clock_store[str(partition)] = clock
        records = [(cid, orjson.loads(v)) for cid, v in out.records]
        in_day = [cid for cid, r in records if not r["as_of"].endswith("T00:00:00Z")]
        assert len(in_day) == len(set(in_day))                    # coalesced: one per flush
        self.last = {cid: self.proc.record(cid, 0) for cid, _ in records}
        for key, value in out.alerts:
            rec = orjson.loads(value)
            assert key == rec["alert_id"]
            self.alerts.append((k, rec))

    def days(self, ks: range) -> Run:
        for k in ks:
            self.day(k)
        return self

    def of(self, cid: str, rule: str) -> list[tuple[int, dict[str, Any]]]:
        return [(k, a) for k, a in self.alerts
                if a["subject"]["customer_id"] == cid and a["rule"] == rule]


USERS = [f"u{i}" for i in range(1, 6)]


def c1_script(k: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if k == 0:
        out += [event("signup", "c-1", at(0, 9), segment="smb", plan="pro", seats=5),
                event("billing", "c-1", at(0, 9.5), type="subscription_started", mrr=99.0),
                event("billing", "c-1", at(0, 9.75), type="payment_succeeded", amount=99.0)]
    if 0 <= k <= 29 or 70 <= k <= 95:
        out += [usage("c-1", at(k, 10 + i), u, "report_created") for i, u in enumerate(USERS)]
    if k == 31:
        out += [event("support", "c-1", at(31, 10 + i / 12), type="ticket_opened",
                      ticket_id=f"t-{i}", priority="high") for i in range(3)]
    return out


def health(run: Run, k: int) -> dict[str, Any]:
    return run.records[k]["c-1"]["health"]


def score_at(x: int) -> float:
    """c-1 on day D = 59 − x for 45 ≤ D ≤ 58 (x = 14 … 1), tickets in the window:
    active days D-29…29 = x → U = 100·x/20 = 5x; stickiness = (5x/30)/5 = x/30 → x/15 of target
    (< 1 from D = 45); mau = 5 = seats → seat signal 1; S = 25; P = 100:
    0.75·score = 0.3·5x + 0.2·25 + 0.15·100 + 0.1·50·(x/15 + 1) = 25 + (11/6)·x."""
    return round((25 + 11 * x / 6) / 0.75, 2)


@pytest.fixture(scope="module")
def straight() -> tuple[Run, Metrics]:
    """The whole scenario on one processor, days 0…95."""
    proc, metrics = make()
    run = Run(c1_script, proc, {})
    run.days(range(0, 96))
    return run, metrics


# ---- the score over the scenario ---------------------------------------------------------------


def test_green_while_used(straight: tuple[Run, Metrics]) -> None:
    run, _ = straight
    # day 29: n = 30, 30 active days ≥ 20 → U = 100; S = 100; P = 100;
    #   stickiness = (5·30/30)/5 = 1 → 1; mau/seats = 5/5 → 1 → E = 100 → score 100
    h = health(run, 29)
    assert run.records[29]["c-1"]["as_of"] == iso(29, 14)
    assert h["score"] == 100.0 and h["grade"] == "green"
    assert h["components"] == {"usage_frequency": 100.0, "feature_adoption": None,
                               "support": 100.0, "payment": 100.0, "engagement": 100.0}
    # day 0 (n = 1: one active day against a target of 20·1/30) is already full marks
    assert health(run, 0)["score"] == 100.0
    assert all(health(run, k)["grade"] == "green" for k in range(0, 45))


def test_tickets_then_decay_to_yellow(straight: tuple[Run, Metrics]) -> None:
    run, _ = straight
    # day 31: 28 active days (2…29) → U = 100; S = 25; E = 100 → (30 + 5 + 15 + 10)/0.75 = 80
    assert health(run, 31)["score"] == 80.0 and health(run, 31)["components"]["support"] == 25.0
    # day 40: 19 active days → U = 95 → (28.5 + 5 + 15 + 10)/0.75 = 78
    assert health(run, 40)["score"] == 78.0
    # day 44: 15 active days → U = 75; stickiness 15/30 = 0.5 → E = 100 → 52.5/0.75 = 70 (green)
    assert (health(run, 44)["score"], health(run, 44)["grade"]) == (70.0, "green")
    # day 45: active days 16…29 = 14 → U = 70; stickiness (5·14/30)/5 = 0.4667 → 0.9333;
    #   seats 1 → E = 96.67; (21 + 5 + 15 + 9.6667)/0.75 = 50.6667/0.75 = 67.56
    h = health(run, 45)
    assert h["score"] == 67.56 == score_at(14) and h["grade"] == "yellow"
    assert h["components"] == {"usage_frequency": 70.0, "feature_adoption": None,
                               "support": 25.0, "payment": 100.0, "engagement": 96.67}
    for day in range(45, 59):
        assert health(run, day)["score"] == score_at(59 - day), day
    # yellow while score ≥ 40: 25 + 11x/6 ≥ 30 ⟺ x ≥ 3 (day 56: 40.67); red from day 57 (38.22)
    assert [health(run, k)["grade"] for k in (55, 56, 57, 58)] == \
        ["yellow", "yellow", "red", "red"]


def test_red_by_day_60_then_tickets_leave_the_window(straight: tuple[Run, Metrics]) -> None:
    run, _ = straight
    # day 60: no active day in 31…60 → U = 0, mau = 0 → stickiness 0, seats 0 → E = 0;
    #   the tickets of day 31 are still in 31…60 → S = 25; (0 + 5 + 15 + 0)/0.75 = 26.67
    h = health(run, 60)
    assert h["score"] == 26.67 and h["grade"] == "red"
    assert h["components"] == {"usage_frequency": 0.0, "feature_adoption": None,
                               "support": 25.0, "payment": 100.0, "engagement": 0.0}
    assert health(run, 59)["score"] == 26.67
    # day 61: the tickets left the window (32…61) → S = 100: (20 + 15)/0.75 = 46.67 (yellow)
    for k in (61, 62, 69):
        assert (health(run, k)["score"], health(run, k)["grade"]) == (46.67, "yellow")
    # day 70, usage again: 1 active day → U = 5; stickiness (5/30)/5 → (1/30)/0.5 = 0.0667;
    #   seats 1 → E = 53.33; (1.5 + 20 + 15 + 5.3333)/0.75 = 55.78
    assert health(run, 70)["score"] == 55.78
    # day 95: payment of day 0 left the 90-day window → null; renormalise over 0.60;
    #   26 active days → U = 100, S = 100, E = 100 → 100
    h = health(run, 95)
    assert h["components"]["payment"] is None and h["score"] == 100.0
    assert health(run, 89)["components"]["payment"] == 100.0
    assert health(run, 90)["components"]["payment"] is None


def test_trend_7d_is_the_difference_of_published_scores(straight: tuple[Run, Metrics]) -> None:
    run, _ = straight
    for k in range(0, 7):   # nothing 7 days earlier
        assert health(run, k)["trend_7d"] is None, k
    for k in range(7, 96):  # every day closed, so score(D−7) is known
        h, before = health(run, k), health(run, k - 7)
        assert h["trend_7d"] == round(h["score"] - before["score"], 2), k
    assert health(run, 31)["trend_7d"] == -20.0        # 80 − 100
    assert health(run, 45)["trend_7d"] == -12.44       # 67.56 − 80 (day 38)
    assert health(run, 61)["trend_7d"] == round(46.67 - score_at(5), 2)   # day 54: 52.89


# ---- health_red --------------------------------------------------------------------------------


def check_health_red(alerts: list[tuple[int, dict[str, Any]]]) -> None:
    """With the default hysteresis (red at two closes in a row; resolved at 50 or more held
    for 3 days): red first at the close as of day 58 00:00 (over days 28 … 57: 38.22; the
    close as of day 57 over 27 … 56 is still yellow, 40.67), so one firing at the close as of
    day 59 (35.78), started at 58. The close as of day 62 is back above 40 (46.67) but inside
    the band below 50: still firing. From the close as of day 71 (55.78, usage again) it is at
    50 or more, so one resolution at the close as of day 74 (63.11)."""
    assert [(k, a["status"]) for k, a in alerts] == [(59, "firing"), (74, "resolved")]
    fired, resolved = alerts[0][1], alerts[1][1]
    # day 58: x = 1 → U = 5, E = mean(stickiness (1/30)/5/0.5, mau 5/5 … ) = 53.33:
    #   (1.5 + 5 + 15 + 5.333)/0.75 = 35.78
    assert fired["value"] == 35.78 < 40 and fired["threshold"] == 40.0
    assert fired["alert_id"] == "health_red:c-1" and fired["severity"] == "critical"
    assert fired["subject"] == {"customer_id": "c-1", "segment": "smb"}
    assert fired["metric"] == "health.score"
    assert fired["started_at"] == iso(58, 0) and fired["as_of"] == iso(59, 0)
    assert fired["summary"] == "Health of c-1 fell to 36 (red)"
    assert fired["actions"] == SETTINGS.alerts.rules["health_red"].actions
    # points lost wᵢ·(100 − cᵢ): usage 0.3·(100 − 5) = 28.5, support 0.2·75 = 15,
    #   engagement 0.1·(100 − 53.33) = 4.67, payment 0
    assert fired["explain"]["pulled_down_by"] == ["usage_frequency", "support"]
    assert fired["explain"]["components"] == {
        "usage_frequency": 5.0, "feature_adoption": None, "support": 25.0, "payment": 100.0,
        "engagement": 53.33}
    assert resolved["alert_id"] == "health_red:c-1"
    assert resolved["value"] == 63.11 and resolved["started_at"] == iso(58, 0)
    assert resolved["as_of"] == iso(74, 0)
    assert resolved["summary"].startswith("Resolved: ")


def test_health_red_fires_once_and_resolves_once(straight: tuple[Run, Metrics]) -> None:
    run, metrics = straight
    check_health_red(run.of("c-1", "health_red"))
    assert run.of("tick", "health_red") == []
    get = metrics.registry.get_sample_value
    assert get("vitals_alerts_total", {"rule": "health_red", "status": "firing"}) == 1
    assert get("vitals_alerts_total", {"rule": "health_red", "status": "resolved"}) == 1


def test_restart_in_the_red_period_neither_refires_nor_forgets() -> None:
    clock_store: dict[str, dict[str, Any]] = {}
    proc, metrics = make(clock_store=clock_store)
    run = Run(c1_script, proc, clock_store)
    run.days(range(0, 60))                       # red since close 58, firing since close 59
    assert health(run, 59)["grade"] == "red"
    assert [a["status"] for _, a in run.of("c-1", "health_red")] == ["firing"]

    # "crash": only the changelog (encoded states) and the clock table survive
    store2 = {cid: decode_state(encode_state(state)) for cid, state in proc.store.items()}
    assert store2["c-1"].alerts.state["health_red"] == {"since": at(58, 0), "firing": True}
    proc2, metrics2 = make(store=store2, clock_store=dict(clock_store))
    proc2.assign([0])
    run.proc = proc2
    run.take(59)                                 # re-publishes every customer …
    assert set(run.last) == {"c-1", "tick"}
    assert run.last["c-1"] == run.records[59]["c-1"]
    assert [a["status"] for _, a in run.of("c-1", "health_red")] == ["firing"]   # … no new firing

    run.days(range(60, 96))
    check_health_red(run.of("c-1", "health_red"))
    get2 = metrics2.registry.get_sample_value
    assert get2("vitals_alerts_total", {"rule": "health_red", "status": "firing"}) is None
    assert get2("vitals_alerts_total", {"rule": "health_red", "status": "resolved"}) == 1
    assert metrics.registry.get_sample_value(
        "vitals_alerts_total", {"rule": "health_red", "status": "firing"}) == 1
    # trend_7d across the restart uses the restored score history
    for k in range(59, 66):
        assert health(run, k)["trend_7d"] == round(health(run, k)["score"]
                                                   - health(run, k - 7)["score"], 2)


# ---- onboarding --------------------------------------------------------------------------------


def test_onboarding_milestones_in_the_record(straight: tuple[Run, Metrics]) -> None:
    run, _ = straight
    ob = run.records[0]["c-1"]["onboarding"]
    # aha = first report_created, 1 h after signup → ttv = 1/24 = 0.0417 days
    assert ob == {"signed_up": iso(0, 9), "account_setup": iso(0, 9.5), "aha": iso(0, 10),
                  "eureka": None, "habit": None, "ttv_days": 0.0417, "stage": "aha"}
    assert run.records[1]["c-1"]["onboarding"]["stage"] == "aha"
    # third distinct value day = day 2, its first value action 10:00
    ob = run.records[2]["c-1"]["onboarding"]
    assert (ob["eureka"], ob["stage"]) == (iso(2, 10), "eureka")
    # habit: 4 consecutive ISO weeks — day 0 is a Sunday (week 1 = day 0, week 2 = days 1-7,
    #   week 3 = 8-14, week 4 = 15-21): the first value action of day 15
    assert run.records[14]["c-1"]["onboarding"]["habit"] is None
    ob = run.records[15]["c-1"]["onboarding"]
    assert (ob["habit"], ob["stage"]) == (iso(15, 10), "habit")
    # milestones are final: the same in the last record
    last = run.records[95]["c-1"]["onboarding"]
    assert last == {"signed_up": iso(0, 9), "account_setup": iso(0, 9.5), "aha": iso(0, 10),
                    "eureka": iso(2, 10), "habit": iso(15, 10), "ttv_days": 0.0417,
                    "stage": "habit"}
    assert run.of("c-1", "ttv_exceeded") == []


def logins_only(k: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if k == 0:
        out += [event("signup", "s-1", at(0, 9), segment="smb"),
                event("signup", "e-1", at(0, 9), segment="enterprise")]
    out += [usage("s-1", at(k, 12), "u1", "login"), usage("e-1", at(k, 12), "u1", "login")]
    if k == 35:
        out.append(usage("s-1", at(35, 15), "u1", "report_created"))     # s-1's aha
    return out


def test_ttv_exceeded_by_segment() -> None:
    proc, metrics = make()
    run = Run(logins_only, proc, {})
    run.days(range(0, 92))
    smb = run.of("s-1", "ttv_exceeded")
    # Alerts are judged at day closes only. s-1 signed up day 0 09:00; the close as of day 30
    #   00:00 is 29.625 days: not > 30; the close as of day 31 00:00 (in day 31's batch) is
    #   30.625 > 30 → fires; mid-day flushes never judge, however late in the day
    assert [(k, a["status"]) for k, a in smb] == [(31, "firing"), (36, "resolved")]
    fired = smb[0][1]
    assert fired["as_of"] == iso(31, 0) == fired["started_at"]
    assert fired["value"] == pytest.approx(30.625) and fired["threshold"] == 30.0
    assert fired["subject"] == {"customer_id": "s-1", "segment": "smb"}
    assert fired["severity"] == "warning" and fired["metric"] == "onboarding.days_without_aha"
    assert fired["summary"] == "s-1 has no aha moment 31 days after signup"
    # the aha on day 35 ends the condition: the metric is null → resolved with value null
    resolved = smb[1][1]
    assert resolved["value"] is None and resolved["as_of"] == iso(36, 0)
    assert run.records[35]["s-1"]["onboarding"]["ttv_days"] == pytest.approx(35.25)
    # e-1, the same age, is judged on 90 days: fires at the close as of day 91 (90.625 > 90)
    ent = run.of("e-1", "ttv_exceeded")
    assert [(k, a["status"]) for k, a in ent] == [(91, "firing")]
    assert ent[0][1]["threshold"] == 90.0 and ent[0][1]["value"] == pytest.approx(90.625)
    assert metrics.registry.get_sample_value(
        "vitals_alerts_total", {"rule": "ttv_exceeded", "status": "firing"}) == 2
    assert metrics.registry.get_sample_value(
        "vitals_alerts_firing", {"rule": "ttv_exceeded", "severity": "warning"}) == 1


# ---- Prometheus --------------------------------------------------------------------------------


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_gauges_in_the_exposition_at_day_58() -> None:
    proc, metrics = make()
    Run(c1_script, proc, {}).days(range(0, 59))
    got = samples(metrics)

    def g(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    # c-1 (smb): 35.78 red. tick (no signup → segment "unknown"): no activity → U = 0;
    #   S = 100; P null; E = mean(stickiness 0, CSAT (5 − 1)/4 = 1) = 50;
    #   (0 + 20 + 5)/0.60 = 41.67 yellow
    assert g("vitals_customers_by_grade", segment="smb", grade="red") == 1
    assert g("vitals_customers_by_grade", segment="unknown", grade="yellow") == 1
    assert g("vitals_customers_by_grade", segment="smb", grade="green") is None
    # The histogram observes every customer's score at every day close (counters only grow, so
    # increase(..._bucket[1d]) is the day's distribution): one observation per close.
    closes = proc.days_closed
    assert g("vitals_health_score_count", segment="smb") == closes
    assert g("vitals_health_score_bucket", segment="smb", le="+Inf") == closes
    # closes are over complete days: the close of day 57 (38.22) falls in (30, 40]; the close
    #   of day 56 is 40.67 and the close of day 58 (35.78) is not reached yet
    red = (g("vitals_health_score_bucket", segment="smb", le="40.0")
           - g("vitals_health_score_bucket", segment="smb", le="30.0"))
    assert red == 1
    assert g("vitals_health_score_count", segment="unknown") == closes
    # firing now: c-1 health_dropping (trend on 58 = 35.78 − 52.89 = −17.11 ≤ −15); tick
    #   stickiness_low (stickiness 0 for ≥ 7 days). Pending: c-1's health_red (red at the
    #   close as of 58 only; it fires at the second close in a row) and its stickiness_low
    #   (< 0.1 from day 57, 7 days)
    assert g("vitals_alerts_firing", rule="health_red", severity="critical") is None
    assert g("vitals_alerts_firing", rule="health_dropping", severity="warning") == 1
    assert g("vitals_alerts_firing", rule="stickiness_low", severity="warning") == 1
    assert g("vitals_alerts_firing", rule="ttv_exceeded", severity="warning") is None
    assert g("vitals_alerts_total", rule="health_red", status="firing") is None
    assert g("vitals_time_to_value_days_count", segment="smb") == 1
    # no customer id in any label
    assert not any(v in ("c-1", "tick") for _, labels in got for _, v in labels)


def test_gauges_follow_the_recovery(straight: tuple[Run, Metrics]) -> None:
    _, metrics = straight
    got = samples(metrics)
    # as of day 95: c-1 green (100), health_red resolved → no health_red series firing
    assert got.get(("vitals_customers_by_grade", (("grade", "green"), ("segment", "smb")))) == 1
    assert got.get(("vitals_customers_by_grade", (("grade", "red"), ("segment", "smb")))) is None
    assert got.get(("vitals_alerts_firing", (("rule", "health_red"),
                                             ("severity", "critical")))) is None


# ---- configuration changes across a restart ----------------------------------------------------


def test_firing_alert_of_a_removed_rule_does_not_break_the_scrape() -> None:
    state = CustomerState("c-1")
    state.segment = "smb"
    state.signup_ts = at(0, 9)
    state.alerts.state["retired_rule"] = {"since": at(0, 9), "firing": True}
    store = {"c-1": decode_state(encode_state(state))}
    proc, metrics = make(store=store, clock_store={"0": {"wm": at(1), "day": D + 1}})
    proc.assign([0])
    proc.flush()
    text = metrics.exposition().decode()
    assert "vitals_alerts_firing" in text


# ---- day-close windows and trend_7d over closes -----------------------------------------------


def test_trend_7d_subtracts_the_close_of_d_minus_7_not_its_start() -> None:
    """c-2 (smb, no seats, no payment, no feature): u1 logs a value action at 10:00 on days 0-10.

    Components U, S, E only (weights 0.30 + 0.20 + 0.10 = 0.60); every day U = 100 (one active
    day per day of n) and stickiness 1 → E = 100. An urgent ticket at 23:00 on day 3, after the
    day's last in-day record: W = 4 → S = 50 → score (30 + 10 + 10)/0.6 = 83.33 from the close of
    day 3 on. A normal ticket at 11:00 on day 9: W = 5 → S = 37.5 → (30 + 7.5 + 10)/0.6 = 79.17.
    Record of day 10 (12:00): trend = 79.17 − close of day 3 (83.33) = −4.16; the score of
    day 3 before its ticket (100) would give −20.83.
    """
    proc, _ = make()

    def batch(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        events.sort(key=lambda e: e["ts"])
        assert proc.apply(0, events) == []
        return {cid: orjson.loads(v) for cid, v in proc.flush().records}

    recs: dict[int, dict[str, Any]] = {}
    for k in range(0, 11):
        events = [event("support", "tick", at(k, 0.5), type="csat", score=5),
                  event("support", "tick", at(k, 12.0), type="csat", score=5),
                  usage("c-2", at(k, 10), "u1", "report_created")]
        if k == 0:
            events.append(event("signup", "c-2", at(0, 9), segment="smb"))
        if k == 9:
            events.append(event("support", "c-2", at(9, 11), type="ticket_opened",
                                ticket_id="n-1", priority="normal"))
        recs[k] = batch(events)["c-2"]
        if k == 3:   # after the day's last record, before the close of day 3
            assert recs[3]["health"]["score"] == 100.0
            batch([event("support", "c-2", at(3, 23), type="ticket_opened", ticket_id="u-1",
                         priority="urgent")])
    state = proc.store["c-2"]
    assert state.support.scores[D + 3] == 83.33                 # the close of day 3 (as of 4 00:00)
    assert recs[4]["health"]["score"] == 83.33
    assert [recs[k]["health"]["trend_7d"] for k in range(0, 7)] == [None] * 7  # no close of k−7
    assert recs[7]["health"]["trend_7d"] == -16.67          # 83.33 − close of day 0 (100)
    assert recs[9]["health"]["score"] == 79.17
    assert recs[9]["health"]["trend_7d"] == -20.83          # 79.17 − close of day 2 (100)
    assert recs[10]["health"]["score"] == 79.17
    assert recs[10]["health"]["trend_7d"] == -4.16          # 79.17 − close of day 3 (83.33)
    # only closes are kept, of D−7 … D at the close of D = 9 (the close of 10 is not reached)
    assert sorted(state.support.scores) == list(range(D + 2, D + 10))


def test_a_day_close_record_covers_the_complete_days_before_it() -> None:
    """c-3 (smb, no seats): u1 active at 10:00 on each of days 0 … 29 (30 days). An event
    stamped exactly day 30 00:00 closes day 29: the record as of 30 00:00 is the close of day 29,
    over days 0 … 29 (n = 30): dau = DAU(29) = 1, wau = mau = 1, active_days_30d = 30,
    stickiness (30/30)/1 = 1 → U = 100, E = 100, S = 100 → score 100. The empty day 30 is in no
    window (it would make dau 0, active days 29 and stickiness 29/30)."""
    proc, _ = make()
    for k in range(0, 30):
        events = [event("support", "tick", at(k, 0.5), type="csat", score=5),
                  usage("c-3", at(k, 10), "u1", "login")]
        if k == 0:
            events.insert(0, event("signup", "c-3", at(0, 9), segment="smb"))
        assert proc.apply(0, sorted(events, key=lambda e: e["ts"])) == []
        proc.flush()
    assert proc.apply(0, [event("support", "tick", at(30, 0), type="csat", score=5)]) == []
    rec = {cid: orjson.loads(v) for cid, v in proc.flush().records}["c-3"]
    assert rec["as_of"] == iso(30)
    assert rec["activity"] == {"dau": 1, "wau": 1, "mau": 1, "active_days_30d": 30,
                               "stickiness": 1.0}
    assert rec["health"]["components"]["usage_frequency"] == 100.0
    assert rec["health"]["score"] == 100.0
    assert proc.store["c-3"].support.scores[D + 29] == 100.0    # kept as the close of day 29
    # An in-day record (day 30, 12:00; here the HTTP view at the watermark) covers the days
    # 1 … 30 so far: day 0 left the window.
    assert proc.apply(0, [event("support", "tick", at(30, 12), type="csat", score=5)]) == []
    proc.flush()
    rec = proc.record("c-3", 0)
    assert rec["as_of"] == iso(30, 12)
    assert rec["activity"] == {"dau": 0, "wau": 1, "mau": 1, "active_days_30d": 29,
                               "stickiness": round(29 / 30, 6)}
