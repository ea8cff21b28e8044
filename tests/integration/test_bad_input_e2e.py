"""Every class of bad input ends on vitals.deadletter, is counted, and the worker keeps going."""
from __future__ import annotations

import base64

import orjson

from tests.integration.conftest import DAY, iso
from tests.integration.helpers import tick, usage


def test_every_bad_input_class_is_dead_lettered_and_counted(
        worker, produce, deadletters_out, customers_out, period):
    p = period
    c = f"bad-{int(p)}"
    ok = {"event_id": "x", "customer_id": c, "ts": iso(p)}
    cases = [
        ("events.usage", b"{not json", "not_json"),
        ("events.usage", b"\xff\xfe binary", "not_json"),
        ("events.usage", b"[1, 2]", "not_object"),
        ("events.usage", orjson.dumps({**ok, "action": "login"}), "missing_field"),  # user_id
        ("events.feature", orjson.dumps({"customer_id": c, "ts": iso(p), "user_id": "u",
                                         "feature": "f"}), "missing_field"),        # event_id
        ("events.billing", orjson.dumps({**ok, "type": "subscription_started", "mrr": "99"}),
         "invalid_field"),
        ("events.billing", orjson.dumps({**ok, "type": "gift_card"}), "unknown_type"),
        ("events.support", orjson.dumps({**ok, "type": "tweet"}), "unknown_type"),
        ("events.signup", orjson.dumps({**ok, "segment": "galactic"}), "unknown_segment"),
        ("events.usage", orjson.dumps({**ok, "user_id": "u", "action": "a", "ts": "yesterday"}),
         "invalid_ts"),
        ("events.billing", orjson.dumps({**ok, "type": "payment_succeeded", "amount": 5,
                                         "currency": "XTS"}), "unknown_currency"),
        ("events.usage", orjson.dumps({**ok, "event_id": "far", "user_id": "u", "action": "a",
                                       "ts": iso(p + 40000 * DAY)}), "future_ts"),
    ]
    before = worker.metric("vitals_deadletter_total")
    produce.send("events.usage", usage(c, "u1", p))  # sets the watermark of c's partition
    produce.flush()
    customers_out.wait_for(lambda o: c in o.latest)
    for topic, raw, _ in cases:
        produce.send(topic, raw, key=c)
    # too_late: a usage event 4 days behind its partition's watermark (dedup horizon 3 days).
    tick(produce, customers_out, "bad", p + 10 * DAY)
    old = usage(c, "u1", p + 6 * DAY, event_id="stale")
    produce.send("events.usage", old)
    cases.append(("events.usage", orjson.dumps(old), "too_late"))
    produce.flush()

    def all_seen(out):
        mine = [v for k, v in out.records if k == c or (v.get("raw") or "").find(c) >= 0
                or v.get("raw_base64")]
        return mine if len(mine) >= len(cases) else None

    seen = deadletters_out.wait_for(all_seen)
    for topic, raw, code in cases:
        match = [d for d in seen if d["error"] == code and d["source_topic"] == topic and (
            (d["raw"] is not None and d["raw"].encode() == raw)
            or (d["raw_base64"] is not None and base64.b64decode(d["raw_base64"]) == raw))]
        assert match, f"no dead letter {code} for {raw!r}"
        d = match[0]
        assert d["detail"] and d["received_at"].endswith("Z")
        assert isinstance(d["partition"], int) and isinstance(d["offset"], int)
    assert worker.metric("vitals_deadletter_total") == before + len(cases)
    assert worker.metric("vitals_deadletter_total", family="usage", error="too_late") >= 1

    # And the worker keeps going.
    produce.send("events.usage", usage(c, "u2", p + 10 * DAY))
    produce.flush()
    record = customers_out.wait_for(
        lambda o: o.latest.get(c, {}).get("activity", {}).get("dau") == 1 and o.latest[c])
    assert record["activity"]["mau"] == 2  # u1 on day 0 and u2 on day 10, both in 30 days
