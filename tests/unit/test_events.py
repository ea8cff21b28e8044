"""Input events (CONTRACT.md §1): every family valid, every class of bad input -> its error code."""

from __future__ import annotations

import math
import sys
from typing import Any

import orjson
import pytest

from streams import events as ev
from streams.events import (
    EventValidator,
    InvalidEvent,
    event_hash,
    from_segment_track,
    parse_ts,
    route_by_shape,
)

TS = "2026-03-01T12:00:00Z"
EPOCH = 1772366400.0  # 2026-03-01 = epoch day 20513; 20513 · 86400 + 12 · 3600

V = EventValidator("USD", {"USD": 1.0, "EUR": 1.1}, max_event_bytes=1000)

BASE = {"event_id": "e-1", "customer_id": "c-1", "ts": TS}
VALID: dict[str, dict[str, Any]] = {
    "signup": {**BASE, "segment": "smb"},
    "usage": {**BASE, "user_id": "u-1", "action": "login"},
    "feature": {**BASE, "user_id": "u-1", "feature": "reports"},
    "billing": {**BASE, "type": "subscription_started", "mrr": 99},
    "support": {**BASE, "type": "ticket_opened", "ticket_id": "t-1"},
}


def valid(family: str, **changes: Any) -> dict[str, Any]:
    """A valid event of `family` with fields changed; a value of `...` removes the field."""
    obj = dict(VALID[family])
    for key, value in changes.items():
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def code_of(family: str, obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    with pytest.raises(InvalidEvent) as info:
        V.parse(family, raw)
    assert info.value.detail  # always a human-readable reason
    assert str(info.value) == info.value.detail
    return info.value.code


def code_of_validate(family: str, obj: dict[str, Any]) -> str:
    """Like code_of, for values JSON cannot carry (NaN, inf, ints beyond 64 bits)."""
    with pytest.raises(InvalidEvent) as info:
        V.validate(family, obj)
    assert info.value.detail
    return info.value.code


# ---- event_hash --------------------------------------------------------------------------------


def test_event_hash_is_pinned() -> None:
    # Computed once (blake2b, 8-byte digest, little-endian). If these change, ids seen before an
    # upgrade are no longer recognised after it and replays are double counted.
    assert event_hash("e-1") == 11461081932386169649
    assert event_hash("evt-00000001") == 18279222262020226675
    assert event_hash("") == 13020603013274838756


def test_event_hash_is_64_bit_and_distinguishes_ids() -> None:
    hashes = {event_hash(f"e-{i}") for i in range(1000)}
    assert len(hashes) == 1000
    assert all(0 <= h < 2 ** 64 for h in hashes)
    assert event_hash("e-1") == event_hash("e-1")


# ---- parse_ts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("2026-03-01T12:00:00Z", EPOCH),
    ("2026-03-01T12:00:00+00:00", EPOCH),
    ("2026-03-01T13:00:00+01:00", EPOCH),           # offset applied
    ("2026-03-01T07:00:00-05:00", EPOCH),
    ("2026-03-01T12:00:00.250Z", EPOCH + 0.25),     # fraction kept
    (1772366400, EPOCH),                            # epoch seconds, int
    (1772366400.5, EPOCH + 0.5),                    # epoch seconds, float
    (1772366400000, EPOCH),                         # epoch milliseconds (above 1e11)
    (1772366400250, EPOCH + 0.25),
    ("2026-03-01 12:00:00Z", EPOCH),                # RFC 3339 allows a space for T
    ("2026-03-01t12:00:00z", EPOCH),                # and lower-case t and z
    ("2026-03-01T12:00:00.123456789Z", EPOCH + 0.123456),  # nanoseconds: cut to µs
    ("2026-03-01T12:00:00.1234567890Z", EPOCH + 0.123456),  # RFC 3339: any number of digits
    ("2000-01-01T00:00:00Z", 946684800.0),          # the default time.min_ts itself
    ("9999-12-31T23:59:59Z", 253402300799.0),       # the upper bound itself
    (946684800, 946684800.0),
])
def test_parse_ts_valid(value: Any, expected: float) -> None:
    assert parse_ts(value) == expected


