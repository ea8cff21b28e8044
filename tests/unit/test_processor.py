"""The customer stage driven by plain calls: activity, dedup, lateness, day close, restart."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from models.features import FeatureBook, FeatureContribution
from streams.events import EventValidator, InvalidEvent, event_hash
from streams.exporters.metrics import Metrics
from streams.processor import PROGRESS_KEY, CustomerProcessor, Flush, first_key
from streams.settings import load_settings
from streams.state import CustomerState, decode_state, encode_state
from streams.time import rfc3339

SETTINGS = load_settings(env={})  # lateness 2 d, dedup horizon 3 d, skew 1 d, window 30 d
VALIDATOR = EventValidator(SETTINGS.app.reporting_currency, SETTINGS.revenue.currency_rates)
DAY = 86400.0
D = 20513  # 2026-03-01
_ids = itertools.count()


def at(day: int, hour: float = 12.0) -> float:
    return day * DAY + hour * 3600.0


def event(family: str, cid: str, ts: float, event_id: str | None = None,
          **fields: Any) -> dict[str, Any]:
    """An event as ingest hands it on: validated, hashed, with its raw text."""
    obj = {"event_id": event_id or f"{family}-{next(_ids)}", "customer_id": cid,
           "ts": rfc3339(ts), **fields}
    out = VALIDATOR.validate(family, obj)
    out["h"] = event_hash(out["event_id"])
    out["raw"] = orjson.dumps(obj).decode()
    return out


def usage(cid: str, ts: float, user: str, action: str = "login", **kw: Any) -> dict[str, Any]:
    return event("usage", cid, ts, user_id=user, action=action, **kw)


def feature(cid: str, ts: float, user: str, name: str = "reports") -> dict[str, Any]:
    return event("feature", cid, ts, user_id=user, feature=name)


def signup(cid: str, ts: float, segment: str = "smb", **kw: Any) -> dict[str, Any]:
    return event("signup", cid, ts, segment=segment, **kw)


def with_ticks(events: list[dict[str, Any]], step_hours: float = 12.0) -> list[dict[str, Any]]:
    """Events in time order, with support events of a "tick" customer filling every gap longer
    than step_hours: the watermark may only move max_skew (1 d) at a time, otherwise the next
    event is dead-lettered as future_ts. Support events touch no activity figure."""
    events = sorted(events, key=lambda e: e["ts"])
    out: list[dict[str, Any]] = []
    step = step_hours * 3600.0
    for e in events:
        if out:
            t = out[-1]["ts"] + step
            while t < e["ts"]:
                out.append(event("support", "tick", t, type="csat", score=5))
                t += step
        out.append(e)
    return out


def make(store: MutableMapping[str, CustomerState] | None = None,
         clock_store: MutableMapping[str, dict[str, Any]] | None = None
         ) -> tuple[CustomerProcessor, Metrics]:
    metrics = Metrics()
    proc = CustomerProcessor(SETTINGS, {} if store is None else store,
                             {} if clock_store is None else clock_store, metrics,
                             partition_of=lambda cid: 0, wall_clock=None)
    return proc, metrics


def records(out: Flush) -> dict[str, dict[str, Any]]:
    """The newest record of each customer in a flush: its day-close records come first, in
    order, then at most one in-day record (coalesced)."""
    pairs = [(cid, orjson.loads(value)) for cid, value in out.records]
    in_day = [cid for cid, r in pairs if not r["as_of"].endswith("T00:00:00Z")]
    assert len(in_day) == len(set(in_day))
    return dict(pairs)


def counted(metrics: Metrics, family: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value("vitals_events_total",
                                              {"family": family, "outcome": outcome})
    assert value is not None
    return value


def deadlettered(metrics: Metrics, family: str, error: str) -> float:
    value = metrics.registry.get_sample_value("vitals_deadletter_total",
                                              {"family": family, "error": error})
    assert value is not None
    return value


def activity(recs: dict[str, dict[str, Any]], cid: str) -> tuple[Any, ...]:
    a = recs[cid]["activity"]
    return a["dau"], a["wau"], a["mau"], a["active_days_30d"], a["stickiness"]


def batch_c1() -> list[dict[str, Any]]:
    """c-1: signed up D-9 09:00; activity on D-9, D-5, D-2 and D (with ticks between)."""
    return with_ticks([
        signup("c-1", at(D - 9, 9), plan="pro"),
        usage("c-1", at(D - 9, 10), "u1"),
        usage("c-1", at(D - 5, 10), "u1"),
        usage("c-1", at(D - 5, 11), "u2"),
        feature("c-1", at(D - 2, 10), "u3"),
        usage("c-1", at(D, 9), "u1"),
        usage("c-1", at(D, 10), "u1", action="report_created"),
        usage("c-1", at(D, 15), "u2"),
    ])


# c-1 as of D (watermark D 15:00): first day D-9 → n = 10
#   dau = {u1, u2} = 2
#   wau (D-6 … D) = {u1, u2} ∪ {u3} ∪ {u1, u2} = 3
#   mau = 3; active days = D-9, D-5, D-2, D = 4
#   Σ DAU = 1 + 2 + 1 + 2 = 6 → (6 / 10) / 3 = 0.2
C1_AT_D = (2, 3, 3, 4, 0.2)


# ---- activity figures --------------------------------------------------------------------------


def test_batch_then_flush_gives_exact_figures() -> None:
    proc, metrics = make()
    assert proc.apply(0, batch_c1()) == []
    out = proc.flush()
    rec = records(out)["c-1"]
    assert activity({"c-1": rec}, "c-1") == C1_AT_D
    assert rec["as_of"] == "2026-03-01T15:00:00Z"       # the watermark
    assert rec["signup_at"] == "2026-02-20T09:00:00Z"   # D-9 = 2026-02-20
    assert (rec["customer_id"], rec["segment"], rec["plan"], rec["status"]) == \
        ("c-1", "smb", "pro", "trial")
    assert counted(metrics, "usage", "accepted") == 6
    assert counted(metrics, "feature", "accepted") == 1
    assert counted(metrics, "signup", "accepted") == 1
    assert counted(metrics, "usage", "late") == 0
    clock = dict(out.clocks[0][1])
    assert out.clocks[0][0] == 0 and clock.pop("features").keys() == {"reports"}
    # Active users of every closed day (D-9 .. D-1), for features learnt late.
    assert [d for d, _ in clock.pop("base")["*"]] == list(range(D - 9, D))
    # The last close's counts (active users, customers, paying, kept): c-1 active, on trial.
    assert clock.pop("lb") == [D - 1, {"*": [3, 1, 0, 0]}]
    # The first-seen release of reports may still move earlier: its last contribution stays.
    assert clock.pop("sent").keys() == {"reports"}
    assert clock == {"wm": at(D, 15), "day": D}
    state = proc.store["c-1"]
    assert state.events == 8
    assert (state.first_ts, state.last_ts, state.signup_ts) == (at(D - 9, 9), at(D, 15),
                                                              at(D - 9, 9))


def test_young_customer_without_signup_uses_first_event() -> None:
    proc, _ = make()
    proc.apply(0, [usage("c-y", at(D - 1, 10), "a"), usage("c-y", at(D, 10), "a"),
                   usage("c-y", at(D, 11), "b")])
    rec = records(proc.flush())["c-y"]
    # first day D-1 → n = 2; Σ DAU = 1 + 2 = 3; mau 2 → (3 / 2) / 2 = 0.75
    assert activity({"c-y": rec}, "c-y") == (2, 2, 2, 2, 0.75)
    assert rec["signup_at"] is None and rec["segment"] is None


# ---- duplicates --------------------------------------------------------------------------------


def test_duplicates_counted_and_not_applied() -> None:
    proc, metrics = make()
    batch = batch_c1()
    ticks = sum(1 for e in batch if e["customer_id"] == "tick")
    proc.apply(0, batch)
    first = records(proc.flush())["c-1"]
    # a repeated event_id within the batch, then the whole batch again
    repeat = batch[-1]                        # usage D 15:00
    assert proc.apply(0, [repeat, repeat]) == []
    dls = proc.apply(0, batch)
    # replayed usage of D-9 (1) and D-5 (2) is beyond wm - 3 d = D-3 15:00: it cannot be
    # checked any more and is dead-lettered, not counted twice; D's three are duplicates
    assert [orjson.loads(v)["error"] for _, v in dls] == ["too_late"] * 3
    assert counted(metrics, "usage", "duplicate") == 2 + 3
    assert counted(metrics, "feature", "duplicate") == 1
    assert counted(metrics, "signup", "duplicate") == 1
    assert counted(metrics, "support", "duplicate") == ticks
    assert counted(metrics, "usage", "accepted") == 6     # unchanged
    assert proc.store["c-1"].events == 8
    out = proc.flush()
    assert out.changelog == [] and out.records == []      # nothing changed, nothing sent
    assert first["activity"]["mau"] == 3


def test_same_event_id_with_another_user_is_still_a_duplicate() -> None:
    proc, metrics = make()
    proc.apply(0, [usage("c-1", at(D, 10), "u1", event_id="e-1")])
    proc.apply(0, [usage("c-1", at(D, 11), "u2", event_id="e-1")])
    assert counted(metrics, "usage", "duplicate") == 1
    assert activity(records(proc.flush()), "c-1")[2] == 1  # mau: only u1


def test_same_event_id_for_another_customer_is_not_a_duplicate() -> None:
    # dedup is per customer (CONTRACT §1)
    proc, metrics = make()
    proc.apply(0, [usage("c-1", at(D, 10), "u1", event_id="e-1"),
                   usage("c-2", at(D, 10), "u1", event_id="e-1")])
    assert counted(metrics, "usage", "accepted") == 2
    assert counted(metrics, "usage", "duplicate") == 0


# ---- lateness ----------------------------------------------------------------------------------


def test_late_events_within_lateness_are_applied_and_counted_late() -> None:
    proc, metrics = make()
    proc.apply(0, batch_c1())                    # watermark D 15:00
    proc.flush()
    # D-2 14:00 < wm - 2 d = D-2 15:00 → late, but within the 3-day dedup horizon
    late = usage("c-1", at(D - 2, 14), "u9")
    # D-6 10:00: a billing event, far beyond the horizon, is still applied (ids kept for life)
    old_bill = event("billing", "c-1", at(D - 6, 10), type="subscription_started", mrr=99)
    # D-1 16:00 is within lateness: plain accepted
    on_time = usage("c-1", at(D - 1, 16), "u1")
    assert proc.apply(0, [late, old_bill, on_time]) == []
    assert counted(metrics, "usage", "late") == 1
    assert counted(metrics, "billing", "late") == 1
    assert counted(metrics, "usage", "accepted") == 6 + 1
    rec = records(proc.flush())["c-1"]
    # u9 joins D-2 (already active via u3); u1 adds day D-1:
    #   dau 2; wau {u1, u2, u3, u9} = 4; mau 4; active days D-9, D-5, D-2, D-1, D = 5
    #   Σ DAU = 1 + 2 + 2 + 1 + 2 = 8 over n = 10 → 0.8 ÷ 4 = 0.2
    assert activity({"c-1": rec}, "c-1") == (2, 4, 4, 5, 0.2)
    assert rec["as_of"] == "2026-03-01T15:00:00Z"   # late events do not move the watermark
    assert proc.clocks[0].watermark == at(D, 15)


def test_usage_older_than_dedup_horizon_goes_to_deadletter() -> None:
    proc, metrics = make()
    proc.apply(0, batch_c1())                     # watermark D 15:00
    proc.flush()
    # wm - 3 d = D-3 15:00; D-3 14:00 is an hour beyond it
    old = usage("c-1", at(D - 3, 14), "u7")
    old["src"] = ("events.usage", 2, 17)
    old["key"] = "c-1"
    new_cust = feature("c-new", at(D - 10), "u1")   # without src: topic from the family
    dls = proc.apply(0, [old, new_cust])
    assert len(dls) == 2
    key, value = dls[0]
    assert key == b"c-1"
    dl = orjson.loads(value)
    assert dl["error"] == "too_late"
    assert dl["raw"] == old["raw"] and orjson.loads(dl["raw"])["user_id"] == "u7"
    assert dl["raw_base64"] is None
    assert (dl["source_topic"], dl["partition"], dl["offset"]) == ("events.usage", 2, 17)
    assert "dedup horizon" in dl["detail"]
    key2, value2 = dls[1]
    dl2 = orjson.loads(value2)
    assert key2 is None
    assert (dl2["source_topic"], dl2["partition"], dl2["offset"], dl2["error"]) == \
        ("events.feature", None, None, "too_late")
    assert deadlettered(metrics, "usage", "too_late") == 1
    assert deadlettered(metrics, "feature", "too_late") == 1
    assert counted(metrics, "usage", "rejected") == 1
    assert counted(metrics, "usage", "late") == 0
    assert "c-new" not in proc.store                # nothing created for a rejected event
    out = proc.flush()
    assert out.changelog == [] and out.records == []
    # exactly at the horizon (D-3 15:00) is still checkable: late, applied
    assert proc.apply(0, [usage("c-1", at(D - 3, 15), "u7")]) == []
    assert counted(metrics, "usage", "late") == 1


def test_an_event_beyond_the_wall_clock_goes_to_deadletter() -> None:
    metrics = Metrics()
    proc = CustomerProcessor(SETTINGS, {}, {}, metrics, partition_of=lambda cid: 0,
                             wall_clock=lambda: at(D, 12))
    proc.apply(0, [usage("c-1", at(D, 11), "u1")])
    ahead = usage("c-1", at(D + 1, 12) + 1, "u2")    # skew 1 d + 1 s past the wall clock
    dls = proc.apply(0, [ahead])
    assert len(dls) == 1
    dl = orjson.loads(dls[0][1])
    assert dl["error"] == "future_ts"
    assert dl["raw"] == ahead["raw"]
    assert "24.0 h ahead of the wall clock" in dl["detail"]
    assert deadlettered(metrics, "usage", "future_ts") == 1
    assert proc.clocks[0].watermark == at(D, 11)    # a rejected event never moves time
    # exactly the skew ahead is accepted and moves the watermark
    assert proc.apply(0, [usage("c-1", at(D + 1, 12), "u2")]) == []
    assert proc.clocks[0].watermark == at(D + 1, 12)


def test_one_bad_clock_poisons_nothing() -> None:
    """An event weeks ahead (but in the past) is held with its customer: the watermark does
    not move, nobody else's events turn late, and it counts once time reaches it."""
    proc, metrics = make()
    proc.apply(0, [usage(c, at(D, 10), "u1") for c in ("c-1", "c-2", "c-3")])
    bad = usage("c-1", at(D + 20, 9), "u9")
    assert proc.apply(0, [bad]) == []
    assert proc.clocks[0].watermark == at(D, 10)
    assert proc.clocks[0].ahead == {"c-1": at(D + 20, 9)}
    assert proc.apply(0, [usage("c-2", at(D, 13), "u2"), usage("c-3", at(D, 14), "u3")]) == []
    assert counted(metrics, "usage", "late") == 0 and counted(metrics, "usage", "accepted") == 5
    recs = records(proc.flush())
    assert recs["c-1"]["activity"]["dau"] == 1                 # the held event is not applied
    restored = decode_state(encode_state(proc.store["c-1"]))
    assert [e["event_id"] for e in restored.held] == [bad["event_id"]]
    for k in range(1, 21):                                     # time walks on, a day at a time
        proc.apply(0, [usage("c-2", at(D + k, 12), "u2")])
    assert proc.clocks[0].ahead == {}
    assert counted(metrics, "usage", "accepted") == 26         # the held one counted, once
    assert proc.live["c-1"].held == []
    assert proc.live["c-1"].activity.figures(D + 20, D, 30).dau == 1


