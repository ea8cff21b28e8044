"""Known events in -> exact activity figures out on vitals.customer, through the real broker."""
from __future__ import annotations

from tests.integration.conftest import DAY, iso
from tests.integration.helpers import signup, tick, usage

USAGE = "events.usage"


def test_exact_activity_with_duplicates_late_events_and_day_close(
        worker, produce, customers_out, period):
    p = period
    a, quiet = f"act-a-{int(p)}", f"act-q-{int(p)}"
    produce.send("events.signup", signup(a, p + 0.5 * DAY, plan="pro"))
    produce.send("events.signup", signup(quiet, p + 0.1 * DAY, segment="solo"))
    produce.send(USAGE, usage(a, "u1", p + 0.6 * DAY))
    produce.send(USAGE, usage(a, "u1", p + 0.7 * DAY))
    produce.send(USAGE, usage(a, "u2", p + 0.8 * DAY))
    produce.send(USAGE, usage(a, "u1", p + 1.2 * DAY))
    repeated = usage(a, "u3", p + 3.1 * DAY)  # resent below, within the 3-day dedup horizon
    produce.send(USAGE, repeated)
    produce.send(USAGE, usage(quiet, "q1", p + 0.2 * DAY))
    produce.flush()
    # Kafka orders events within an input partition only: let these land before time moves on.
    customers_out.wait_for(lambda o: o.latest.get(a, {}).get("activity", {}).get("mau") == 3
                           and o.latest.get(quiet, {}).get("segment") == "solo")
    tick(produce, customers_out, "act", p + 5.5 * DAY)
    dup_before = worker.metric("vitals_events_total", family="usage", outcome="duplicate")
    late_before = worker.metric("vitals_events_total", family="usage", outcome="late")
    produce.send(USAGE, repeated)                                  # duplicate: same event_id
    produce.send(USAGE, usage(a, "u4", p + 3.2 * DAY))             # 2.3 days late: applied, late
    produce.flush()
    customers_out.wait_for(lambda o: o.latest[a]["activity"]["mau"] == 4)
    tick(produce, customers_out, "act", p + 6.25 * DAY)

    # a's latest record is its day close as of day 6 00:00 (its events are older), over the
    # complete days up to day 5. Days 0: {u1,u2}, 1: {u1}, 3: {u3,u4}: dau 0, wau = mau = 4
    # users, 3 active days; n = min(30, 5 - 0 + 1) = 6, stickiness = (2 + 1 + 2) / 6 / 4 = 5/24.
    record = customers_out.wait_for(
        lambda o: o.latest.get(a, {}).get("as_of") == iso(p + 6 * DAY) and o.latest[a])
    assert record["activity"] == {"dau": 0, "wau": 4, "mau": 4, "active_days_30d": 3,
                                  "stickiness": round(5 / 24, 6)}
    assert record["segment"] == "smb" and record["plan"] == "pro"
    assert record["signup_at"] == iso(p + 0.5 * DAY)
    assert worker.metric("vitals_events_total", family="usage", outcome="duplicate") == dup_before + 1
    assert worker.metric("vitals_events_total", family="usage", outcome="late") == late_before + 1

    # The quiet customer sends nothing more; day closes alone slide its window to empty.
    tick(produce, customers_out, "act", p + 40.5 * DAY)
    quiet_record = customers_out.wait_for(
        lambda o: o.latest.get(quiet, {}).get("as_of") == iso(p + 40 * DAY) and o.latest[quiet])
    assert quiet_record["activity"] == {"dau": 0, "wau": 0, "mau": 0, "active_days_30d": 0,
                                        "stickiness": 0.0}


def test_customer_view_and_metrics(worker, produce, customers_out, period):
    cid = f"view-{int(period)}"
    produce.send(USAGE, usage(cid, "u1", period + 10))
    produce.flush()
    customers_out.wait_for(lambda o: cid in o.latest)
    status, body = worker.get(f"/customers/{cid}")
    assert status == 200 and b'"dau":1' in body
    status, body = worker.get("/customers/nobody-at-all")
    assert status == 404 and b"unknown_customer" in body
    assert worker.get("/healthz")[0] == 200

    from prometheus_client.parser import text_string_to_metric_families

    text = worker.get("/metrics")[1].decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {
        "vitals_events": ("counter", {"family", "outcome"}),
        "vitals_deadletter": ("counter", {"family", "error"}),
        "vitals_watermark_timestamp_seconds": ("gauge", set()),
        "vitals_event_lag_seconds": ("gauge", set()),
        "vitals_customers": ("gauge", {"segment", "status"}),
        "vitals_stickiness_ratio": ("gauge", {"segment"}),
    }
    for name, (kind, labels) in expected.items():
        assert name in families, name
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert set(sample.labels) == labels, (name, sample)
    assert "vitals_events_total{" in text
    # The oldest partition watermark of the worker: moved by earlier tests, not by this one.
    assert worker.metric("vitals_watermark_timestamp_seconds") > 1.8e9