@pytest.mark.parametrize("value", [
    "2026-03-01T12:00:00",        # naive: no offset
    "2026-03-01",                 # a date, no time, no offset
    "yesterday",
    "",
    "2026-13-01T00:00:00Z",       # month 13
    "1772366400",                 # epoch as a string is not RFC 3339
    True, False,                  # bool is not a number
    -1,                           # before the epoch
    0, 1.5,                       # 1970: before time.min_ts
    946684799,                    # one second before 2000-01-01
    "1999-12-31T23:59:59Z",
    float("nan"), float("inf"), float("-inf"),
    10 ** 400, -10 ** 400,        # ints too large for a float
    253402300800,                 # 10000-01-01 in seconds: read as ms (1978), before min_ts
    253402300800 * 1000,          # 10000-01-01 in milliseconds
    [2026], {"ts": 1}, None,
    # ISO 8601 forms that datetime.fromisoformat takes but RFC 3339 does not
    "20261202T112519Z", "2026-W49-3T10:00:00Z", "2026-12-02T11Z", "2026-12-02T11:25Z",
    "2026-336T10:00:00Z", "2026-12-02T112519Z", "2026-12-02T11:25:19+0100",
    "2026-12-02T11:25:19+01", "2026-12-02T11:25:19.Z", "2026-12-02T11:25:19,5Z",
    "+2026-12-02T11:25:19Z", " 2026-12-02T11:25:19Z", "2026-12-02T11:25:19Z ",
    "2026-12-02T11:25:19 Z", "2026-12-02_11:25:19Z", "26-12-02T11:25:19Z",
    "٢٠٢٦-12-02T11:25:19Z",       # Arabic-Indic digits
    "2026-12-02T24:00:00Z", "2026-12-02T23:59:60Z",   # hour 24, leap second
    "2026-12-02T11:25:19+24:00", "2026-12-02T11:25:19+01:60",
    "2026-02-29T00:00:00Z",       # not a leap year
])
def test_parse_ts_invalid(value: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_ts(value)
    assert info.value.code == ev.INVALID_TS


def test_parse_ts_epoch_seconds_or_milliseconds_split_at_1e11() -> None:
    # 1e11 itself is seconds (year 5138); anything above is milliseconds.
    assert parse_ts(100_000_000_000) == 1e11
    assert parse_ts(100_000_000_001, min_ts=0) == pytest.approx(100_000_000.001)  # 1973: ms
    assert ev.EPOCH_MS_THRESHOLD == 1e11


def test_parse_ts_min_and_max_are_parameters() -> None:
    assert parse_ts("1980-01-01T00:00:00Z", min_ts=1e8) == 315532800.0
    with pytest.raises(InvalidEvent, match="outside"):
        parse_ts("2026-03-01T12:00:00Z", min_ts=EPOCH + 1)
    assert parse_ts("2026-03-01T12:00:00Z", min_ts=EPOCH) == EPOCH
    with pytest.raises(InvalidEvent):
        parse_ts(EPOCH + 1, max_ts=EPOCH)


def test_parse_ts_offsets_apply_at_the_bounds() -> None:
    # 2000-01-01T00:30:00+01:00 is 1999-12-31T23:30:00Z: before min_ts
    with pytest.raises(InvalidEvent):
        parse_ts("2000-01-01T00:30:00+01:00")
    assert parse_ts("1999-12-31T23:30:00-01:00") == 946686600.0  # 00:30Z
    with pytest.raises(InvalidEvent):
        parse_ts("9999-12-31T23:59:59-01:00")  # year 10000 in UTC


def test_parse_rfc3339_detail_names_the_problem() -> None:
    with pytest.raises(InvalidEvent, match="UTC offset is mandatory"):
        ev.parse_rfc3339("2026-03-01T12:00:00.5")
    with pytest.raises(InvalidEvent, match="not RFC 3339.*20261202T112519Z"):
        ev.parse_rfc3339("20261202T112519Z")
    with pytest.raises(InvalidEvent, match="day is out of range"):
        ev.parse_rfc3339("2026-02-30T00:00:00Z")


def test_validator_min_ts_comes_from_the_constructor() -> None:
    late_start = EventValidator("USD", {"USD": 1.0}, min_ts=EPOCH)
    with pytest.raises(InvalidEvent) as info:
        late_start.validate("usage", valid("usage", ts=EPOCH - 1))
    assert info.value.code == ev.INVALID_TS
    assert late_start.validate("usage", valid("usage", ts=EPOCH))["ts"] == EPOCH


# ---- valid events ------------------------------------------------------------------------------


def test_valid_signup_minimal_and_full() -> None:
    assert V.parse("signup", orjson.dumps(VALID["signup"])) == {
        "family": "signup", "event_id": "e-1", "customer_id": "c-1", "ts": EPOCH,
        "user_id": None, "segment": "smb", "plan": None, "seats": None, "cac": None,
        "channel": None,
    }
    full = valid("signup", segment="enterprise", plan="pro", seats=25, cac=800, channel="ads",
                 user_id="u-9", extra={"ignored": True})
    out = V.validate("signup", full)
    assert (out["segment"], out["plan"], out["seats"], out["cac"], out["channel"],
            out["user_id"]) == ("enterprise", "pro", 25, 800.0, "ads", "u-9")
    assert "extra" not in out  # unknown fields are ignored


@pytest.mark.parametrize("segment", ["enterprise", "mid_market", "smb", "solo"])
def test_every_segment_is_valid(segment: str) -> None:
    assert V.validate("signup", valid("signup", segment=segment))["segment"] == segment


def test_valid_usage_defaults_quantity_to_one() -> None:
    out = V.validate("usage", VALID["usage"])
    assert out == {"family": "usage", "event_id": "e-1", "customer_id": "c-1", "ts": EPOCH,
                   "user_id": "u-1", "action": "login", "quantity": 1.0}
    assert V.validate("usage", valid("usage", quantity=2.5))["quantity"] == 2.5
    assert V.validate("usage", valid("usage", quantity=0))["quantity"] == 0.0  # >= 0 allowed


def test_valid_feature() -> None:
    assert V.validate("feature", VALID["feature"]) == {
        "family": "feature", "event_id": "e-1", "customer_id": "c-1", "ts": EPOCH,
        "user_id": "u-1", "feature": "reports"}


def test_valid_epoch_seconds_ts() -> None:
    assert V.validate("usage", valid("usage", ts=1772366400))["ts"] == EPOCH
    assert V.validate("usage", valid("usage", ts=1772366400.5))["ts"] == EPOCH + 0.5


@pytest.mark.parametrize("kind", ["subscription_started", "subscription_changed"])
def test_valid_subscription(kind: str) -> None:
    out = V.validate("billing", valid("billing", type=kind, mrr=499, seats=10))
    assert (out["type"], out["mrr"], out["seats"]) == (kind, 499.0, 10)
    out = V.validate("billing", valid("billing", type=kind, mrr=0))  # 0 is allowed
    assert (out["mrr"], out["seats"]) == (0.0, None)


def test_valid_subscription_cancelled_sets_mrr_zero() -> None:
    out = V.validate("billing", valid("billing", type="subscription_cancelled", mrr=...))
    assert out["type"] == "subscription_cancelled" and out["mrr"] == 0.0
    # a stray mrr on a cancellation is ignored
    assert V.validate("billing", valid("billing", type="subscription_cancelled",
                                       mrr=50))["mrr"] == 0.0


@pytest.mark.parametrize("kind", ["payment_succeeded", "payment_failed", "refund"])
def test_valid_amount_events(kind: str) -> None:
    out = V.validate("billing", valid("billing", type=kind, mrr=..., amount=120))
    assert out["type"] == kind and out["amount"] == 120.0
    assert "mrr" not in out


def test_currency_conversion_with_configured_rate() -> None:
    # 100 EUR · 1.1 USD/EUR = 110 USD
    out = V.validate("billing", valid("billing", type="payment_succeeded", mrr=...,
                                      amount=100, currency="EUR"))
    assert out["amount"] == pytest.approx(110.0)
    # 200 EUR MRR -> 220 USD
    assert V.validate("billing", valid("billing", mrr=200, currency="EUR"))["mrr"] == \
        pytest.approx(220.0)
    # signup cac is money too: 500 EUR -> 550 USD
    assert V.validate("signup", valid("signup", cac=500, currency="EUR"))["cac"] == \
        pytest.approx(550.0)
    # the reporting currency itself is not converted
    assert V.validate("billing", valid("billing", mrr=200, currency="USD"))["mrr"] == 200.0


@pytest.mark.parametrize("kind", ["ticket_opened", "ticket_closed"])
def test_valid_tickets_default_priority_normal(kind: str) -> None:
    out = V.validate("support", valid("support", type=kind))
    assert (out["type"], out["ticket_id"], out["priority"]) == (kind, "t-1", "normal")
    for p in ("low", "normal", "high", "urgent"):
        assert V.validate("support", valid("support", type=kind, priority=p))["priority"] == p
    # an integer ticket id is accepted and normalised to text
    assert V.validate("support", valid("support", type=kind, ticket_id=42))["ticket_id"] == "42"


@pytest.mark.parametrize("kind, scores", [("csat", [1, 3, 5]), ("nps", [0, 7, 10])])
def test_valid_surveys(kind: str, scores: list[float]) -> None:
    for score in scores:
        out = V.validate("support", valid("support", type=kind, ticket_id=..., score=score))
        assert out["type"] == kind and out["score"] == float(score)
        assert "priority" not in out


# ---- Segment track -----------------------------------------------------------------------------


SEGMENT = {
    "type": "track", "event": "report_created", "userId": "u-7", "messageId": "m-1",
    "timestamp": "2026-03-01T12:00:00.000Z",
    "properties": {"quantity": 3}, "context": {"groupId": "c-9"},
}


def test_segment_track_as_usage() -> None:
    out = V.parse("usage", orjson.dumps(SEGMENT))
    assert out == {"family": "usage", "event_id": "m-1", "customer_id": "c-9", "ts": EPOCH,
                   "user_id": "u-7", "action": "report_created", "quantity": 3.0}


def test_segment_track_as_feature_with_customer_in_properties() -> None:
    obj = {**SEGMENT, "event": "dashboards", "context": {},
           "properties": {"customer_id": "c-3"}}
    out = V.validate("feature", obj)
    assert out == {"family": "feature", "event_id": "m-1", "customer_id": "c-3", "ts": EPOCH,
                   "user_id": "u-7", "feature": "dashboards"}


def test_segment_group_id_wins_over_properties() -> None:
    obj = {**SEGMENT, "properties": {"customer_id": "c-3"}}
    assert V.validate("usage", obj)["customer_id"] == "c-9"
    assert V.validate("usage", obj)["quantity"] == 1.0  # no quantity in properties: default


def test_from_segment_track_mapping() -> None:
    assert from_segment_track(SEGMENT, "usage") == {
        "event_id": "m-1", "customer_id": "c-9", "user_id": "u-7",
        "ts": "2026-03-01T12:00:00.000Z", "action": "report_created", "quantity": 3}
    assert from_segment_track({"type": "track", "properties": None},
                              "feature") == {"event_id": None, "customer_id": None,
                                             "user_id": None, "ts": None, "feature": None}
    # context and properties, when present, must be objects
    for bad in ("x", [], 3, True):
        with pytest.raises(InvalidEvent) as info:
            from_segment_track({"type": "track", "context": bad}, "usage")
        assert info.value.code == ev.INVALID_FIELD
        with pytest.raises(InvalidEvent) as info:
            from_segment_track({"type": "track", "properties": bad}, "usage")
        assert info.value.code == ev.INVALID_FIELD


def test_segment_track_without_customer_is_missing_field() -> None:
    obj = {**SEGMENT, "context": {}, "properties": {}}
    assert code_of("usage", obj) == ev.MISSING_FIELD
    assert code_of("usage", {**SEGMENT, "userId": None}) == ev.MISSING_FIELD
    assert code_of("feature", {**SEGMENT, "messageId": None}) == ev.MISSING_FIELD


def test_track_type_on_other_families_is_not_translated() -> None:
    # on billing, "track" is just an unknown billing type
    assert code_of("billing", {**BASE, "type": "track"}) == ev.UNKNOWN_TYPE


# ---- bad input: envelope -----------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"{'a': 1}", b"\xff\xfe", b"NaN"])
def test_not_json(raw: bytes) -> None:
    assert code_of("usage", raw) == ev.NOT_JSON


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b'"text"', b"42", b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert code_of("usage", raw) == ev.NOT_OBJECT


def test_too_large() -> None:
    obj = valid("usage", padding="x" * 1000)
    assert code_of("usage", obj) == ev.TOO_LARGE
    # exactly at the limit is accepted (the check is "over")
    raw = orjson.dumps(valid("usage", padding=""))
    fill = 1000 - len(raw)
    exact = orjson.dumps(valid("usage", padding="x" * fill))
    assert len(exact) == 1000
    assert V.parse("usage", exact)["event_id"] == "e-1"


def test_unknown_family() -> None:
    assert code_of("clicks", {**BASE, "user_id": "u"}) == ev.UNKNOWN_FAMILY


# ---- bad input: missing fields -----------------------------------------------------------------

MISSING = [
    (family, name)
    for family in ("signup", "usage", "feature", "billing", "support")
    for name in ("event_id", "customer_id", "ts")
] + [
    ("usage", "user_id"), ("usage", "action"),
    ("feature", "user_id"), ("feature", "feature"),
    ("signup", "segment"),
    ("billing", "type"), ("billing", "mrr"),
    ("support", "type"), ("support", "ticket_id"),
]


@pytest.mark.parametrize("family, name", MISSING)
def test_missing_required_field(family: str, name: str) -> None:
    assert code_of(family, valid(family, **{name: ...})) == ev.MISSING_FIELD
    # an explicit null is the same as absent
    assert code_of(family, valid(family, **{name: None})) == ev.MISSING_FIELD


@pytest.mark.parametrize("family, obj", [
    ("billing", valid("billing", type="subscription_changed", mrr=...)),
    ("billing", valid("billing", type="payment_succeeded", mrr=...)),
    ("billing", valid("billing", type="payment_failed", mrr=...)),
    ("billing", valid("billing", type="refund", mrr=...)),
    ("support", valid("support", type="ticket_closed", ticket_id=...)),
    ("support", valid("support", type="csat", ticket_id=...)),
    ("support", valid("support", type="nps", ticket_id=...)),
])
def test_missing_type_specific_field(family: str, obj: dict[str, Any]) -> None:
    assert code_of(family, obj) == ev.MISSING_FIELD


def test_missing_field_detail_names_the_field() -> None:
    with pytest.raises(InvalidEvent, match="user_id is required for usage events"):
        V.validate("usage", valid("usage", user_id=...))


def test_user_id_optional_outside_usage_and_feature() -> None:
    for family in ("signup", "billing", "support"):
        assert V.validate(family, VALID[family])["user_id"] is None


# ---- bad input: ill-typed fields ---------------------------------------------------------------

INVALID = [
    ("usage", {"event_id": ""}),                   # empty id
    ("usage", {"event_id": "x" * 129}),            # over 128 chars
    ("usage", {"event_id": 42}),                   # not a string
    ("usage", {"customer_id": ["c"]}),
    ("usage", {"customer_id": ""}),
    ("usage", {"user_id": 7}),
    ("usage", {"action": True}),
    ("usage", {"quantity": -1}),                   # negative quantity
    ("usage", {"quantity": "2"}),
    ("usage", {"quantity": True}),                 # bool where a number is expected
    ("feature", {"feature": 1}),
    ("signup", {"seats": 0}),                      # seats >= 1
    ("signup", {"seats": 2.5}),                    # seats is an integer
    ("signup", {"seats": True}),
    ("signup", {"seats": "3"}),
    ("signup", {"cac": -5}),
    ("signup", {"cac": "800"}),
    ("signup", {"plan": 3}),
    ("billing", {"mrr": "99"}),                    # mrr as string
    ("billing", {"mrr": -1}),
    ("billing", {"mrr": False}),                   # bool where a number is expected
    ("billing", {"mrr": [99]}),
    ("billing", {"seats": 0}),
    ("billing", {"currency": 978}),                # currency must be a code
    ("billing", {"type": "payment_failed", "mrr": ..., "amount": "10"}),
    ("billing", {"type": "refund", "mrr": ..., "amount": -10}),
    ("support", {"priority": "critical"}),
    ("support", {"ticket_id": ""}),
    ("support", {"ticket_id": True}),
    ("support", {"ticket_id": 1.5}),
    ("support", {"type": "csat", "ticket_id": ..., "score": 0}),    # csat 1-5
    ("support", {"type": "csat", "ticket_id": ..., "score": 6}),
    ("support", {"type": "csat", "ticket_id": ..., "score": "5"}),
    ("support", {"type": "csat", "ticket_id": ..., "score": True}),
    ("support", {"type": "nps", "ticket_id": ..., "score": -1}),    # nps 0-10
    ("support", {"type": "nps", "ticket_id": ..., "score": 11}),
]


@pytest.mark.parametrize("family, changes", INVALID)
def test_ill_typed_field(family: str, changes: dict[str, Any]) -> None:
    assert code_of(family, valid(family, **changes)) == ev.INVALID_FIELD


@pytest.mark.parametrize("family, kind", [
    ("billing", "subscription_paused"), ("billing", "SUBSCRIPTION_STARTED"), ("billing", ""),
    ("support", "ticket_reopened"), ("support", "ces"), ("support", "x" * 900),
])
def test_unknown_type(family: str, kind: Any) -> None:
    assert code_of(family, valid(family, type=kind)) == ev.UNKNOWN_TYPE


@pytest.mark.parametrize("segment", ["startup", "SMB", "", "smb "])
def test_unknown_segment(segment: Any) -> None:
    assert code_of("signup", valid("signup", segment=segment)) == ev.UNKNOWN_SEGMENT


@pytest.mark.parametrize("family", ["signup", "usage", "feature", "billing", "support"])
@pytest.mark.parametrize("ts", ["not a time", "2026-03-01T12:00:00", "2026-02-30T00:00:00Z",
                                True, -5, [1]])
def test_invalid_ts_every_family(family: str, ts: Any) -> None:
    assert code_of(family, valid(family, ts=ts)) == ev.INVALID_TS


def test_naive_ts_detail_mentions_offset() -> None:
    with pytest.raises(InvalidEvent, match="UTC offset is mandatory"):
        V.validate("usage", valid("usage", ts="2026-03-01T12:00:00"))


@pytest.mark.parametrize("family, obj", [
    ("billing", valid("billing", mrr=99, currency="GBP")),
    ("billing", valid("billing", type="payment_succeeded", mrr=..., amount=5, currency="JPY")),
    ("billing", valid("billing", type="refund", mrr=..., amount=5, currency="eur")),  # case
    ("signup", valid("signup", cac=100, currency="GBP")),
])
def test_unknown_currency(family: str, obj: dict[str, Any]) -> None:
    assert code_of(family, obj) == ev.UNKNOWN_CURRENCY


def test_currency_without_money_is_not_checked() -> None:
    # a cancellation carries no amount: an unknown currency does not matter
    out = V.validate("billing", valid("billing", type="subscription_cancelled", mrr=...,
                                      currency="GBP"))
    assert out["mrr"] == 0.0


def test_first_error_wins_in_field_order() -> None:
    # event_id is checked before ts, ts before the family fields
    assert code_of("usage", valid("usage", event_id=..., ts="bad")) == ev.MISSING_FIELD
    assert code_of("usage", valid("usage", ts="bad", action=...)) == ev.INVALID_TS


def test_every_error_code_is_declared() -> None:
    assert set(ev.ERROR_CODES) == {
        "not_json", "not_object", "missing_field", "invalid_field", "unknown_type",
        "unknown_segment", "invalid_ts", "future_ts", "too_late", "unknown_currency",
        "too_large", "unknown_family", "processing_error"}


# ---- route_by_shape ----------------------------------------------------------------------------


@pytest.mark.parametrize("obj, family", [
    (VALID["signup"], "signup"),
    (VALID["usage"], "usage"),
    (VALID["feature"], "feature"),
    (VALID["billing"], "billing"),
    ({**BASE, "type": "refund", "amount": 3}, "billing"),
    (VALID["support"], "support"),
    ({**BASE, "type": "nps", "score": 9}, "support"),
    (SEGMENT, "usage"),                            # a Segment track is a usage event
    ({**SEGMENT, "event": "x"}, "usage"),
    ({**BASE}, None),                              # nothing distinctive
    ({**BASE, "type": "mystery"}, None),
])
def test_route_by_shape(obj: dict[str, Any], family: str | None) -> None:
    assert route_by_shape(obj) == family


# ---- hostile values: wrong JSON types never raise anything but InvalidEvent --------------------

HOSTILE = [[], {}, [1, 2], {"a": 1}, True, 3, 2.5, ""]


@pytest.mark.parametrize("value", HOSTILE[:-1])
@pytest.mark.parametrize("family, name", [
    ("signup", "segment"), ("billing", "type"), ("support", "type"),
])
def test_wrong_type_for_an_enumerated_field_is_invalid_field(family: str, name: str,
                                                             value: Any) -> None:
    # {"segment": []} used to raise TypeError (unhashable) and stop the ingest.
    assert code_of(family, valid(family, **{name: value})) == ev.INVALID_FIELD


@pytest.mark.parametrize("value", [[], {}, True, 3, 2.5, ""])
@pytest.mark.parametrize("family, name", [
    ("usage", "event_id"), ("usage", "customer_id"), ("usage", "user_id"),
    ("usage", "action"), ("feature", "feature"), ("signup", "plan"), ("signup", "channel"),
    ("billing", "user_id"), ("support", "ticket_id"),
])
def test_wrong_type_for_a_text_field_is_invalid_field(family: str, name: str,
                                                      value: Any) -> None:
    if name == "ticket_id" and type(value) is int:  # accepted, normalised to text
        assert V.validate(family, valid(family, ticket_id=value))["ticket_id"] == str(value)
        return
    assert code_of(family, valid(family, **{name: value})) == ev.INVALID_FIELD


@pytest.mark.parametrize("value", [[], {}, "", "high ", "HIGH", 1, True])
def test_priority_must_be_one_of_the_names(value: Any) -> None:
    # priority: [] used to be read as "normal"
    assert code_of("support", valid("support", priority=value)) == ev.INVALID_FIELD


def test_priority_null_defaults_to_normal() -> None:
    assert V.validate("support", valid("support", priority=None))["priority"] == "normal"


@pytest.mark.parametrize("value", [[], {}, True, 978, ""])
@pytest.mark.parametrize("family, obj", [
    ("billing", valid("billing")),
    ("billing", valid("billing", type="subscription_cancelled", mrr=...)),  # no money
    ("signup", valid("signup", cac=10)),
    ("signup", valid("signup")),                                            # no money
])
def test_currency_is_type_checked_whenever_present(family: str, obj: dict[str, Any],
                                                   value: Any) -> None:
    assert code_of(family, {**obj, "currency": value}) == ev.INVALID_FIELD


# ---- bounds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, name, limit", [
    ("usage", "event_id", ev.ID_MAX_CHARS), ("usage", "customer_id", ev.ID_MAX_CHARS),
    ("usage", "user_id", ev.TEXT_MAX_CHARS), ("usage", "action", ev.TEXT_MAX_CHARS),
    ("feature", "feature", ev.TEXT_MAX_CHARS), ("signup", "plan", ev.TEXT_MAX_CHARS),
    ("signup", "channel", ev.TEXT_MAX_CHARS), ("support", "ticket_id", ev.TEXT_MAX_CHARS),
    ("billing", "user_id", ev.TEXT_MAX_CHARS),
])
def test_text_length_bounds(family: str, name: str, limit: int) -> None:
    assert (ev.ID_MAX_CHARS, ev.TEXT_MAX_CHARS) == (128, 256)
    for n in (1, limit):
        out = V.validate(family, valid(family, **{name: "é" * n}))  # characters, not bytes
        assert out[name] == "é" * n
    for n in (0, limit + 1):
        assert code_of(family, valid(family, **{name: "a" * n})) == ev.INVALID_FIELD