def test_bad_clocks_of_two_customers_apart_move_nothing() -> None:
    """Two stray events weeks ahead, from two customers but with good events between them,
    are two bad clocks, not a gap the partition jumped: both are held, time stays."""
    proc, metrics = make()
    proc.apply(0, [usage(c, at(D, 10), "u1") for c in ("c-1", "c-2", "c-3")])
    proc.apply(0, [usage("c-1", at(D + 20, 9), "u9"), usage("c-3", at(D, 11), "u3"),
                   usage("c-2", at(D + 30, 9), "u9"), usage("c-3", at(D, 12), "u3")])
    assert proc.clocks[0].watermark == at(D, 12)
    assert proc.clocks[0].ahead == {"c-1": at(D + 20, 9), "c-2": at(D + 30, 9)}
    assert proc.clocks[0].streak == {}
    assert counted(metrics, "usage", "late") == 0 and counted(metrics, "usage", "accepted") == 5


def test_a_replayed_bad_clock_moves_the_watermark_no_more_than_the_first_time() -> None:
    proc, _ = make()
    proc.apply(0, [usage(c, at(D, 10), "u1") for c in ("c-1", "c-2")], offset=1)
    batch = [usage("c-1", at(D + 20, 9), "u9"), usage("c-2", at(D, 11), "u2")]
    proc.apply(0, batch, offset=2)
    proc.apply(0, batch, offset=2)                              # the same message, replayed
    assert proc.clocks[0].watermark == at(D, 11)
    assert [e["ts"] for e in proc.live["c-1"].held] == [at(D + 20, 9)]


def test_a_replayed_clock_error_moves_no_watermark() -> None:
    """A year-2099 event is a clock error (future_ts) the first time; replayed after a
    hand-over, in a message its customer already applied, it must not move the clock."""
    metrics = Metrics()
    proc = CustomerProcessor(SETTINGS, {}, {}, metrics, partition_of=lambda cid: 0,
                             wall_clock=lambda: at(D + 1, 0))
    proc.apply(0, [usage(c, at(D, 10), "u1") for c in ("c-1", "c-2")], offset=1)
    batch = [usage("c-1", 4_083_264_000.0, "u9"), usage("c-1", at(D, 11), "u2")]   # 2099
    first = proc.apply(0, batch, offset=2)
    assert [orjson.loads(v)["error"] for _, v in first] == ["future_ts"]
    assert proc.apply(0, batch, offset=2) == []                 # replayed: skipped
    assert proc.clocks[0].watermark == at(D, 11)


def test_a_quiet_gap_is_jumped_when_two_customers_agree() -> None:
    proc, metrics = make()
    proc.apply(0, [usage(c, at(D, 10), "u1") for c in ("c-1", "c-2", "c-3")])
    proc.apply(0, [usage("c-1", at(D + 5, 9), "u1")])           # alone: held
    assert proc.clocks[0].watermark == at(D, 10)
    proc.apply(0, [usage("c-1", at(D + 5, 9) + 60, "u1"),        # a second customer, but
                   usage("c-2", at(D + 5, 10), "u1")])          # three events: not yet
    assert proc.clocks[0].watermark == at(D, 10)
    proc.apply(0, [usage("c-2", at(D + 5, 11), "u1")])          # a run of four: jump
    assert proc.clocks[0].watermark == at(D + 5, 11)
    assert proc.clocks[0].ahead == {}
    assert counted(metrics, "usage", "accepted") == 7
    closes = [r["as_of"] for c, r in ((c, orjson.loads(v)) for c, v in proc.flush().records)
              if c == "c-3"]
    assert closes == [rfc3339(at(D + k, 0)) for k in range(1, 6)]


