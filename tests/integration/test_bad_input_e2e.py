"""Every class of bad input ends on vitals.deadletter, is counted, and the worker keeps going."""
from __future__ import annotations

import base64
import hashlib
import json
import random
import threading
import time
from collections import Counter
from typing import Any

import orjson
from confluent_kafka import Producer

from streams.events import EventValidator, InvalidEvent
from streams.settings import load_settings
from tests.integration.conftest import DAY, iso
from tests.integration.helpers import signup, tick, usage


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


# ---- fuzz through the broker ---------------------------------------------------------------------

FUZZ_SEED = 20261203
HOSTILE_VALUES: list[Any] = [
    [], {}, [1], {"a": []}, True, False, -1, 0, 1.5, 5e-324, 9.99e-7, 1e20, 1e300, 1e308,
    10 ** 18, 2 ** 63, "", "x" * 300, "20261202T112519Z", "2026-W49-3T10:00:00Z",
    "2026-12-02T11Z", "2026-12-02T11:25:19", "yesterday", "NaN", "é" * 129, "\u0000",
    "1970-01-01T00:00:00Z", 1772366400000 * 1000, -1e11, "smb ", "URGENT", "track",
]
FIELDS = {
    "signup": ["event_id", "customer_id", "ts", "user_id", "segment", "plan", "seats", "cac",
               "channel", "currency"],
    "usage": ["event_id", "customer_id", "ts", "user_id", "action", "quantity", "type",
              "context", "properties"],
    "feature": ["event_id", "customer_id", "ts", "user_id", "feature"],
    "billing": ["event_id", "customer_id", "ts", "type", "mrr", "amount", "seats", "currency"],
    "support": ["event_id", "customer_id", "ts", "type", "ticket_id", "priority", "score"],
}


def _valid_event(rng: random.Random, family: str, cid: str, ts: str, i: int) -> dict[str, Any]:
    base = {"event_id": f"fz-{i}", "customer_id": cid, "ts": ts}
    return {
        "signup": {**base, "segment": "smb", "seats": 3, "cac": 100},
        "usage": {**base, "user_id": "u", "action": "login"},
        "feature": {**base, "user_id": "u", "feature": "reports"},
        "billing": {**base, "type": rng.choice(["subscription_started", "payment_succeeded"]),
                    "mrr": 10, "amount": 10},
        "support": {**base, "type": rng.choice(["ticket_opened", "csat"]), "ticket_id": "t",
                    "score": 4},
    }[family]


def _hostile(rng: random.Random, family: str, valid: dict[str, Any]) -> bytes:
    """One hostile record, from a seeded generator (reproducible run to run)."""
    kind = rng.random()
    if kind < 0.08:
        return rng.randbytes(rng.randrange(0, 200))
    if kind < 0.12:  # a Schema Registry frame around garbage or around a hostile object
        return b"\x00" + rng.randbytes(4) + rng.choice([b"", b"{", b"[1]", rng.randbytes(20)])
    if kind < 0.16:
        return rng.choice([b"[]", b"null", b'"text"', b"[" * 500 + b"]" * 500,
                           orjson.dumps(valid)[:-3], b"{}"])
    obj = dict(valid)
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(FIELDS[family])
        if rng.random() < 0.15:
            obj.pop(name, None)
        else:
            obj[name] = rng.choice(HOSTILE_VALUES + [rng.uniform(-1e12, 1e12),
                                                     rng.randrange(-2 ** 70, 2 ** 70)])
    if rng.random() < 0.03:  # large: its dead letter keeps only the first 64 KiB
        obj["padding"] = "p" * 200_000
    raw = json.dumps(obj).encode()  # stdlib json: ints beyond 64 bits are written as digits
    if rng.random() < 0.05:
        raw = b"\x00\x00\x00\x00\x2a" + raw
    return raw


def _fuzz_records(rng: random.Random, validator: EventValidator, p: float
                  ) -> tuple[dict[str, tuple[str, bytes, str]], list[tuple[str, dict[str, Any]]],
                             list[tuple[str, bytes, str]]]:
    """300 hostile records (key -> family, raw, the validator's code), with a good event every
    few records, and all of them as (topic, raw, key) in send order."""
    families = list(FIELDS)
    bad: dict[str, tuple[str, bytes, str]] = {}    # key -> (family, raw, expected code)
    good: list[tuple[str, dict[str, Any]]] = []
    items: list[tuple[str, bytes, str]] = []       # (topic, raw, key) in send order
    i = 0
    while len(bad) < 300:
        i += 1
        family = rng.choice(families)
        cid = f"fz-{int(p)}-{i % 23}"
        raw = _hostile(rng, family, _valid_event(rng, family, cid, iso(p + i), i))
        try:
            validator.parse(family, raw)
            continue  # the mutation left it valid: not a hostile record
        except InvalidEvent as exc:
            code = exc.code
        key = f"fz-bad-{int(p)}-{i}"
        bad[key] = (family, raw, code)
        items.append((f"events.{family}", raw, key))
        if i % 3 == 0:  # a good event every few records, with event time moving forward
            cid_ok = f"fz-ok-{int(p)}-{i % 7}"
            event = usage(cid_ok, f"u{i % 5}", p + i) if i % 2 else signup(cid_ok, p + i)
            if i % 2 == 0:
                event["event_id"] = f"s-{cid_ok}-{i}"
            fam = "usage" if i % 2 else "signup"
            good.append((fam, event))
            items.append((f"events.{fam}", orjson.dumps(event), cid_ok))
    return bad, good, items


