"""Property-based fuzz of input validation (Hypothesis).

Whatever arrives on an input topic, the validator either returns an event that satisfies the
contract (types, ranges, time bounds, the family's fields) or raises InvalidEvent with a
declared code; never any other exception. The ingest then turns every record into exactly one
event or one deliverable dead letter.
"""
from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.revenue import to_units
from streams import events as ev
from streams.deadletter import RAW_MAX_BYTES
from streams.delay import ARRIVAL
from streams.events import EventValidator, InvalidEvent, event_hash
from streams.exporters.metrics import Metrics
from streams.ingest import Ingest, TimeAligner
from streams.settings import load_settings
from streams.time import rfc3339

V = EventValidator("USD", {"USD": 1.0, "EUR": 1.1, "JPY": 0.0067})
FUZZ = settings(max_examples=300, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Codes the validator itself can give (future_ts and too_late are judged later, against the
# watermark; processing_error only by the ingest's safety net).
VALIDATOR_CODES = set(ev.ERROR_CODES) - {ev.FUTURE_TS, ev.TOO_LATE, ev.PROCESSING_ERROR}

def encode(obj: Any) -> bytes:
    """JSON text as any producer may write it: ints of any size (orjson reads big ones as
    floats), non-ASCII escaped or not."""
    return json.dumps(obj, allow_nan=False, ensure_ascii=len(str(obj)) % 2 == 0).encode()


# ---- strategies ---------------------------------------------------------------------------------

JSON_INT = st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)  # what orjson can write
json_scalars = (st.none() | st.booleans() | JSON_INT
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)
# Python values only validate() can receive: NaN, infinities, ints beyond 64 bits.
python_values = json_values | st.floats() | st.integers() | st.sampled_from(
    [10 ** 400, -10 ** 400, float("nan"), float("inf"), -float("inf")])

EDGE_NUMBERS = [0, 1, -1, 0.5, 1e-6, 9.99e-7, 5e-324, 2.2250738585072014e-308, 1.5e-6, 5, 10,
                11, 4.5, 3.0, 1e6, 1_000_000, 1_000_001, 1e9, 1_000_000_000, 1_000_000_001,
                math.nextafter(1e9, math.inf), 9.3e12, 1e20, 1e300, 1e308, sys.float_info.max,
                2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, ev.DEFAULT_MIN_TS, ev.DEFAULT_MIN_TS - 1,
                ev.MAX_TS, ev.MAX_TS + 1, 1e11, 1e11 + 1, 1772366400, 1772366400000,
                ev.MAX_TS * 1000, ev.MAX_TS * 1000 + 1, -1e11, True, False]
numbers = (st.sampled_from(EDGE_NUMBERS) | st.integers()
           | st.floats(allow_nan=False, allow_infinity=False))
lengths = st.sampled_from([0, 1, 127, 128, 129, 255, 256, 257, 1000])
edge_text = lengths.map(lambda n: "a" * n) | st.text(max_size=300)
names = st.sampled_from(sorted(ev.SEGMENTS | ev.BILLING_TYPES | ev.SUPPORT_TYPES | ev.PRIORITIES)
                        + ["USD", "EUR", "JPY", "GBP", "track", "", "SMB", "normal "])
# Strings of the RFC 3339 shape with random digits (most are impossible dates or times).
rfc3339_shaped = st.from_regex(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,12})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})", fullmatch=True)
timestamps = st.builds(
    lambda y, mo, d, h, mi, s, frac, sep, off: f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:"
                                               f"{s:02d}{frac}{off}",
    st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32), st.integers(0, 24),
    st.integers(0, 60), st.integers(0, 60), st.sampled_from(["", ".5", ".123456789", "."]),
    st.sampled_from(["T", "t", " ", "_", ""]),
    st.sampled_from(["Z", "z", "+00:00", "-05:30", "+23:59", "+24:00", "+0100", "", " Z"]))
iso8601_not_rfc3339 = st.sampled_from([
    "20261202T112519Z", "2026-W49-3T10:00:00Z", "2026-12-02T11Z", "2026-336T10:00:00Z",
    "2026-12-02", "2026-12-02T11:25:19", "1772366400"])


def field_values(name: str) -> st.SearchStrategy[Any]:
    """Values for one field: plausible, at the bounds, or anything JSON can carry."""
    if name in ("ts", "timestamp"):
        special: st.SearchStrategy[Any] = (timestamps | rfc3339_shaped | iso8601_not_rfc3339
                                           | numbers)
    elif name in ("mrr", "amount", "cac", "quantity", "seats", "score", "ticket_id"):
        special = numbers | edge_text
    elif name in ("context", "properties"):
        special = st.fixed_dictionaries({}, optional={
            "groupId": edge_text | json_values, "customer_id": edge_text | json_values,
            "quantity": numbers | json_values})
    else:
        special = names | edge_text
    return special | json_values