def test_a_jump_does_not_take_the_watermark_to_a_bad_clock_held_before_the_gap() -> None:
    """A stray event held days before a quiet gap, within a day after the gap's end: the jump
    applies the run's own events, not that one. Taking the watermark to its time closed the
    run's day before the rest of the day came (the chaos reference closed c-0002's 2026-01-25
    with dau 0, its six events of that afternoon applied after the close)."""
    proc, _ = make()
    proc.apply(0, [usage(c, at(D, 10), "u1") for c in ("c-1", "c-2", "c-3", "c-4")])
    proc.apply(0, [usage("c-4", at(D + 6, 5), "u4"), usage("c-3", at(D, 11), "u3")])  # held
    proc.apply(0, [usage("c-1", at(D + 5, 9), "u1"), usage("c-2", at(D + 5, 9.5), "u1"),
                   usage("c-1", at(D + 5, 10), "u1"), usage("c-2", at(D + 5, 10.5), "u1")])
    assert proc.clocks[0].watermark == at(D + 5, 10.5)          # the run: jumped
    proc.apply(0, [usage("c-3", at(D + 5, 15), "u3"), usage("c-1", at(D + 6, 9), "u1")])
    assert proc.clocks[0].ahead == {}                           # c-4's applied in its time
    closes = {(c, r["as_of"]): r for c, r in ((c, orjson.loads(v))
                                             for c, v in proc.flush().records)}
    assert closes[("c-3", rfc3339(at(D + 6, 0)))]["activity"]["dau"] == 1


def test_held_events_beyond_the_bound_are_future_ts() -> None:
    proc, metrics = make()
    proc.apply(0, [usage(c, at(D, 10), "u1") for c in ("c-1", "c-2")])
    proc.live["c-1"].held = [{"ts": at(D + 9, 1)}] * 1000      # as if 1,000 were held
    dls = proc.apply(0, [usage("c-1", at(D + 10, 9), "u1")])
    assert [orjson.loads(v)["error"] for _, v in dls] == ["future_ts"]


def test_first_event_of_a_partition_is_never_rejected() -> None:
    proc, metrics = make()
    assert proc.apply(0, [usage("c-1", at(D - 400), "u1")]) == []
    assert counted(metrics, "usage", "accepted") == 1


# ---- day close ---------------------------------------------------------------------------------


def test_day_close_emits_quiet_customers_with_slid_figures() -> None:
    proc, _ = make()
    proc.apply(0, [
        usage("c-1", at(D, 9), "u1"),
        usage("c-2", at(D - 1, 10), "v1"),
        usage("c-2", at(D, 10), "v1"),
        usage("c-2", at(D, 11), "v2"),
    ])
    recs = records(proc.flush())
    # c-2 at D: first day D-1 → n = 2; Σ DAU = 1 + 2 = 3 → (3/2)/2 = 0.75
    assert activity(recs, "c-2") == (2, 2, 2, 2, 0.75)

    # later the same day: no day close, only c-1 is emitted
    proc.apply(0, [usage("c-1", at(D, 20), "u1", action="x")])
    out = proc.flush()
    assert set(records(out)) == {"c-1"}

    # the watermark enters D+1: day D closes for every customer of the partition
    proc.apply(0, [usage("c-1", at(D + 1, 1), "u1")])
    out = proc.flush()
    # every customer is persisted at a day close: its health score of the day is kept for trend_7d
    assert sorted(cid for _, cid, _ in out.changelog) == ["c-1", "c-2"]
    recs = records(out)
    assert set(recs) == {"c-1", "c-2"}
    assert recs["c-2"]["as_of"] == "2026-03-02T00:00:00Z"   # its day-close record
    assert recs["c-1"]["as_of"] == "2026-03-02T01:00:00Z"   # its latest event, after the close
    # c-2's close as of D+1 00:00 covers the complete days up to D: n = 2 (first day D-1);
    #   dau = DAU(D) = 2; wau = mau = {v1, v2} = 2; active days 2; Σ DAU = 1 + 2 → (3/2)/2
    assert activity(recs, "c-2") == (2, 2, 2, 2, 0.75)
    assert proc.days_closed == 1
    # active users of day D kept with the clock: u1 of c-1, v1 and v2 of c-2 (of 2 customers)
    assert out.clocks == [(0, {"wm": at(D + 1, 1), "day": D + 1, "features": {},
                               "base": {"*": [(D, 3)]}, "lb": [D, {"*": [3, 2, 0, 0]}]})]


def test_day_close_only_for_members_of_the_partition() -> None:
    proc, _ = make()
    proc.apply(0, [usage("c-1", at(D, 9), "u1")])
    proc.apply(1, [usage("c-9", at(D, 9), "u1")])
    proc.flush()
    proc.apply(0, [usage("c-1", at(D + 1, 1), "u1")])   # partition 0 closes day D
    assert set(records(proc.flush())) == {"c-1"}


def test_jump_over_several_days_closes_once() -> None:
    proc, _ = make()
    proc.apply(0, [usage("c-1", at(D, 20), "u1"), usage("c-2", at(D, 20), "v1")])
    proc.flush()
    # D 20:00 → D+1 19:00 (within skew) → D+2 18:00
    proc.apply(0, [usage("c-1", at(D + 1, 19), "u1"), usage("c-1", at(D + 2, 18), "u1")])
    assert proc.days_closed == 2
    recs = records(proc.flush())
    # c-2's close as of D+2 00:00, over days up to D+1: first day D → n = 2; dau 0; wau 1;
    #   mau 1; Σ DAU 1 → (1/2)/1
    assert activity(recs, "c-2") == (0, 1, 1, 1, 0.5)


def test_quiet_customer_reaches_mau_zero_after_thirty_days() -> None:
    proc, _ = make()
    proc.apply(0, [usage("c-2", at(D, 10), "v1"), usage("c-2", at(D, 11), "v2"),
                   usage("c-1", at(D, 12), "u1")])
    proc.flush()
    seen: dict[int, tuple[Any, ...]] = {}
    for k in range(1, 32):
        # c-1 keeps the watermark moving: 00:30 and 12:00 each day (12.5 h steps < skew)
        proc.apply(0, [usage("c-1", at(D + k, 0.5), "u1"), usage("c-1", at(D + k, 12), "u1")])
        recs = records(proc.flush())
        assert "c-2" in recs                      # emitted at every day close
        assert recs["c-2"]["as_of"] == rfc3339(at(D + k, 0))
        seen[k] = activity(recs, "c-2")
    # The close as of D+k 00:00 covers the complete days up to D+k-1.
    # k = 1, over D alone: n = 1; dau = 2; Σ DAU = 2 → (2/1)/2 = 1.0
    assert seen[1] == (2, 2, 2, 1, 1.0)
    # k = 7: the week D … D+6 still holds D; k = 8: out of the week
    assert seen[7][1] == 2
    assert seen[8][1] == 0
    # k = 30: days D … D+29, D the first; n = 30 → (2/30)/2
    assert seen[30] == (0, 0, 2, 1, round(1 / 30, 6))
    # k = 31: days D+1 … D+30, nothing left in the window
    assert seen[31] == (0, 0, 0, 0, 0.0)


# ---- flush -------------------------------------------------------------------------------------


def test_one_changelog_entry_per_dirty_customer() -> None:
    proc, _ = make()
    batch = [usage("c-1", at(D, 1 + i / 10), f"u{i % 7}") for i in range(50)]
    batch += [usage("c-2", at(D, 1 + i / 10), f"v{i % 3}") for i in range(30)]
    proc.apply(0, batch[:40])
    proc.apply(0, batch[40:])
    out = proc.flush()
    assert sorted(cid for _, cid, _ in out.changelog) == ["c-1", "c-2"]
    assert all(p == 0 for p, _, _ in out.changelog)
    assert out.changelog[0][2] is proc.store[out.changelog[0][1]]
    assert sorted(cid for cid, _ in out.records) == ["c-1", "c-2"]
    assert len(proc.store["c-1"].seen) == 50
    # c-1: users u0…u6 all active on D → (7, 7, 7, 1, (7/1)/7 = 1.0)
    assert activity(records(out), "c-1") == (7, 7, 7, 1, 1.0)
    again = proc.flush()
    assert again.changelog == [] and again.records == [] and again.clocks == []


def test_flush_prunes_dirty_state() -> None:
    proc, _ = make()
    proc.apply(0, with_ticks([usage("c-1", at(D - 40), "old"), usage("c-1", at(D - 20), "u1"),
                              usage("c-1", at(D - 19, 11), "u1")]))
    proc.flush()
    # walk the watermark forward a day at a time (12 h steps) up to D
    for k in range(-18, 1):  # D-19 11:00 → D-18 00:30 → D-18 12:00 → …
        proc.apply(0, [usage("c-1", at(D + k, 0.5), "u1"), usage("c-1", at(D + k, 12), "u1")])
    proc.flush()
    state = proc.store["c-1"]
    assert min(state.activity.masks) < D - 29     # pruned as of the clock last written (D-19)
    proc.apply(0, [usage("c-1", at(D, 13), "u1")])
    out = proc.flush()                            # now as of the clock written at D
    state = proc.store["c-1"]
    # activity kept from D-29; "old" (D-40) and its index are gone
    assert min(state.activity.masks) >= D - 29
    assert "old" not in state.activity.users
    # seen ids kept from day_of(wm - 3 d) - 1 = D-4 (one day of margin, see _prune)
    assert min(state.seen.by_day) == D - 4
    assert activity(records(out), "c-1")[2] == 1


# ---- restart -----------------------------------------------------------------------------------