def test_currency_length_bound() -> None:
    obj = valid("billing", type="payment_succeeded", mrr=..., amount=1)
    assert code_of("billing", {**obj, "currency": "X" * 257}) == ev.INVALID_FIELD
    assert code_of("billing", {**obj, "currency": "X" * 256}) == ev.UNKNOWN_CURRENCY


MONEY_FIELDS = [
    ("billing", "mrr", {"type": "subscription_started"}),
    ("billing", "mrr", {"type": "subscription_changed"}),
    ("billing", "amount", {"type": "payment_succeeded", "mrr": ...}),
    ("billing", "amount", {"type": "payment_failed", "mrr": ...}),
    ("billing", "amount", {"type": "refund", "mrr": ...}),
    ("signup", "cac", {}),
]


@pytest.mark.parametrize("family, name, extra", MONEY_FIELDS)
def test_money_upper_bound(family: str, name: str, extra: dict[str, Any]) -> None:
    assert ev.MAX_AMOUNT == 1e9
    ok = V.validate(family, valid(family, **extra, **{name: 1_000_000_000}))
    assert ok[name] == 1e9
    # mrr 1e20 used to pass and then overflow int64 micro-units in the revenue stage.
    for too_much in (math.nextafter(1e9, math.inf), 1_000_000_001, 9.3e12, 1e20, 1e300, 1e308,
                     sys.float_info.max, 10 ** 30, 10 ** 400):
        assert code_of_validate(family, valid(family, **extra, **{name: too_much})) \
            == ev.INVALID_FIELD