ABSENT = object()
short_text = st.text(min_size=1, max_size=20)
money = st.integers(0, 10 ** 6) | st.floats(0, 1e6)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "ts": st.floats(ev.DEFAULT_MIN_TS, 4102444800.0)                 # 2000 .. 2100
    | st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 31)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S") + ("Z" if d.second % 2 else ".5+02:00")),
    "segment": st.sampled_from(sorted(ev.SEGMENTS)),
    "mrr": money, "amount": money, "cac": money, "quantity": money,
    "seats": st.integers(1, 1000), "score": st.integers(0, 10),
    "priority": st.sampled_from(sorted(ev.PRIORITIES)),
    "currency": st.sampled_from(["USD", "EUR", "JPY"]),
    "ticket_id": short_text | st.integers(0, 10 ** 6),
    "context": st.fixed_dictionaries({"groupId": short_text}),
    "properties": st.fixed_dictionaries({}, optional={"quantity": money,
                                                      "customer_id": short_text}),
}
PLAUSIBLE["timestamp"] = PLAUSIBLE["ts"]


def present_or_not(name: str, values_of: Any) -> st.SearchStrategy[Any]:
    """Mostly a plausible value (so that the later checks are reached), else anything, or the
    field left out."""
    plausible = PLAUSIBLE.get(name, short_text)
    return st.integers(0, 19).flatmap(
        lambda n: values_of(name) if n == 0 else st.just(ABSENT) if n == 1 else plausible)


COMMON = ["event_id", "customer_id", "ts", "user_id"]
FIELDS = {
    "signup": COMMON + ["segment", "plan", "seats", "cac", "channel", "currency"],
    "usage": COMMON + ["action", "quantity", "type", "event", "userId", "messageId",
                       "timestamp", "properties", "context"],
    "feature": COMMON + ["feature", "type", "event", "userId", "messageId", "timestamp",
                         "properties", "context"],
    "billing": COMMON + ["type", "mrr", "amount", "seats", "currency"],
    "support": COMMON + ["type", "ticket_id", "priority", "score"],
}
TYPES = {"usage": ["track"], "feature": ["track"], "billing": sorted(ev.BILLING_TYPES),
         "support": sorted(ev.SUPPORT_TYPES), "signup": []}


@st.composite
def event_objects(draw: st.DrawFn, values_of: Any = field_values) -> tuple[str, dict[str, Any]]:
    """A family and an object whose fields are each absent, plausible or anything."""
    family = draw(st.sampled_from(ev.FAMILIES))
    fields = {name: present_or_not(name, values_of) for name in FIELDS[family]}
    if family in ("usage", "feature"):  # the contract shape or a Segment track, half each
        fields["type"] = st.one_of(st.just(ABSENT), st.just("track"), values_of("type"))
    elif TYPES[family]:  # mostly a known type, so the type-specific checks are reached
        fields["type"] = st.one_of(st.sampled_from(TYPES[family]),
                                   st.sampled_from(TYPES[family]), values_of("type"))
    obj = draw(st.fixed_dictionaries(fields))
    return family, {k: v for k, v in obj.items() if v is not ABSENT}


# Valid events of every family and type, the starting points of the mutation fuzz.
TS = "2026-03-01T12:00:00Z"
BASE = {"event_id": "e-1", "customer_id": "c-1", "ts": TS}
VALID: list[tuple[str, dict[str, Any]]] = [
    ("signup", {**BASE, "segment": "smb", "plan": "pro", "seats": 3, "cac": 800,
                "channel": "ads", "currency": "EUR", "user_id": "u"}),
    ("usage", {**BASE, "user_id": "u-1", "action": "login", "quantity": 2}),
    ("usage", {"type": "track", "event": "login", "userId": "u", "messageId": "m",
               "timestamp": TS, "properties": {"quantity": 3}, "context": {"groupId": "c"}}),
    ("feature", {**BASE, "user_id": "u-1", "feature": "reports"}),
    ("feature", {"type": "track", "event": "reports", "userId": "u", "messageId": "m",
                 "timestamp": 1772366400, "properties": {"customer_id": "c"}}),
    ("billing", {**BASE, "type": "subscription_started", "mrr": 99, "seats": 4}),
    ("billing", {**BASE, "type": "subscription_changed", "mrr": 120.5, "currency": "EUR"}),
    ("billing", {**BASE, "type": "subscription_cancelled"}),
    ("billing", {**BASE, "type": "payment_succeeded", "amount": 99}),
    ("billing", {**BASE, "type": "payment_failed", "amount": 99, "currency": "JPY"}),
    ("billing", {**BASE, "type": "refund", "amount": 10}),
    ("support", {**BASE, "type": "ticket_opened", "ticket_id": "t-1", "priority": "high"}),
    ("support", {**BASE, "type": "ticket_closed", "ticket_id": 7}),
    ("support", {**BASE, "type": "csat", "score": 4}),
    ("support", {**BASE, "type": "nps", "score": 9}),
]