def test_restart_from_serialised_state_replays_as_duplicates() -> None:
    events = with_ticks([
        signup("c-1", at(D - 10, 9)),
        event("billing", "c-1", at(D - 10, 10), type="subscription_started", mrr=49),
        event("support", "c-2", at(D - 1, 10), type="ticket_opened", ticket_id="t-1"),
        usage("c-1", at(D - 2, 10), "u1"),
        usage("c-2", at(D - 1, 10), "v1"),
        feature("c-1", at(D - 1, 12), "u2"),
        usage("c-1", at(D, 9), "u1"),
        usage("c-2", at(D, 10), "v2"),
    ])
    ticks = sum(1 for e in events if e["customer_id"] == "tick")
    # through the internal topic as JSON, as the agent sees them
    batch = orjson.loads(orjson.dumps(events))
    clock_store: dict[str, dict[str, Any]] = {}
    proc, _ = make(clock_store=clock_store)
    proc.apply(0, batch)
    out = proc.flush()
    for partition, clock in out.clocks:          # what the flush timer writes
        clock_store[str(partition)] = clock
    before = records(out)
    assert set(before) == {"c-1", "c-2", "tick"}
    # c-1 as of D (wm D 10:00): first day D-10 → n = 11; days D-2 {u1}, D-1 {u2}, D {u1}
    #   dau 1; wau 2; mau 2; active days 3; Σ DAU 3 → (3/11)/2
    assert activity(before, "c-1") == (1, 2, 2, 3, round(3 / 11 / 2, 6))
    # c-2: first day D-1 → n = 2; D-1 {v1}, D {v2}: Σ DAU 2 → (2/2)/2 = 0.5
    assert activity(before, "c-2") == (1, 2, 2, 2, 0.5)

    # "crash": only the changelog (encoded states) and the clock table survive
    store2 = {cid: decode_state(encode_state(state)) for _, cid, state in out.changelog}
    proc2, metrics2 = make(store=store2, clock_store=dict(clock_store))
    proc2.assign([0])
    assert proc2.members[0] == {"c-1", "c-2", "tick"}
    assert proc2.clocks[0].watermark == at(D, 10)
    republished = records(proc2.flush())          # every restored customer published once
    assert republished == before

    proc2.apply(0, orjson.loads(orjson.dumps(events)))
    dups = {"signup": 1, "billing": 1, "support": 1 + ticks, "usage": 4, "feature": 1}
    for family, n in dups.items():
        assert counted(metrics2, family, "duplicate") == n
        assert counted(metrics2, family, "accepted") == 0
        assert counted(metrics2, family, "late") == 0
    assert deadlettered(metrics2, "usage", "too_late") == 0
    out2 = proc2.flush()
    assert out2.changelog == [] and out2.records == []
    assert records(proc2.flush()) == {}
    assert store2["c-1"].events == 5 and store2["c-2"].events == 3
    assert store2["c-1"].segment == "smb"


def test_encode_decode_state_round_trip() -> None:
    proc, _ = make()
    proc.apply(0, batch_c1())
    proc.flush()
    state = proc.store["c-1"]
    back = decode_state(encode_state(state))
    assert back.to_dict() == state.to_dict()
    assert back.activity.figures(D, D - 9) == state.activity.figures(D, D - 9)


def test_every_field_of_the_state_survives_the_changelog() -> None:
    """Field by field, so two fields written under one key cannot hide each other."""
    from models.churn import FEATURES

    state = CustomerState("c-9")
    state.channel, state.plan, state.segment, state.cac = "ads", "pro", "smb", 120.0
    state.churn.book.add(D, {FEATURES[0]: 1.5}, 0.25, 3)
    state.churn.mrr.append([D, 99.0])
    state.churn.last = {"probability": 0.25, "risk": "medium", "model_ready": False,
                        "drivers": [], "model_version": 3}
    state.feature_use.record("reports", at(D), "u1")
    state.paid.on_mrr(at(D), 99.0)
    back = decode_state(encode_state(state))

    def plain(x: object) -> object:
        for name in ("to_dict", "to_list", "to_state"):
            if hasattr(x, name):
                return getattr(x, name)()
        return x

    for slot in CustomerState.__slots__:
        assert plain(getattr(back, slot)) == plain(getattr(state, slot)), slot
    assert back.channel == "ads" and back.churn.book.days == [D]


# ---- rebalance ---------------------------------------------------------------------------------


def test_revoke_drops_dirty_entries() -> None:
    proc, metrics = make()
    proc.apply(0, [usage("c-1", at(D), "u1")])
    proc.apply(1, [usage("c-9", at(D), "u1")])
    proc.revoke([1])
    out = proc.flush()
    assert [(p, cid) for p, cid, _ in out.changelog] == [(0, "c-1")]
    assert [cid for cid, _ in out.records] == ["c-1"]
    assert [p for p, _ in out.clocks] == [0]
    assert 1 not in proc.clocks and 1 not in proc.members
    assert metrics.registry.get_sample_value(
        "vitals_customers", {"segment": "unknown", "status": "trial"}) == 1


def test_revoke_forgets_gauge_contributions() -> None:
    proc, metrics = make()
    proc.apply(0, [signup("c-1", at(D)), usage("c-1", at(D), "u1")])
    proc.apply(1, [signup("c-9", at(D)), usage("c-9", at(D), "u1")])
    proc.flush()
    assert metrics.registry.get_sample_value(
        "vitals_customers", {"segment": "smb", "status": "trial"}) == 2
    proc.revoke([1])
    assert metrics.registry.get_sample_value(
        "vitals_customers", {"segment": "smb", "status": "trial"}) == 1


def test_assign_without_watermark_publishes_nothing() -> None:
    state = CustomerState("c-1")
    state.events = 1
    proc, _ = make(store={"c-1": state})
    proc.assign([0])
    assert proc.members[0] == {"c-1"}
    assert proc.flush().records == []


def test_epoch_milliseconds_are_read_as_milliseconds_before_they_reach_a_watermark() -> None:
    # An epoch number above 1e11 is milliseconds (docs/validation.md): never year 58135.
    obj = {"event_id": "ms-1", "customer_id": "c-1", "user_id": "u1", "action": "login",
           "ts": 1772366400000}
    assert VALIDATOR.validate("usage", obj)["ts"] == 1772366400.0
    # Milliseconds beyond year 9999 are still invalid_ts.
    with pytest.raises(InvalidEvent) as exc:
        VALIDATOR.validate("usage", {**obj, "ts": 253402300800 * 1000})
    assert exc.value.code == "invalid_ts"


def test_partition_recovers_after_a_gap_longer_than_the_skew() -> None:
    # A partition with one customer: nobody else to poison, so its own events move time.
    metrics = Metrics()
    proc = CustomerProcessor(SETTINGS, {}, {}, metrics, partition_of=lambda cid: 0,
                             wall_clock=lambda: at(D + 30))
    proc.apply(0, [usage("c-1", at(D, 12), "u1")])
    # traffic resumes two days later and keeps coming
    proc.apply(0, [usage("c-1", at(D + 2, 12 + h), "u1") for h in range(10)])
    assert counted(metrics, "usage", "accepted") == 11


class SerialisingStore(dict):  # type: ignore[type-arg]
    """Keeps encoded bytes and decodes on every read, as Faust's rocksdb:// store does."""

    def __setitem__(self, key: str, value: CustomerState) -> None:
        super().__setitem__(key, encode_state(value))

    def __getitem__(self, key: str) -> CustomerState:
        return decode_state(super().__getitem__(key))

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[key] if key in self else default


def test_processor_works_with_a_serialising_store() -> None:
    proc, _ = make(store=SerialisingStore())
    proc.apply(0, [usage("c-1", at(D, 9), "u1"), usage("c-1", at(D, 10), "u2")])
    out = proc.flush()
    assert activity(records(out), "c-1")[0] == 2          # dau {u1, u2}
    assert out.changelog[0][2].events == 2


def test_future_is_judged_against_the_wall_clock_too() -> None:
    # A replay may jump a quiet gap longer than the skew (its events are in the past), while a
    # first event far in the future of the wall clock is rejected even without a watermark.
    metrics = Metrics()
    now = at(D + 100)
    proc = CustomerProcessor(SETTINGS, {}, {}, metrics, partition_of=lambda cid: 0,
                             wall_clock=lambda: now)
    dead = proc.apply(0, [usage("c-1", at(D + 102), "u1")])          # 2 days past now: rejected
    assert [orjson.loads(v)["error"] for _, v in dead] == ["future_ts"]
    assert proc.apply(0, [usage("c-1", at(D), "u1"), usage("c-1", at(D + 10), "u1")]) == []


def test_every_closed_day_gets_its_feature_contribution_also_after_a_jump() -> None:
    settings = load_settings(env={"VITALS_TIME__MAX_SKEW_DAYS": "10"})   # allow the jump
    proc = CustomerProcessor(settings, {}, {}, Metrics(), partition_of=lambda cid: 0,
                             wall_clock=None)
    assert proc.apply(0, [feature("c-1", at(D, 10), "u1"), feature("c-1", at(D + 1, 10), "u1"),
                          usage("c-1", at(D + 4, 10), "u1")]) == []
    out = proc.flush()
    days = sorted(orjson.loads(v)["c"]["d"] for f, v in out.features if f == "reports")
    assert days == [D, D + 1, D + 2, D + 3]     # D+2 and D+3 had no event: still closed
    last = max((orjson.loads(v)["c"] for _, v in out.features), key=lambda c: c["d"])
    assert (last["fu"], last["au"]) == (1, 1)   # u1 used reports within D+3's window