@pytest.mark.parametrize("family, name, extra", MONEY_FIELDS)
def test_money_lower_bound_and_resolution(family: str, name: str, extra: dict[str, Any]) -> None:
    assert V.validate(family, valid(family, **extra, **{name: 0}))[name] == 0.0
    assert V.validate(family, valid(family, **extra, **{name: 1e-6}))[name] == 1e-6
    # mrr 5e-324 used to make a customer active while revenue rounded it to 0.
    for tiny in (5e-324, 2.2250738585072014e-308, 1e-9, 9.99e-7):
        assert code_of(family, valid(family, **extra, **{name: tiny})) == ev.INVALID_FIELD
    for bad in (-1e-6, -0.5, -1e308, float("nan"), float("inf"), float("-inf")):
        assert code_of_validate(family, valid(family, **extra, **{name: bad})) \
            == ev.INVALID_FIELD


@pytest.mark.parametrize("family, name, extra", MONEY_FIELDS)
def test_money_is_rounded_to_micro_units(family: str, name: str, extra: dict[str, Any]) -> None:
    # Rounded once, as models/revenue.to_units does, so every stage sees the same amount.
    out = V.validate(family, valid(family, **extra, **{name: 12.3456785}))
    assert out[name] == 12.345678 or out[name] == 12.345679
    assert out[name] * 1_000_000 == round(out[name] * 1_000_000)
    assert V.validate(family, valid(family, **extra, **{name: 1.5e-6}))[name] == 2e-6  # half even
    assert V.validate(family, valid(family, **extra, **{name: 499.99}))[name] == 499.99