# ---- the contract invariants of an accepted event ------------------------------------------------


def is_text(value: Any, high: int = ev.TEXT_MAX_CHARS) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= high


def is_money(value: Any) -> bool:
    return (type(value) is float and 0 <= value <= ev.MAX_AMOUNT
            and (value == 0 or value >= ev.MONEY_RESOLUTION)
            and to_units(value) / 1_000_000 == value)  # already whole micro-units


def assert_valid_event(family: str, out: dict[str, Any], validator: EventValidator = V) -> None:
    keys = {"family", "event_id", "customer_id", "ts", "user_id"}
    assert out["family"] == family
    assert is_text(out["event_id"], ev.ID_MAX_CHARS)
    assert is_text(out["customer_id"], ev.ID_MAX_CHARS)
    assert type(out["ts"]) is float and validator.min_ts <= out["ts"] <= ev.MAX_TS
    rfc3339(out["ts"])  # every accepted time can be written out
    if family in ("usage", "feature"):
        assert is_text(out["user_id"])
    else:
        assert out["user_id"] is None or is_text(out["user_id"])
    if family == "signup":
        keys |= {"segment", "plan", "seats", "cac", "channel"}
        assert out["segment"] in ev.SEGMENTS
        assert out["plan"] is None or is_text(out["plan"])
        assert out["channel"] is None or is_text(out["channel"])
        assert out["cac"] is None or is_money(out["cac"])
    elif family == "usage":
        keys |= {"action", "quantity"}
        assert is_text(out["action"])
        q = out["quantity"]
        assert type(q) is float and 0 <= q <= ev.MAX_QUANTITY
    elif family == "feature":
        keys |= {"feature"}
        assert is_text(out["feature"])
    elif family == "billing":
        keys |= {"type"}
        kind = out["type"]
        assert kind in ev.BILLING_TYPES
        if kind in ("subscription_started", "subscription_changed"):
            keys |= {"mrr", "seats"}
            assert is_money(out["mrr"])
        elif kind == "subscription_cancelled":
            keys |= {"mrr"}
            assert out["mrr"] == 0.0
        else:
            keys |= {"amount"}
            assert is_money(out["amount"])
    elif family == "support":
        keys |= {"type"}
        kind = out["type"]
        assert kind in ev.SUPPORT_TYPES
        if kind in ("ticket_opened", "ticket_closed"):
            keys |= {"ticket_id", "priority"}
            assert is_text(out["ticket_id"])
            assert out["priority"] in ev.PRIORITIES
        else:
            keys |= {"score"}
            low, high = ev.SCORE_RANGES[kind]
            assert type(out["score"]) is float and out["score"].is_integer()
            assert low <= out["score"] <= high
    if "seats" in keys:
        seats = out["seats"]
        assert seats is None or (type(seats) is int and 1 <= seats <= ev.MAX_SEATS)
    assert set(out) == keys
    # It travels through the internal topic as JSON and is deduplicated by its id hash.
    assert orjson.loads(orjson.dumps(out)) == out
    assert 0 <= event_hash(out["event_id"]) < 2 ** 64


def outcome(call: Any, family: str, value: Any) -> str:
    """'ok' (and the event checked) or the error code; any other exception fails the test."""
    try:
        out = call(family, value)
    except InvalidEvent as exc:
        assert exc.code in VALIDATOR_CODES, exc.code
        assert isinstance(exc.detail, str) and 0 < len(exc.detail) < 1000
        return exc.code
    assert_valid_event(family, out)
    return "ok"


# ---- properties -----------------------------------------------------------------------------------


@FUZZ
@given(event_objects())
def test_fuzz_every_field_of_every_family_through_parse(drawn: tuple[str, dict[str, Any]]) -> None:
    family, obj = drawn
    outcome(V.parse, family, encode(obj))