def test_a_feature_learnt_late_gets_the_active_users_of_earlier_days_once() -> None:
    # The partition closes D .. D+34 knowing no feature; then another worker's catalog says
    # "exports" was first seen at D. Its after-release day D+29 is long closed here.
    proc, _ = make()
    proc.apply(0, sorted([usage("c-1", at(day, 10), "u1") for day in range(D, D + 35)]
                         + [usage("c-2", at(D + 3, 11), "v1")], key=lambda e: e["ts"]))
    assert proc.flush().features == []                  # no feature known yet
    proc.learn_catalog({"exports": at(D, 0)}.items())
    proc.apply(0, [usage("c-1", at(D + 35, 10), "u1"), usage("c-1", at(D + 36, 10), "u1")])
    sent = [orjson.loads(v) for f, v in proc.flush().features if f == "exports"]
    assert [m["c"]["d"] for m in sent] == [D + 34, D + 35]
    base = dict(sent[0]["b"])                           # only with the first one
    assert "b" not in sent[1]
    # c-1's u1 every day; c-2's v1 on D+3 only, inside the 30-day window up to D+32
    assert base[D + 29] == 2 and base[D + 32] == 2 and base[D + 33] == 1
    assert min(base) == D and max(base) == D + 34
    book = FeatureBook("exports")
    book.update(1, FeatureContribution("exports", D + 29, active_users=10, feature_users=4))
    for m in sent:
        book.update(m["p"], FeatureContribution.from_state(m["c"]), m.get("b"))
    assert book.after_release_counts(at(D, 0), partitions=2) == (4, 12)


def test_a_release_learnt_weeks_late_from_another_worker_is_still_counted_exactly() -> None:
    """Two workers, one partition each. "exports" is first used on partition 1 at D 14:00, but
    that worker is slow: partition 0 is 50 days on when the catalog tells it. Partition 1's
    published watermark (D + 1) keeps partition 0 from dropping the event times of day D,
    so it sends the exact [R, R+30d) counts, not the fallback by UTC days."""
    settings = load_settings(env={"VITALS_APP__PARTITIONS": "2"})
    proc = CustomerProcessor(settings, {}, {}, Metrics(), partition_of=lambda cid: 0,
                             wall_clock=None)
    release = at(D, 14)
    from streams.processor import PROGRESS_KEY
    proc.learn_catalog({f"{PROGRESS_KEY}1": {"wm": at(D + 1, 0)}}.items())
    events = [usage("c-1", at(day, 10), "u1") for day in range(D, D + 50)]
    events += [usage("c-2", at(D, 9), "v1"),                     # before R: not in the window
               usage("c-2", at(D, 15), "v2"),                    # after R on day D: in it
               feature("c-1", at(D + 2, 10), "u1", "exports")]
    proc.apply(0, sorted(events, key=lambda e: e["ts"]))
    last = [orjson.loads(v)["c"] for f, v in proc.flush().features if f == "exports"]
    # A late event of the last closed day: applied, but that close's counts stay as sent.
    proc.apply(0, [feature("c-2", at(D + 48, 23), "v3", "exports")])
    proc.learn_catalog({"exports": release, f"{PROGRESS_KEY}1": {"wm": at(D + 40, 0)}}.items())
    # No day is left to close here (the end of a backfill): the flush sends them at once.
    sent = [orjson.loads(v)["c"] for f, v in proc.flush().features if f == "exports"]
    assert [c["d"] for c in sent] == [D + 48]   # the last closed day, sent again
    exact = [c["ar"] for c in sent if "ar" in c]
    assert exact == [[release, 1, 2]], sent    # u1 used it; u1 and v2 active in [R, R+30d)
    # The rest as at the close, the days to adopt counted from the release now known: c-1's
    # first use D+2 10:00 is 1.8 days after it (0 from its own first use, as sent before).
    assert {k: v for k, v in sent[0].items() if k not in ("ar", "h")} == \
        {k: v for k, v in last[-1].items() if k != "h"}
    assert (last[-1]["h"], sent[0]["h"]) == ([[0, 1]], [[18, 1]])
    assert proc.flush().features == []          # once


def test_a_replay_is_skipped_by_position_not_judged_too_late() -> None:
    """After a crash the internal topic is read again from the last commit. Events the restored
    records already hold are skipped by position, even those now far behind the watermark."""
    store: dict[str, CustomerState] = {}
    clock_store: dict[str, dict[str, Any]] = {}
    proc, metrics = make(store, clock_store)
    old_batch = [signup("c-1", at(D - 5, 9)), usage("c-1", at(D - 5, 10), "u1")]
    steps = [at(D - 5 + k, 12) for k in range(6)]  # the watermark walks a day at a time
    proc.apply(0, old_batch, offset=10)
    for k, ts in enumerate(steps):
        proc.apply(0, [usage("c-1", ts, "u2")], offset=11 + k)
    for partition, clock in proc.flush().clocks:   # as the transport writes them
        clock_store[str(partition)] = clock
    restored = {cid: decode_state(encode_state(s)) for cid, s in store.items()}
    assert restored["c-1"].offset == 16
    # The clock restored ahead (written after its customers): the old batch is 5 days behind.
    again, metrics2 = make(restored, dict(clock_store))
    assert again.apply(0, old_batch, offset=10) == []            # no too_late dead letter
    assert metrics2.registry.get_sample_value(
        "vitals_deadletter_total", {"family": "usage", "error": "too_late"}) in (None, 0.0)
    for outcome in ("accepted", "duplicate", "late"):
        assert metrics2.registry.get_sample_value(
            "vitals_events_total", {"family": "usage", "outcome": outcome}) in (None, 0.0)
    # a batch past the stored position is applied as usual
    assert again.apply(0, [usage("c-1", at(D, 13), "u3")], offset=17) == []
    assert counted(metrics2, "usage", "accepted") == 1
    assert again.live["c-1"].offset == 17


def test_offsets_of_one_batch_do_not_skip_its_own_later_events() -> None:
    proc, metrics = make()
    proc.apply(0, [signup("c-1", at(D, 9)), usage("c-1", at(D, 10), "u1"),
                   usage("c-1", at(D, 11), "u2")], offset=0)
    assert counted(metrics, "usage", "accepted") == 2
    assert proc.live["c-1"].offset == 0


def test_an_event_that_makes_the_stage_raise_is_quarantined_and_the_stage_goes_on(monkeypatch):
    proc, metrics = make()
    real = proc._apply_event

    def faulty(state, event, partition):
        if event["event_id"] == "boom":
            raise OverflowError("int too large to convert")
        real(state, event, partition)

    monkeypatch.setattr(proc, "_apply_event", faulty)
    dls = proc.apply(0, [usage("c-1", at(D, 10), "u1"), usage("c-1", at(D, 11), "u2",
                                                               event_id="boom"),
                         usage("c-1", at(D, 12), "u3")], offset=3)
    assert len(dls) == 1
    dl = orjson.loads(dls[0][1])
    assert dl["error"] == "processing_error"
    assert dl["detail"] == "OverflowError: int too large to convert"
    assert '"boom"' in dl["raw"]
    assert counted(metrics, "usage", "accepted") == 2
    assert counted(metrics, "usage", "rejected") == 1
    assert deadlettered(metrics, "usage", "processing_error") == 1
    record = orjson.loads(dict(proc.flush().records)["c-1"])
    assert record["activity"]["dau"] == 2


def test_a_jump_of_the_watermark_publishes_every_day_it_closes() -> None:
    """A downstream store gets a complete daily series, also across a quiet gap."""
    proc, _ = make()
    proc.policy = dataclasses.replace(proc.policy, max_skew=10 * DAY)  # as a replay allows
    proc.apply(0, [usage("c-1", at(D, 20), "u1"), usage("c-2", at(D, 20), "v1")])
    proc.flush()
    proc.apply(0, [usage("c-1", at(D + 4, 9), "u1")])  # days D … D+3 close
    closes = [(cid, r["as_of"]) for cid, r in ((c, orjson.loads(v))
                                                for c, v in proc.flush().records)
              if r["as_of"].endswith("T00:00:00Z")]
    for cid in ("c-1", "c-2"):
        assert [a for c, a in closes if c == cid] == [rfc3339(at(D + k, 0)) for k in range(1, 5)]
    assert proc.days_closed == 4


def test_summaries_follow_day_closes_and_each_month_end_is_reported() -> None:
    """vitals.business aggregates are built from day-close evaluations only (a flush's
    mid-day view depends on when it runs), and frozen at each month's end."""
    proc, _ = make()
    march_31 = D + 30                                        # D = 2026-03-01
    proc.apply(0, [signup("c-1", at(march_31, 9)), usage("c-1", at(march_31, 10), "u1")])
    out = proc.flush()
    parts = [orjson.loads(v) for _, v in out.business if orjson.loads(v)["t"] == "part"]
    assert parts and all(p["sum"]["n"] == 0 for p in parts)  # no close yet: nobody counted
    proc.apply(0, [usage("c-1", at(march_31 + 1, 1), "u1")])  # 04-01: March closes
    msgs = [orjson.loads(v) for _, v in proc.flush().business]
    ends = {m["scope"]: m for m in msgs if m["t"] == "me"}
    assert ends["all"]["month"] == "2026-03" and ends["all"]["sum"]["n"] == 1
    assert ends["segment:smb"]["sum"]["n"] == 1 and ends["segment:solo"]["sum"]["n"] == 0
    latest = [m for m in msgs if m["t"] == "part" and m["scope"] == "all"]
    assert latest[-1]["sum"]["n"] == 1


def test_after_a_restart_the_summaries_are_those_of_the_last_close() -> None:
    """Not a new evaluation of a state that already holds the next day's events: c-1 reaches
    aha after its last close, so its time to value is not in the aggregates until the next."""
    store: dict[str, CustomerState] = {}
    proc, _ = make(store)
    proc.apply(0, [signup("c-1", at(D, 9)), usage("c-1", at(D, 10), "u1")])
    proc.apply(0, [usage("c-1", at(D + 1, 8), "u1"),                   # closes day D
                   usage("c-1", at(D + 1, 9), "u1", action="report_created")])  # aha
    proc.flush()
    restored = {cid: decode_state(encode_state(s)) for cid, s in store.items()}
    again, _ = make(restored)
    again.assign([0])
    parts = {orjson.loads(v)["scope"]: orjson.loads(v) for _, v in again.flush().business
             if orjson.loads(v)["t"] == "part"}
    assert parts["all"]["sum"]["n"] == 1 and parts["all"]["sum"]["ttv"] == {}
    assert parts["segment:smb"]["sum"]["n"] == 1