def test_money_bound_applies_after_conversion() -> None:
    rich = EventValidator("USD", {"USD": 1.0, "EUR": 1.1})
    obj = valid("billing", mrr=9.5e8, currency="EUR")  # 1.045e9 USD
    with pytest.raises(InvalidEvent) as info:
        rich.validate("billing", obj)
    assert info.value.code == ev.INVALID_FIELD and "USD" in info.value.detail
    # a huge amount times a rate is inf: still invalid_field, not an error
    with pytest.raises(InvalidEvent) as info:
        rich.validate("billing", valid("billing", mrr=sys.float_info.max, currency="EUR"))
    assert info.value.code == ev.INVALID_FIELD
    # converted amounts are rounded to micro-units too: 100 EUR -> 110 USD exactly
    assert rich.validate("billing", valid("billing", mrr=100, currency="EUR"))["mrr"] == 110.0


def test_currency_rates_must_be_positive() -> None:
    for rate in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="EUR"):
            EventValidator("USD", {"USD": 1.0, "EUR": rate})


def test_seats_bounds() -> None:
    assert ev.MAX_SEATS == 1_000_000
    for family, extra in (("signup", {}), ("billing", {"type": "subscription_changed"})):
        for ok in (1, 1_000_000):
            assert V.validate(family, valid(family, **extra, seats=ok))["seats"] == ok
        # seats 10**18 used to pass
        for bad in (0, -1, 1_000_001, 10 ** 18, 10 ** 400, 2.0, 1e6, "5", [5], True):
            assert code_of_validate(family, valid(family, **extra, seats=bad)) \
                == ev.INVALID_FIELD