@FUZZ
@given(event_objects(values_of=lambda name: field_values(name) | python_values))
def test_fuzz_validate_with_values_json_cannot_carry(drawn: tuple[str, dict[str, Any]]) -> None:
    family, obj = drawn
    outcome(V.validate, family, obj)


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_fuzz_mutations_of_valid_events(base: tuple[str, dict[str, Any]], data: Any) -> None:
    family, obj = base
    assert outcome(V.validate, family, obj) == "ok"  # the starting point is valid
    mutated = dict(obj)
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(sorted(set(mutated) | set(FIELDS[family]))))
        if data.draw(st.booleans()) and name in mutated:
            del mutated[name]
        else:
            mutated[name] = data.draw(field_values(name))
    outcome(V.parse, family, encode(mutated))


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_fuzz_one_field_replaced_by_any_python_value(base: tuple[str, dict[str, Any]],
                                                     data: Any) -> None:
    family, obj = base
    name = data.draw(st.sampled_from(sorted(obj)))
    outcome(V.validate, family, {**obj, name: data.draw(python_values)})


@FUZZ
@given(st.sampled_from(ev.FAMILIES), json_values)
def test_fuzz_any_json_document(family: str, value: Any) -> None:
    code = outcome(V.parse, family, orjson.dumps(value))
    if not isinstance(value, dict):
        assert code == ev.NOT_OBJECT


@FUZZ
@given(st.sampled_from(ev.FAMILIES), st.binary(max_size=300), st.booleans(),
       st.binary(min_size=4, max_size=4))
def test_fuzz_arbitrary_bytes(family: str, raw: bytes, framed: bool, schema_id: bytes) -> None:
    outcome(V.parse, family, (b"\x00" + schema_id + raw) if framed else raw)


@FUZZ
@given(st.sampled_from(VALID), st.binary(min_size=4, max_size=4))
def test_fuzz_framed_valid_events_equal_plain_ones(base: tuple[str, dict[str, Any]],
                                                   schema_id: bytes) -> None:
    family, obj = base
    raw = orjson.dumps(obj)
    assert V.parse(family, b"\x00" + schema_id + raw) == V.parse(family, raw)


# ---- the ingest: one event or one deliverable dead letter per record -----------------------------

SETTINGS = load_settings(env={})
TOPICS = {family: topic for topic, family in SETTINGS.topics.input_topics().items()}


class Msg:
    timestamp = 1_767_225_600_000  # the broker's record timestamp (ms)

    def __init__(self, value: bytes | None, key: bytes | None, offset: int) -> None:
        self.value, self.key, self.offset = value, key, offset


record_values = (st.binary(max_size=200) | json_values.map(orjson.dumps)
                 | event_objects().map(lambda d: encode(d[1]))
                 | st.sampled_from(VALID).map(lambda d: orjson.dumps(d[1]))
                 | st.none()
                 | st.integers(RAW_MAX_BYTES - 2, RAW_MAX_BYTES + 2).map(lambda n: b"\xff" * n))


@settings(max_examples=150, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.sampled_from(ev.FAMILIES), record_values,
                          st.none() | st.binary(max_size=2000)), max_size=12))
def test_fuzz_ingest_read_turns_every_record_into_one_item(records: list[Any]) -> None:
    metrics = Metrics()
    ingest = Ingest(SETTINGS, metrics, lambda cid: 0)
    aligner = TimeAligner()
    polled: dict[TopicPartition, list[Msg]] = {}
    for i, (family, value, key) in enumerate(records):
        tp = TopicPartition(TOPICS[family], 0)
        polled.setdefault(tp, []).append(Msg(value, key, i))
    ingest.read(polled, aligner)
    items = [item for buf in aligner.buffers.values() for _, _, item, _ in buf]
    assert len(items) == len(records)
    for item in items:
        if isinstance(item, tuple):
            key, value = item
            assert key is None or len(key) <= 1024
            assert len(value) < 512 * 1024  # deliverable under a broker's default 1 MiB
            letter = orjson.loads(value)
            assert letter["error"] in VALIDATOR_CODES
        else:
            assert_valid_event(item["family"], {k: v for k, v in item.items()
                                                if k not in ("h", "src", "raw", "raw_bytes", "key", ARRIVAL)},
                               ingest.validator)
            assert item["h"] == event_hash(item["event_id"])


@pytest.mark.parametrize("family, obj", VALID)
def test_fuzz_starting_points_are_valid(family: str, obj: dict[str, Any]) -> None:
    assert outcome(V.parse, family, orjson.dumps(obj)) == "ok"
