"""Input events (CONTRACT.md §1): every family valid, every class of bad input -> its error code."""

from __future__ import annotations

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
    (0, 0.0),
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
    float("nan"), float("inf"),
    [2026], {"ts": 1},
])
def test_parse_ts_invalid(value: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_ts(value)
    assert info.value.code == ev.INVALID_TS


def test_parse_ts_rejects_epoch_milliseconds() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_ts(1772366400000)  # ms: year 58135
    assert info.value.code == ev.INVALID_TS


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


@pytest.mark.parametrize("kind, scores", [("csat", [1, 3, 5, 4.5]), ("nps", [0, 7, 10])])
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
    assert from_segment_track({"type": "track", "context": "x", "properties": None},
                              "feature") == {"event_id": None, "customer_id": None,
                                             "user_id": None, "ts": None, "feature": None}


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
    ("billing", "subscription_paused"), ("billing", "SUBSCRIPTION_STARTED"), ("billing", 1),
    ("support", "ticket_reopened"), ("support", "ces"),
])
def test_unknown_type(family: str, kind: Any) -> None:
    assert code_of(family, valid(family, type=kind)) == ev.UNKNOWN_TYPE


@pytest.mark.parametrize("segment", ["startup", "SMB", "", 3])
def test_unknown_segment(segment: Any) -> None:
    assert code_of("signup", valid("signup", segment=segment)) == ev.UNKNOWN_SEGMENT


@pytest.mark.parametrize("family", ["signup", "usage", "feature", "billing", "support"])
@pytest.mark.parametrize("ts", ["not a time", "2026-03-01T12:00:00", "2026-02-30T00:00:00Z",
                                True, -5, [1]])
def test_invalid_ts_every_family(family: str, ts: Any) -> None:
    assert code_of(family, valid(family, ts=ts)) == ev.INVALID_TS


def test_naive_ts_detail_mentions_offset() -> None:
    with pytest.raises(InvalidEvent, match="no UTC offset"):
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
        "too_large", "unknown_family"}


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