def test_quantity_bounds() -> None:
    assert ev.MAX_QUANTITY == 1e9
    for ok in (0, 0.5, 1_000_000_000, 1e9):
        assert V.validate("usage", valid("usage", quantity=ok))["quantity"] == float(ok)
    for bad in (-1e-9, math.nextafter(1e9, math.inf), 10 ** 400, float("nan"), float("inf"),
                [], {}, "1", False):
        assert code_of_validate("usage", valid("usage", quantity=bad)) == ev.INVALID_FIELD


@pytest.mark.parametrize("kind, low, high", [("csat", 1, 5), ("nps", 0, 10)])
def test_score_bounds_and_integers(kind: str, low: int, high: int) -> None:
    base = valid("support", type=kind, ticket_id=...)
    for ok in (low, high):
        assert V.validate("support", {**base, "score": ok})["score"] == float(ok)
    for bad in (low - 1, high + 1, 4.5, 3.0, float("nan"), "3", [3], True, 10 ** 400):
        assert code_of_validate("support", {**base, "score": bad}) == ev.INVALID_FIELD


def test_integer_ticket_id_bounds() -> None:
    base = valid("support")
    assert V.validate("support", {**base, "ticket_id": 0})["ticket_id"] == "0"
    assert V.validate("support", {**base, "ticket_id": 2 ** 63 - 1})["ticket_id"] == \
        str(2 ** 63 - 1)
    for bad in (-1, 2 ** 63, 10 ** 400):
        assert code_of_validate("support", {**base, "ticket_id": bad}) == ev.INVALID_FIELD