def test_an_event_at_midnight_is_in_its_own_days_record() -> None:
    proc, _ = make()
    proc.apply(0, [usage("c-1", at(D, 10), "u1")])
    proc.flush()
    proc.apply(0, [usage("c-1", at(D + 1, 0), "u2")])   # closes D, then opens D+1 with u2
    recs = [orjson.loads(v) for c, v in proc.flush().records if c == "c-1"]
    assert [r["as_of"] for r in recs] == ["2026-03-02T00:00:00Z", "2026-03-02T00:00:00.001Z"]
    assert recs[0]["activity"]["dau"] == 1 and recs[1]["activity"]["dau"] == 1
    assert recs[1]["activity"]["wau"] == 2


def test_features_first_seen_survive_a_crash_between_the_customer_and_clock_writes() -> None:
    """The customers are written before their clock. A crash in between restores a clock that
    never saw the features of those events, and the replay skips them by position: the key
    features (and so health) must come from the restored records."""
    clock_store: dict[str, dict[str, Any]] = {}
    proc, _ = make(clock_store=clock_store)
    proc.apply(0, [signup("c-1", at(D - 2, 9)), usage("c-1", at(D - 2, 10), "u1")], offset=1)
    for partition, clock in proc.flush().clocks:   # serialised, as the store does
        clock_store[str(partition)] = orjson.loads(orjson.dumps(clock))
    batch = [feature("c-1", at(D - 1, 10), "u1", name="exports"),
             usage("c-1", at(D, 10), "u1")]
    proc.apply(0, batch, offset=2)
    out = proc.flush()
    expected = proc.record("c-1", 0)
    # "crash": the customers' write landed, the clock's did not
    store = {cid: decode_state(encode_state(s)) for _, cid, s in out.changelog}
    again, _ = make(store, dict(clock_store))
    again.assign([0])
    assert again.apply(0, orjson.loads(orjson.dumps(batch)), offset=2) == []
    assert again.clocks[0].features == proc.clocks[0].features
    assert again.record("c-1", 0) == expected
    assert first_key(0, "exports") in {f for f, _ in again.flush().catalog}


def test_a_replayed_month_end_reports_each_customer_as_of_that_month_end() -> None:
    """A crash between the customers' write and their clock's: the restored clock replays the
    close that ended a month, which the restored customers already passed (they hold a later
    close). The month's business aggregates (avg health, at risk, ...) must still be as of its
    end, not of the later close."""
    clock_store: dict[str, dict[str, Any]] = {}
    proc, _ = make(clock_store=clock_store)
    start = [signup(c, at(D - 3, 8)) for c in ("c-1", "c-2")]
    start += [usage("c-1", at(D - 3, 9), "u1"), usage("c-2", at(D - 3, 9), "u2")]
    proc.apply(0, start, offset=1)
    for partition, clock in proc.flush().clocks:
        clock_store[str(partition)] = orjson.loads(orjson.dumps(clock))
    # Closes D - 2 .. D + 3: day D (2026-03-01) ends February; c-1 is busy after it.
    batch = with_ticks([usage("c-2", at(D - 2, 10), "u2"), usage("c-1", at(D - 1, 10), "u1")]
                       + [usage("c-1", at(D + k, 10), f"u{k}") for k in range(4)]
                       + [feature("c-1", at(D + k, 11), f"u{k}") for k in range(4)])
    proc.apply(0, batch, offset=2)
    out = proc.flush()

    def month_ends(flush: Flush) -> dict[str, Any]:
        return {scope: msg["sum"] for scope, msg in
                ((s, orjson.loads(v)) for s, v in flush.business) if msg["t"] == "me"}

    expected = month_ends(out)
    assert expected["all"]["n"] == 3     # c-1, c-2 and the tick customer
    # "crash": the customers' write landed, the clock's did not
    store = {cid: decode_state(encode_state(s)) for _, cid, s in out.changelog}
    again, _ = make(store, dict(clock_store))
    again.assign([0])
    assert again.apply(0, orjson.loads(orjson.dumps(batch)), offset=2) == []
    replayed = again.flush()
    assert month_ends(replayed) == expected
    # The summary at the last close is the later one: the check above is not trivial.
    assert again.summaries[0]["all"] != expected["all"]


def test_a_customer_holding_only_events_ahead_joins_no_day_close_after_a_restart() -> None:
    """Its first event is held (far ahead of the watermark). It is no member of the partition
    until an event of it is applied, before a restart as after: no day-close records, health
    history or alerts of a customer without a single applied event."""
    def run(restart: bool) -> list[tuple[str, float]]:
        proc, _ = make()
        proc.apply(0, [usage(c, at(D, 10), "u1") for c in ("c-1", "c-2", "c-3")])
        assert proc.apply(0, [usage("c-9", at(D + 20, 9), "u9")]) == []   # held
        out = proc.flush()
        if restart:
            store = {cid: decode_state(encode_state(s)) for _, cid, s in out.changelog}
            clocks = {str(p): orjson.loads(orjson.dumps(c)) for p, c in out.clocks}
            proc, _ = make(store, clocks)
            proc.assign([0])
            assert "c-9" not in proc.members[0]
            out = proc.flush()
        sent = [(cid, orjson.loads(v)["as_of"]) for cid, v in out.records]
        for k in range(1, 4):                              # three day closes
            proc.apply(0, [usage("c-2", at(D + k, 12), "u2")])
            sent += [(cid, orjson.loads(v)["as_of"]) for cid, v in proc.flush().records]
        return [s for s in sent if s[0] == "c-9"]

    assert run(restart=False) == []
    assert run(restart=True) == []


def test_an_event_ahead_of_its_input_gives_a_partition_without_time_no_time() -> None:
    """A keyless event with a wrong clock reaches a customer partition through another worker's
    ingest before any other event of that partition. Flagged by the ingest as ahead of its
    input, it is held: the partition's time starts with its first event in step with its
    input, and no event after it is judged against the wrong clock."""
    proc, metrics = make()
    stray = dict(feature("c-9", at(D + 40, 10), "u9"), ahead=True)
    assert proc.apply(0, [stray]) == []
    assert proc.clocks[0].watermark is None
    assert proc.apply(0, [usage(c, at(D, 10 + k), "u1") for k, c in enumerate(("c-1", "c-2"))]
                      ) == []
    assert proc.clocks[0].watermark == at(D, 11)
    assert counted(metrics, "usage", "accepted") == 2
    assert proc.clocks[0].ahead == {"c-9": at(D + 40, 10)}
    assert "c-9" not in proc.members[0]
    # With a time of its own, the partition judges the flag no more: the event is in step.
    proc.apply(0, [dict(usage("c-1", at(D, 12), "u1"), ahead=True)])
    assert counted(metrics, "usage", "accepted") == 3


def test_a_feature_learnt_after_the_last_close_is_sent_for_it_with_no_user() -> None:
    """Another worker's partition saw f; this one learns it from the catalog only after its
    last close (at the end of a backlog there is no next close), and again after a restart.
    Its partition must still count in f's figures, with that close's own active users."""
    clock_store: dict[str, dict[str, Any]] = {}
    proc, _ = make(clock_store=clock_store)
    proc.apply(0, [usage(c, at(D, 10), "u1") for c in ("c-1", "c-2")], offset=1)
    proc.apply(0, [usage("c-1", at(D + 1, 9), "u2")], offset=2)     # closes day D
    out = proc.flush()
    assert out.features == []                                        # no feature known yet
    for partition, clock in out.clocks:
        clock_store[str(partition)] = orjson.loads(orjson.dumps(clock))

    def sent(flush: Flush) -> list[dict[str, Any]]:
        return [orjson.loads(v) for f, v in flush.features if f == "exports"]

    proc.learn_catalog({"exports": at(D - 3, 8)}.items())
    [message] = sent(proc.flush())
    part = FeatureContribution.from_state(message["c"])
    assert (message["p"], part.day, part.feature_users, part.active_users) == (0, D, 0, 2)
    assert message["b"] == [[D, 2]]
    assert sent(proc.flush()) == []                                  # once
    # After a restart the catalog is read again: the same contribution, from the stored clock.
    store = {cid: decode_state(encode_state(s)) for _, cid, s in out.changelog}
    again, _ = make(store, dict(clock_store))
    again.assign([0])
    again.learn_catalog({"exports": at(D - 3, 8)}.items())
    assert [m["c"] for m in sent(again.flush())] == [message["c"]]


def exports_adopted_from_d_plus_1() -> list[dict[str, Any]]:
    """Two customers adopt exports from D+1 on; this partition's first use is its release."""
    return with_ticks([signup("c-1", at(D - 10, 8)), signup("c-2", at(D - 20, 8)),
                       feature("c-1", at(D + 1, 10), "u1", name="exports"),
                       feature("c-2", at(D + 2, 9), "u2", name="exports"),
                       feature("c-1", at(D + 3, 9), "u3", name="exports"),
                       usage("c-1", at(D + 5, 1), "u1")])


def test_a_release_learnt_earlier_after_the_close_recounts_days_to_adopt() -> None:
    """This partition's own first use of f is its release until another worker tells of an
    earlier one, after this partition's last close (the end of a burst). The contribution it
    sends again must be the one a close that knew the earlier release sends: days to adopt
    and Σ DAU since the release counted from it (not only the after-release figure)."""
    events = exports_adopted_from_d_plus_1()
    earlier = at(D - 3, 8)

    def last_sent(knew: bool) -> dict[str, Any]:
        proc, _ = make()
        if knew:
            proc.learn_catalog({"exports": earlier}.items())
        proc.apply(0, events)
        sent = [orjson.loads(v) for f, v in proc.flush().features if f == "exports"]
        if not knew:
            proc.learn_catalog({"exports": earlier}.items())
            sent += [orjson.loads(v) for f, v in proc.flush().features if f == "exports"]
        last = sent[-1]["c"]
        assert FeatureContribution.from_state(last).day == D + 4
        return last

    told_late, knew = last_sent(knew=False), last_sent(knew=True)
    assert FeatureContribution.from_state(knew).adopt_hist != {0: 2}   # the release matters
    assert told_late == knew