def test_hostile_fuzz_among_good_events_through_a_running_worker(
        worker, produce, deadletters_out, customers_out, period):
    """A few hundred generated hostile records interleaved with good ones: the worker stays up
    and healthy, each bad record is dead-lettered exactly once with the code the validator
    gives, and every good event is counted as accepted."""
    p = period
    rng = random.Random(FUZZ_SEED)
    validator = EventValidator("USD", load_settings("test.toml", env={}).revenue.currency_rates)
    bad, good, items = _fuzz_records(rng, validator, p)
    codes = Counter((family, code) for family, _, code in bad.values())
    assert len(codes) >= 8, codes  # the generator reaches many codes, not one
    before = {fc: worker.metric("vitals_deadletter_total", family=fc[0], error=fc[1])
              for fc in codes}
    dl_before = worker.metric("vitals_deadletter_total")
    accepted_before = {f: worker.metric("vitals_events_total", family=f, outcome="accepted")
                       for f in ("usage", "signup")}

    health: list[int] = []
    stop = threading.Event()

    def watch_health() -> None:
        while not stop.is_set():
            health.append(worker.get("/healthz")[0])
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    try:
        for topic, raw, key in items:
            produce.send(topic, raw, key=key)
        produce.flush()

        def mine(out):
            found = [(k, v) for k, v in out.records if k in bad]
            return found if len(found) >= len(bad) else None

        deadletters_out.wait_for(mine, timeout=120)
        want = {f: accepted_before[f] + sum(1 for fam, _ in good if fam == f)
                for f in accepted_before}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                worker.metric("vitals_events_total", family=f, outcome="accepted") < want[f]
                for f in want):
            time.sleep(0.5)
        time.sleep(2)  # anything sent twice would have arrived by now
    finally:
        stop.set()
        watcher.join(5)

    letters: dict[str, list[dict[str, Any]]] = {}
    for k, v in list(deadletters_out.records):
        if k in bad:
            letters.setdefault(k, []).append(v)
    assert set(letters) == set(bad)
    for key, (family, raw, code) in bad.items():
        assert len(letters[key]) == 1, f"{key} dead-lettered {len(letters[key])} times"
        d = letters[key][0]
        assert (d["error"], d["source_topic"]) == (code, f"events.{family}"), (key, d["detail"])
        assert d["detail"]
        if d.get("raw_truncated"):
            assert d["raw_size"] == len(raw)
            assert d["raw_sha256"] == hashlib.sha256(raw).hexdigest()
        elif d["raw"] is not None:
            assert d["raw"].encode() == raw
        else:
            assert base64.b64decode(d["raw_base64"]) == raw
    for fc, n in codes.items():
        assert worker.metric("vitals_deadletter_total", family=fc[0], error=fc[1]) \
            == before[fc] + n, fc
    assert worker.metric("vitals_deadletter_total") == dl_before + len(bad)
    for f in want:
        assert worker.metric("vitals_events_total", family=f, outcome="accepted") == want[f], f
    assert health and set(health) == {200}, Counter(health)
    assert worker.proc.poll() is None  # still running


def test_a_9_mib_record_is_dead_lettered_and_the_worker_goes_on(
        broker, worker, produce, deadletters_out, customers_out, period):
    """The dead letter of a record larger than the ingest producer's 8 MiB request limit keeps
    its first 64 KiB, its size and its sha256, and the worker keeps processing."""
    p = period
    big = Producer({"bootstrap.servers": broker.address, "message.max.bytes": 16 << 20})
    raw = orjson.dumps({**usage(f"huge-{int(p)}", "u", p), "pad": "x" * (9 << 20)})
    key = f"huge-{int(p)}"
    big.produce("events.usage", raw, key=key)
    assert big.flush(30) == 0
    d = deadletters_out.wait_for(
        lambda o: next((v for k, v in o.records if k == key), None), timeout=60)
    assert (d["error"], d["raw_truncated"], d["raw_size"]) == ("too_large", True, len(raw))
    assert d["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert len(d["raw"]) == 64 * 1024 and raw.startswith(d["raw"].encode())
    # and the next good event is processed
    c = f"after-huge-{int(p)}"
    produce.send("events.usage", usage(c, "u", p + 60))
    produce.flush()
    customers_out.wait_for(lambda o: c in o.latest, timeout=60)
    assert worker.get("/healthz")[0] == 200