def test_ts_zero_is_invalid_on_every_family() -> None:
    # ts: 0 used to open 684 monthly business records from 1970-01 on.
    for family in VALID:
        assert code_of(family, valid(family, ts=0)) == ev.INVALID_TS
        assert code_of(family, valid(family, ts="1970-01-01T00:00:00Z")) == ev.INVALID_TS


@pytest.mark.parametrize("ts", ["20261202T112519Z", "2026-W49-3T10:00:00Z", "2026-12-02T11Z"])
def test_iso8601_that_is_not_rfc3339_is_invalid(ts: str) -> None:
    assert code_of("usage", valid("usage", ts=ts)) == ev.INVALID_TS


def test_segment_track_fields_get_the_same_checks() -> None:
    cases = [
        ({"messageId": []}, ev.INVALID_FIELD), ({"messageId": "m" * 129}, ev.INVALID_FIELD),
        ({"userId": {}}, ev.INVALID_FIELD), ({"userId": "u" * 257}, ev.INVALID_FIELD),
        ({"event": []}, ev.INVALID_FIELD), ({"event": ""}, ev.INVALID_FIELD),
        ({"timestamp": 0}, ev.INVALID_TS), ({"timestamp": "20261202T112519Z"}, ev.INVALID_TS),
        ({"timestamp": None}, ev.MISSING_FIELD),
        ({"context": {"groupId": []}}, ev.INVALID_FIELD),
        ({"context": {"groupId": ""}}, ev.INVALID_FIELD),   # no fallback from an empty groupId
        ({"context": []}, ev.INVALID_FIELD), ({"properties": "x"}, ev.INVALID_FIELD),
        ({"properties": {"quantity": -1}}, ev.INVALID_FIELD),
        ({"properties": {"quantity": 1e10}}, ev.INVALID_FIELD),
        ({"properties": {"quantity": []}}, ev.INVALID_FIELD),
        ({"context": {}, "properties": {"customer_id": {}}}, ev.INVALID_FIELD),
    ]
    for changes, code in cases:
        for family in ("usage", "feature"):
            if "quantity" in str(changes) and family == "feature":
                continue  # a feature event has no quantity
            assert code_of(family, {**SEGMENT, **changes}) == code, (changes, family)
    assert V.validate("usage", {**SEGMENT, "timestamp": 1772366400000})["ts"] == EPOCH