@pytest.mark.parametrize("learnt_first", [False, True])
def test_a_release_learnt_earlier_after_a_restart_recounts_the_close_sent_before_it(
        learnt_first: bool) -> None:
    """As above, but the worker dies between its last close and learning the earlier release
    (or hands the partition over): whoever restores the partition must still send the
    contribution a close that knew the earlier release sends. What the close counted from is
    kept with the clock while the release may still move earlier. ``learnt_first``: the
    release is learnt (and a flush passes) before the partition is restored, while the
    worker does not hold it, so the recount has no partition to count and the restore must
    ask for it (make chaos, seed 1, burst + SIGKILL, 3 workers: `adoption_30d_after_release`
    0.3597 against 0.3701)."""
    events = exports_adopted_from_d_plus_1()
    earlier = at(D - 3, 8)

    knew, _ = make()
    knew.learn_catalog({"exports": earlier}.items())
    knew.apply(0, events)
    expected = [orjson.loads(v) for f, v in knew.flush().features if f == "exports"][-1]["c"]

    clock_store: dict[str, dict[str, Any]] = {}
    proc, _ = make(clock_store=clock_store)
    proc.apply(0, events)
    out = proc.flush()
    for partition, clock in out.clocks:
        clock_store[str(partition)] = orjson.loads(orjson.dumps(clock))
    store = {cid: decode_state(encode_state(s)) for _, cid, s in out.changelog}
    again, _ = make(store, dict(clock_store))
    if learnt_first:
        again.learn_catalog({"exports": earlier}.items())
        again.flush()
    again.assign([0])
    again.learn_catalog({"exports": earlier}.items())
    resent = [orjson.loads(v)["c"] for f, v in again.flush().features if f == "exports"]
    assert FeatureContribution.from_state(expected).adopt_hist != {0: 2}  # the release matters
    assert resent and resent[-1] == expected


def test_records_written_ahead_of_their_clock_still_hold_what_its_closes_need() -> None:
    """A worker dies between writing a flush's customer records and writing its clock, after a
    burst moved the watermark two weeks in that flush. The restored (older) clock closes
    those days again from the newer records: they must still hold the release day's events,
    or the exact after-release counts are never sent (found by the burst + SIGKILL chaos run).
    """
    events = with_ticks([signup("c-1", at(D - 10, 8)), signup("c-2", at(D - 12, 8)),
                         feature("c-1", at(D, 10), "u1", name="exports"),
                         *[usage(c, at(D + k, 9), "u" + c) for k in range(0, 46, 3)
                           for c in ("c-1", "c-2")]])
    before = [e for e in events if e["ts"] < at(D + 30, 0)]
    burst = [e for e in events if e["ts"] >= at(D + 30, 0)]
    everyone = {f"{PROGRESS_KEY}{p}": {"wm": at(D + 60, 0)}
                for p in range(SETTINGS.app.partitions)}

    def sent(flush: Flush) -> list[Any]:
        return [orjson.loads(v)["c"] for f, v in flush.features if f == "exports"]

    def after_counts(flush: Flush) -> list[Any]:
        parts = [FeatureContribution.from_state(c) for c in sent(flush)]
        return [p.after for p in parts if p.after is not None]

    clock_store: dict[str, dict[str, Any]] = {}
    proc, _ = make(clock_store=clock_store)
    proc.learn_catalog(everyone.items())
    proc.apply(0, before, offset=1)
    for partition, clock in proc.flush().clocks:        # the clock as last written
        clock_store[str(partition)] = orjson.loads(orjson.dumps(clock))
    proc.apply(0, burst, offset=2)
    out = proc.flush()
    expected = sent(out)
    assert after_counts(out)[0][0] == at(D, 10)        # counted from the release on

    store = {cid: decode_state(encode_state(s)) for _, cid, s in out.changelog}
    again, _ = make(store, dict(clock_store))           # the burst's clock never written
    again.learn_catalog(everyone.items())
    again.assign([0])
    again.apply(0, burst, offset=2)                     # replayed: skipped, the days closed again
    assert sent(again.flush()) == expected             # the same contributions, exact ones too


def test_a_contribution_is_kept_with_the_clock_only_while_its_release_may_move_earlier() -> None:
    """Once every partition has published a watermark more than the lateness past a first-seen
    release, no partition can see f earlier: the clock stops carrying the contribution."""
    proc, _ = make()
    proc.apply(0, with_ticks([signup("c-1", at(D - 1, 8)),
                              feature("c-1", at(D, 10), "u1", name="exports"),
                              usage("c-1", at(D + 2, 9), "u1")]))
    assert "exports" in dict(proc.flush().clocks)[0]["sent"]
    proc.learn_catalog({f"{PROGRESS_KEY}{p}": {"wm": at(D + 3, 0)}
                        for p in range(SETTINGS.app.partitions)}.items())
    proc.apply(0, with_ticks([usage("c-1", at(D + 3, 9), "u1")]))
    assert "sent" not in dict(proc.flush().clocks)[0]   # D 10:00 <= D+3 00:00 - 2 days


def test_the_catalog_keeps_a_features_earliest_time_whatever_the_order_of_its_records() -> None:
    """A restarted worker publishes the first times of its restored clock, later than one
    another worker published before: read in one batch, the later record of the key must not
    replace the earlier (it did, read as a table, and a whole backfill was counted from the
    later release). Old plain feature keys are still read."""
    proc, _ = make()
    proc.learn_catalog([(first_key(2, "exports"), at(D, 10)),
                        (first_key(2, "exports"), at(D + 5, 1)),
                        (first_key(1, "exports"), at(D + 3, 1)),
                        ("reports", at(D, 8)), ("reports", at(D + 1, 8))])
    assert proc.catalog == {"exports": at(D, 10), "reports": at(D, 8)}


def test_features_of_a_restored_clock_are_published_again_and_a_revoke_sends_the_catalog() -> None:
    """A worker can die, or hand its partition over, after writing a clock but before sending
    the catalog entry of a feature it saw: whoever restores the clock publishes it again."""
    clock_store: dict[str, dict[str, Any]] = {}
    proc, _ = make(clock_store=clock_store)
    proc.apply(0, [feature("c-1", at(D, 10), "u1", name="exports")])
    handed = proc.revoke([0])
    assert [f for f, _ in handed.catalog if not f.startswith(PROGRESS_KEY)] == \
        [first_key(0, "exports")]
    for partition, clock in handed.clocks:
        clock_store[str(partition)] = orjson.loads(orjson.dumps(clock))
    again, _ = make(clock_store=dict(clock_store))
    again.assign([0])
    assert (first_key(0, "exports"), orjson.dumps(at(D, 10))) in again.flush().catalog


def test_events_the_ingest_forwards_again_are_duplicates_whatever_their_age() -> None:
    """An ingest that dies after publishing a batch but before committing its input forwards
    the same input records again, at new internal offsets: recognised by their input position
    (also after a restart), counted as duplicates, never judged too late."""
    clock_store: dict[str, dict[str, Any]] = {}
    proc, metrics = make(clock_store=clock_store)
    src = ("vitals.events.usage", 3)
    first = [dict(usage("c-1", at(D - 9 + k, 10), "u1"), src=[*src, k]) for k in range(10)]
    proc.apply(0, first, offset=1)
    for partition, clock in proc.flush().clocks:
        clock_store[str(partition)] = orjson.loads(orjson.dumps(clock))
    again, metrics2 = make(proc.store, dict(clock_store))
    again.assign([0])
    assert again.apply(0, orjson.loads(orjson.dumps(first)), offset=2) == []  # 9 days old
    assert counted(metrics2, "usage", "duplicate") == 10
    assert deadlettered(metrics2, "usage", "too_late") in (None, 0.0)
    # the next record of that input partition is applied as usual
    assert again.apply(0, [dict(usage("c-1", at(D, 12), "u2"), src=[*src, 10])], offset=3) == []
    assert counted(metrics2, "usage", "accepted") == 1


def test_a_replayed_close_does_not_count_a_feature_learnt_after_it() -> None:
    """A late event makes its feature known after the close of its day. A crash in the middle
    of a flush keeps one customer's write (it holds that feature) and loses another's: the
    replayed close of the other must count the key features the first close counted."""
    clock_store: dict[str, dict[str, Any]] = {}
    proc, _ = make(clock_store=clock_store)
    proc.apply(0, [signup("c-1", at(D - 3, 9)), signup("c-2", at(D - 3, 9)),
                   usage("c-1", at(D - 3, 10), "u1"),
                   feature("c-2", at(D - 3, 11), "u2", name="reports")], offset=1)
    first = proc.flush()
    for partition, clock in first.clocks:   # serialised, as the store does
        clock_store[str(partition)] = orjson.loads(orjson.dumps(clock))
    written = {cid: encode_state(s) for _, cid, s in first.changelog}
    batch = [usage("c-1", at(D - 2, 10), "u1"),                      # closes D-3
             feature("c-1", at(D - 3, 20), "u1", name="exports"),     # late: after that close
             usage("c-2", at(D - 1, 10), "u2")]                       # closes D-2
    proc.apply(0, batch, offset=2)
    second = proc.flush()
    closes = {orjson.loads(v)["as_of"]: orjson.loads(v)["health"]
              for c, v in second.records if c == "c-2"}
    # The crash: c-1's write of the second flush landed, c-2's and the clock's did not.
    store = {cid: decode_state(data) for cid, data in written.items()}
    store.update({cid: decode_state(encode_state(s)) for _, cid, s in second.changelog
                  if cid == "c-1"})
    again, _ = make(store, dict(clock_store))
    again.assign([0])
    assert again.apply(0, orjson.loads(orjson.dumps(batch)), offset=2) == []
    assert again.clocks[0].features == proc.clocks[0].features
    replayed = {orjson.loads(v)["as_of"]: orjson.loads(v)["health"]
                for c, v in again.flush().records if c == "c-2"}
    assert closes.keys() <= replayed.keys()
    assert {k: replayed[k] for k in closes} == closes