def test_details_stay_short_for_huge_values() -> None:
    big = EventValidator("USD", {"USD": 1.0})
    for changes in ({"segment": "x" * 100_000}, {"segment": [[[[1]]]] * 10_000},
                    {"seats": 10 ** 5000}, {"ts": "9" * 100_000}, {"plan": {"k" * 5000: 1}}):
        with pytest.raises(InvalidEvent) as info:
            big.validate("signup", valid("signup", **changes))
        assert len(info.value.detail) < 400, info.value.detail[:100]


def test_route_by_shape_never_raises_on_hostile_types() -> None:
    for kind in ([], {}, 1, None, True):
        assert route_by_shape({"type": kind}) is None
    assert route_by_shape({"type": [], "segment": "smb"}) == "signup"


# ---- Schema Registry framing -------------------------------------------------------------------


def frame(payload: bytes, schema_id: int = 42) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + payload


@pytest.mark.parametrize("schema_id", [0, 1, 42, 0xFFFFFFFF])
def test_schema_registry_framed_json_is_accepted(schema_id: int) -> None:
    for family, obj in VALID.items():
        plain = V.parse(family, orjson.dumps(obj))
        assert V.parse(family, frame(orjson.dumps(obj), schema_id)) == plain


def test_unframe() -> None:
    assert ev.unframe(b'{"a":1}') == b'{"a":1}'
    assert ev.unframe(frame(b'{"a":1}')) == b'{"a":1}'
    assert ev.unframe(b"\x00\x00\x00\x00\x07") == b""
    with pytest.raises(InvalidEvent) as info:
        ev.unframe(b"\x00\x00\x01")
    assert info.value.code == ev.NOT_JSON and "5-byte" in info.value.detail


@pytest.mark.parametrize("raw, code", [
    (b"\x00", ev.NOT_JSON), (b"\x00\x00\x00\x00", ev.NOT_JSON),       # shorter than the frame
    (b"\x00\x00\x00\x00\x01", ev.NOT_JSON),                           # frame, empty payload
    (frame(b"\x00\x00\x00\x00\x01{}"), ev.NOT_JSON),                  # framed twice
    (frame(b"\x02\x06abc"), ev.NOT_JSON),                             # Avro payload
    (frame(b"[1]"), ev.NOT_OBJECT),
    (frame(orjson.dumps(valid("usage", user_id=[]))), ev.INVALID_FIELD),
])
def test_schema_registry_frame_errors(raw: bytes, code: str) -> None:
    assert code_of("usage", raw) == code


def test_framed_size_counts_the_frame() -> None:
    raw = orjson.dumps(valid("usage", padding=""))
    exact = orjson.dumps(valid("usage", padding="x" * (1000 - 5 - len(raw))))
    assert V.parse("usage", frame(exact))["event_id"] == "e-1"
    assert code_of("usage", frame(exact + b" ")) == ev.TOO_LARGE