def test_a_late_features_arrival_before_or_after_a_close_gives_the_same_close() -> None:
    """Within the allowed lateness, an event may reach the customer stage before or after the
    close of a day it precedes (an ingest restarted from other input offsets merges the
    families anew). Health's key features at that close must not depend on which."""
    start = [signup("c-1", at(D - 5, 9)), feature("c-1", at(D - 5, 10), "u1", name="reports"),
             *(usage("c-2", at(d, 10), "u2") for d in range(D - 4, D))]
    late = feature("c-2", at(D - 1, 20), "u2", name="exports")   # c-1 never used it
    closing = usage("c-2", at(D, 1), "u2")                        # closes D-1
    closes = []
    for batch in ([*start, closing, late], [*start, late, closing]):
        proc, _ = make()
        proc.apply(0, orjson.loads(orjson.dumps(batch)))
        out = proc.flush()
        mine = [orjson.loads(v) for c, v in out.records if c == "c-1"]
        closes.append(next(r["health"] for r in mine if r["as_of"] == rfc3339(at(D, 0))))
    assert closes[0] == closes[1]


def test_a_replay_jumps_the_quiet_gap_the_first_run_jumped() -> None:
    """The events ahead that made a partition jump a quiet gap are skipped in a replay (their
    customers' records hold them): they must still make the same run of events ahead, or the
    replayed partition stays behind and every later event is held."""
    clock_store: dict[str, dict[str, Any]] = {}
    proc, _ = make(clock_store=clock_store)
    proc.apply(0, [usage(c, at(D, 10), "u1") for c in ("c-1", "c-2", "c-3")], offset=1)
    for partition, clock in proc.flush().clocks:
        clock_store[str(partition)] = orjson.loads(orjson.dumps(clock))
    batches = [[usage("c-1", at(D + 5, 9), "u1")],
               [usage("c-1", at(D + 5, 9) + 60, "u1"), usage("c-2", at(D + 5, 10), "u1")],
               [usage("c-2", at(D + 5, 11), "u1")]]                 # the jump
    for offset, batch in enumerate(batches, start=2):
        proc.apply(0, orjson.loads(orjson.dumps(batch)), offset=offset)
    out = proc.flush()
    assert proc.clocks[0].watermark == at(D + 5, 11)
    store = {cid: decode_state(encode_state(s)) for _, cid, s in out.changelog}
    again, _ = make(store, dict(clock_store))      # the clock's write was lost
    again.assign([0])
    for offset, batch in enumerate(batches, start=2):
        assert again.apply(0, orjson.loads(orjson.dumps(batch)), offset=offset) == []
    assert again.clocks[0].watermark == proc.clocks[0].watermark
    assert again.clocks[0].closed_day == proc.clocks[0].closed_day


def test_a_held_event_changes_no_close_against_the_same_event_in_step() -> None:
    """Whether an event is held depends on what the ingest had read when it came (after a
    restart its input partition's level starts anew: the chaos run's c-0036 signup was held in
    one run and in step in the other), so a held event must be applied where an event in step
    would have been: its customer's `health_red` pair was lost when the release, at the
    watermark within the skew of it, moved the watermark a day early and closed day D without
    another customer's events of that day."""
    def run(signup_early: bool) -> list[tuple[str, dict[str, Any]]]:
        proc, _ = make()
        late_signup = signup("c-3", at(D + 1, 11))
        steps = [[usage("c-1", at(D, 10), "u1"), usage("c-2", at(D, 10), "u2")],
                 [usage("c-1", at(D, 20), "u1")],
                 [usage("c-2", at(D + 1, 5), "u2")],
                 [usage("c-1", at(D + 1, 12), "u1")],
                 [usage("c-2", at(D + 2, 1), "u2"), usage("c-3", at(D + 2, 2), "u3")]]
        if signup_early:
            steps.insert(1, [late_signup])           # 25 h ahead of the watermark: held
        else:
            steps.insert(4, [late_signup])           # in its place: in step
        records: list[tuple[str, dict[str, Any]]] = []
        for offset, batch in enumerate(steps, start=1):
            proc.apply(0, orjson.loads(orjson.dumps(batch)), offset=offset)
            records += [(cid, orjson.loads(v)) for cid, v in proc.flush().records]
        return [(cid, r) for cid, r in records if r["as_of"].endswith("T00:00:00Z")]

    held, in_step = run(signup_early=True), run(signup_early=False)
    assert [(c, r["as_of"]) for c, r in held] == [(c, r["as_of"]) for c, r in in_step]
    differences = [(c, r["as_of"], k, r[k], s[k]) for (c, r), (_, s) in zip(held, in_step,
                                                                             strict=True)
                   for k in r if r[k] != s[k]]
    assert differences == []


def test_a_replay_of_messages_its_clock_already_holds_changes_no_close() -> None:
    """The clock is written after the messages it holds, but the input commit can lag it: a
    restarted worker reads those messages again. Judged against the restored (later) clock,
    their in-step events looked too late to break the run of bad clocks between them, the
    run reached the quorum and the watermark jumped a week: the next day closed before its
    last events were applied (found by make test's crash run: 9 of 12 customers of a partition
    closed with half a day missing)."""
    ahead = [usage(c, at(D + 12, h), "u9") for h in (9, 10) for c in ("c-1", "c-2")]
    steady = with_ticks([usage(c, at(D + k, h), f"u{h}") for k in range(6) for h in (9, 15)
                         for c in ("c-1", "c-2", "c-3")])
    # Bad clocks between good events (once every customer was seen): no run, held.
    first = steady[:3] + [e for pair in zip(ahead, steady[3:7], strict=True) for e in pair]
    first += steady[7:]
    then = with_ticks([steady[-1]] + [usage(c, at(D + k, h), f"u{h}") for k in range(6, 9)
                                      for h in (9, 15) for c in ("c-1", "c-2", "c-3")])[1:]

    def closes(out: list[Flush]) -> dict[tuple[str, str], Any]:
        return {(c, r["as_of"]): r for f in out for c, r in
                ((c, orjson.loads(v)) for c, v in f.records) if r["as_of"].endswith("T00:00:00Z")}

    reference, _ = make()
    expected = closes([reference.flush() for _ in (reference.apply(0, first, offset=1),
                                                    reference.apply(0, then, offset=2))])
    clock_store: dict[str, dict[str, Any]] = {}
    proc, _ = make(clock_store=clock_store)
    proc.apply(0, first, offset=1)
    out = proc.flush()
    for partition, clock in out.clocks:
        clock_store[str(partition)] = orjson.loads(orjson.dumps(clock))
    store = {cid: decode_state(encode_state(s)) for _, cid, s in out.changelog}
    again, _ = make(store, clock_store)
    again.assign([0])
    replayed = closes([again.flush() for _ in (again.apply(0, first, offset=1),
                                               again.apply(0, then, offset=2))])
    later = {k: v for k, v in expected.items() if k[1] >= rfc3339(at(D + 6, 0))}
    assert later and {k: replayed.get(k) for k in later} == later


# ---- CLV: the churn rate of the segment, read from vitals.business by every worker --------


def _paying_smb() -> list[dict[str, Any]]:
    return with_ticks([signup("c-1", at(D - 40, 9)),
                       event("billing", "c-1", at(D - 35, 10), type="subscription_started",
                             mrr=100),
                       usage("c-1", at(D, 9), "u1")])


SAMPLES = [("segment:smb|2026-01", {"customers_churned": 1, "customers_start": 10}),
           ("segment:smb|2026-02", {"customers_churned": 2, "customers_start": 10}),
           ("all|2026-02", {"customers_churned": 9, "customers_start": 10})]


def test_a_customers_clv_does_not_depend_on_when_the_business_records_came() -> None:
    """c = mean(1/10, 2/10) over the complete months before March: CLV = 100 x 0.8 / 0.15.
    Read before or after the customer's closes, its last record is the same: a worker that
    owns no segment scope used the floor for good before (a 40-fold CLV with 2-5 workers)."""
    first, _ = make()
    assert first.learn_business(SAMPLES) == 0           # no customer yet
    first.apply(0, _paying_smb())
    early = records(first.flush())["c-1"]["revenue"]

    late, _ = make()
    late.apply(0, _paying_smb())
    before = records(late.flush())["c-1"]["revenue"]
    assert before["clv"] == pytest.approx(100 * 0.8 / SETTINGS.revenue.min_churn_rate)
    assert late.learn_business(SAMPLES) == 1            # February changed: evaluated again
    again = records(late.flush())["c-1"]["revenue"]
    assert again == early and again["clv"] == pytest.approx(100 * 0.8 / 0.15)
    assert late.record("c-1", 0)["revenue"] == again     # the HTTP API's view: the same rate
    assert again["clv_to_cac"] is None
    # the current month's sample is not behind any CLV yet; the same sample changes nothing
    assert late.learn_business([("segment:smb|2026-03",
                                 {"customers_churned": 5, "customers_start": 10})]) == 0
    assert late.learn_business(SAMPLES) == 0
    assert late.churn_rate("segment:smb", "2026-03") == pytest.approx(0.15)
    assert late.churn_rate("segment:smb", "2026-02") == pytest.approx(0.1)
    assert late.churn_rate("segment:mid", "2026-03") == SETTINGS.revenue.min_churn_rate

