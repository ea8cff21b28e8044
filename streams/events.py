"""Parsing and validation of input events (CONTRACT.md §1).

Every rejection carries an error code and a human-readable detail, so that the dead-letter
record says exactly what was wrong. Valid events are normalised to a flat dict whose `ts` is
epoch seconds and whose money is in the reporting currency, rounded to micro-units.

Every field is checked by type and range against the named bounds below (docs/validation.md):
whatever a producer sends, validation returns a valid event or raises InvalidEvent, never
another exception, so that no record can stop the ingest.
"""
from __future__ import annotations

import hashlib
import reprlib
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from ciso8601 import parse_rfc3339 as _parse_rfc3339

from models.revenue import MONEY_SCALE, from_units, to_units

FAMILIES = ("signup", "usage", "feature", "billing", "support")
SEGMENTS = frozenset({"enterprise", "mid_market", "smb", "solo"})
BILLING_TYPES = frozenset({
    "subscription_started", "subscription_changed", "subscription_cancelled",
    "payment_succeeded", "payment_failed", "refund",
})
SUPPORT_TYPES = frozenset({"ticket_opened", "ticket_closed", "csat", "nps"})
PRIORITIES = frozenset({"low", "normal", "high", "urgent"})
# Families whose event ids are few and kept for the customer's lifetime (METRICS.md "Time").
LIFETIME_DEDUP_FAMILIES = frozenset({"signup", "billing", "support"})

# Error codes, as they appear in vitals.deadletter and in the `error` label.
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
INVALID_FIELD = "invalid_field"
UNKNOWN_TYPE = "unknown_type"
UNKNOWN_SEGMENT = "unknown_segment"
INVALID_TS = "invalid_ts"
FUTURE_TS = "future_ts"
TOO_LATE = "too_late"
UNKNOWN_CURRENCY = "unknown_currency"
TOO_LARGE = "too_large"
UNKNOWN_FAMILY = "unknown_family"
PROCESSING_ERROR = "processing_error"  # valid input that still made a stage raise
ERROR_CODES = (NOT_JSON, NOT_OBJECT, MISSING_FIELD, INVALID_FIELD, UNKNOWN_TYPE,
               UNKNOWN_SEGMENT, INVALID_TS, FUTURE_TS, TOO_LATE, UNKNOWN_CURRENCY, TOO_LARGE,
               UNKNOWN_FAMILY, PROCESSING_ERROR)


# ---- Bounds (docs/validation.md lists them with their error codes) ----------------------------
ID_MAX_CHARS = 128          # event_id, customer_id: dedup keys and Kafka keys, kept short
TEXT_MAX_CHARS = 256        # user_id, plan, channel, action, feature, ticket_id, currency, type
# Money: the revenue stage holds amounts as integer micro-units (models.revenue.MONEY_SCALE) and
# the stores serialise them as int64, which ends at 9.2e18 micro-units = 9.2e12 currency units.
# One event may carry at most 1e9 (a billion per month is far above any real subscription), so
# sums stay representable across more than 9,000 customers each at that maximum.
MAX_AMOUNT = 1e9
# The smallest positive amount: one micro-unit. A smaller positive amount would round to 0 in
# the revenue books while other stages saw it as "paying", so it is rejected; larger amounts
# are rounded to whole micro-units here, so that every stage sees the same figure.
MONEY_RESOLUTION = 1.0 / MONEY_SCALE
MAX_QUANTITY = 1e9          # usage quantity
MAX_SEATS = 1_000_000
MAX_TICKET_NUMBER = 2 ** 63 - 1   # an integer ticket_id is accepted up to int64 and kept as text
SCORE_RANGES = {"csat": (1, 5), "nps": (0, 10)}
# Time: an epoch number above EPOCH_MS_THRESHOLD is milliseconds. 1e11 s is the year 5138,
# 1e11 ms is 1973-03-03, so within [time.min_ts, MAX_TS] the two readings never overlap for any
# min_ts after 1973-03-03.
EPOCH_MS_THRESHOLD = 1e11
DEFAULT_MIN_TS = 946684800.0      # 2000-01-01T00:00:00Z, the default of the time.min_ts setting
MAX_TS = 253402300799.0           # 9999-12-31T23:59:59Z: beyond it no date can be written
# Confluent Schema Registry wire format: magic byte 0, a 4-byte big-endian schema id, payload.
FRAME_MAGIC = 0
FRAME_HEADER_BYTES = 5
_MAGIC = bytes([FRAME_MAGIC])

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 64
_repr.maxlist = _repr.maxdict = _repr.maxtuple = 4
_repr.maxlevel = 3


def _show(value: Any) -> str:
    """A short repr for error details: a hostile value must not make a huge dead letter."""
    try:
        return _repr.repr(value)
    except ValueError:  # an int too long for str()
        return f"<{type(value).__name__}>"


class InvalidEvent(Exception):
    """Raised by the validators; `code` is the dead-letter error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def event_hash(event_id: str) -> int:
    """Stable 64-bit id hash: Python's hash() is salted per process and changes on restart."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def parse_rfc3339(text: str) -> float:
    """Strict RFC 3339 date-time with an offset -> epoch seconds (no range check).

    ciso8601.parse_rfc3339 (C, maintained) is strict where datetime.fromisoformat is lenient:
    it refuses ISO 8601 forms such as 20261202T112519Z, week dates, a bare hour, a missing
    offset, hour 24, and non-ASCII digits, and it is several times faster. Only its ordinal
    dates (2026-336) are refused here.
    """
    try:
        if text[7:8] != "-":  # ciso8601 also takes an ordinal date (2026-336), RFC 3339 not
            raise ValueError("the date must be YYYY-MM-DD")
        return _parse_rfc3339(text).timestamp()
    except (ValueError, OverflowError) as exc:
        raise InvalidEvent(INVALID_TS, f"ts is not RFC 3339 (YYYY-MM-DDThh:mm:ss[.f] with Z or "
                                       f"±hh:mm): {_show(text)}: {exc}") from None


def parse_ts(value: Any, min_ts: float = DEFAULT_MIN_TS, max_ts: float = MAX_TS) -> float:
    """RFC 3339 with an offset, or epoch seconds (milliseconds above 1e11), to epoch seconds."""
    if isinstance(value, str):
        ts = parse_rfc3339(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        # Compared before any conversion: a huge int must not reach float() (OverflowError).
        if not -EPOCH_MS_THRESHOLD <= value <= max(max_ts, EPOCH_MS_THRESHOLD) * 1000:
            raise InvalidEvent(INVALID_TS, f"ts is not a valid epoch time: {_show(value)}")
        ts = float(value)
        if ts > EPOCH_MS_THRESHOLD:
            ts /= 1000.0
    else:
        raise InvalidEvent(INVALID_TS, f"ts must be RFC 3339 or epoch seconds or "
                                       f"milliseconds, got "
                                       f"{type(value).__name__} {_show(value)}")
    if not min_ts <= ts <= max_ts:  # NaN fails here too
        raise InvalidEvent(INVALID_TS, f"ts {_show(value)} is outside "
                                       f"[{_iso(min_ts)}, {_iso(max_ts)}]")
    return ts


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unframe(raw: bytes) -> bytes:
    """The JSON payload of a value, without a Schema Registry frame if it has one.

    JSON text never starts with byte 0, so a leading 0 can only be the magic byte of the
    Confluent wire format (0, 4-byte schema id, payload); the schema id is not looked up.
    """
    if raw[:1] == _MAGIC:
        if len(raw) < FRAME_HEADER_BYTES:
            raise InvalidEvent(NOT_JSON, f"value starts with the Schema Registry magic byte but "
                                         f"is only {len(raw)} bytes, shorter than the "
                                         f"{FRAME_HEADER_BYTES}-byte frame")
        return raw[FRAME_HEADER_BYTES:]
    return raw


def _absent(name: str, family: str, required: bool) -> None:
    if required:
        raise InvalidEvent(MISSING_FIELD, f"{name} is required for {family} events")


def _text(obj: Mapping[str, Any], name: str, family: str, required: bool = True,
          max_chars: int = TEXT_MAX_CHARS) -> str | None:
    value = obj.get(name)
    if value is None:
        _absent(name, family, required)
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        if isinstance(value, str):
            raise InvalidEvent(INVALID_FIELD, f"{name} must be 1-{max_chars} characters, "
                                              f"got {len(value)}")
        raise InvalidEvent(INVALID_FIELD, f"{name} must be a string of 1-{max_chars} "
                                          f"characters, got {type(value).__name__} "
                                          f"{_show(value)}")
    return value


def _choice(obj: Mapping[str, Any], name: str, family: str, allowed: frozenset[str],
            unknown_code: str) -> str:
    """A required string from a fixed set: wrong JSON type is invalid_field, an unknown name
    is `unknown_code`."""
    value = obj.get(name)
    if value is None:
        _absent(name, family, True)
    if not isinstance(value, str):
        raise InvalidEvent(INVALID_FIELD, f"{name} must be a string, got "
                                          f"{type(value).__name__} {_show(value)}")
    if value not in allowed:
        raise InvalidEvent(unknown_code, f"{name} must be one of {sorted(allowed)}, "
                                         f"got {_show(value)}")
    return value


def _number(obj: Mapping[str, Any], name: str, family: str, required: bool,
            default: float | None = None, high: float = MAX_QUANTITY) -> float | None:
    """A finite number in [0, high]; bool is not a number."""
    value = obj.get(name)
    if value is None:
        _absent(name, family, required)
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise InvalidEvent(INVALID_FIELD, f"{name} must be a number in [0, {high:g}], "
                                          f"got {_show(value)}")
    return float(value)


def _integer(obj: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    """An optional JSON integer in [low, high] (a float such as 2.0 is not an integer)."""
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidEvent(INVALID_FIELD, f"{name} must be an integer in [{low}, {high}], "
                                          f"got {_show(value)}")
    return value


def _object(obj: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = obj.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(INVALID_FIELD, f"{name} must be an object, got "
                                          f"{type(value).__name__} {_show(value)}")
    return value


def from_segment_track(obj: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Segment `track` call -> contract shape, so pipelines built on Segment need no adapter.

    The mapped fields then go through the same checks as the contract's own fields.
    """
    context = _object(obj, "context")
    properties = _object(obj, "properties")
    group = context.get("groupId")
    out: dict[str, Any] = {
        "event_id": obj.get("messageId"),
        "customer_id": group if group is not None else properties.get("customer_id"),
        "user_id": obj.get("userId"),
        "ts": obj.get("timestamp"),
    }
    if family == "usage":
        out["action"] = obj.get("event")
        if "quantity" in properties:
            out["quantity"] = properties["quantity"]
    else:
        out["feature"] = obj.get("event")
    return out


class EventValidator:
    """Validates one family's raw values; holds the currency and time settings it needs."""

    def __init__(self, reporting_currency: str, currency_rates: Mapping[str, float],
                 max_event_bytes: int = 1 << 20, min_ts: float = DEFAULT_MIN_TS,
                 max_amount: float = MAX_AMOUNT) -> None:
        for code, rate in currency_rates.items():
            if not 0 < rate < float("inf"):
                raise ValueError(f"currency rate of {code} must be a positive finite number, "
                                 f"got {rate!r}")
        self.reporting_currency = reporting_currency
        self.currency_rates = dict(currency_rates)
        self.max_event_bytes = max_event_bytes
        self.min_ts = min_ts
        self.max_amount = max_amount

    def parse(self, family: str, raw: bytes) -> dict[str, Any]:
        """Raw bytes (plain JSON or Schema Registry framed JSON) -> normalised event."""
        if len(raw) > self.max_event_bytes:
            raise InvalidEvent(TOO_LARGE, f"event is {len(raw)} bytes, over {self.max_event_bytes}")
        try:
            obj = orjson.loads(unframe(raw))
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(NOT_JSON, f"value is not JSON: {str(exc)[:200]}") from None
        if not isinstance(obj, dict):
            raise InvalidEvent(NOT_OBJECT, f"value is JSON {type(obj).__name__}, not an object")
        return self.validate(family, obj)

    def validate(self, family: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A decoded JSON object -> normalised event, or InvalidEvent; never another error."""
        if obj.get("type") == "track" and family in ("usage", "feature"):
            obj = from_segment_track(obj, family)
        get = obj.get
        event_id, customer_id, user_id = get("event_id"), get("customer_id"), get("user_id")
        # The usual case inline (-0.12 µs an event of 2.6 for parse and validate); anything
        # else takes the checks that say what is wrong.
        if not (type(event_id) is str and 0 < len(event_id) <= ID_MAX_CHARS
                and type(customer_id) is str and 0 < len(customer_id) <= ID_MAX_CHARS
                and type(user_id) is str and 0 < len(user_id) <= TEXT_MAX_CHARS):
            event_id = _text(obj, "event_id", family, max_chars=ID_MAX_CHARS)
            customer_id = _text(obj, "customer_id", family, max_chars=ID_MAX_CHARS)
            user_id = None
        if get("ts") is None:
            raise InvalidEvent(MISSING_FIELD, f"ts is required for {family} events")
        ts = parse_ts(obj["ts"], self.min_ts)
        if user_id is None:
            user_id = _text(obj, "user_id", family, required=family in ("usage", "feature"))
        out: dict[str, Any] = {"family": family, "event_id": event_id,
                               "customer_id": customer_id, "ts": ts, "user_id": user_id}
        check = self._checks.get(family)
        if check is None:
            raise InvalidEvent(UNKNOWN_FAMILY, f"unknown event family {_show(family)}")
        check(self, obj, out)
        return out

    def _signup(self, obj: Mapping[str, Any], out: dict[str, Any]) -> None:
        out["segment"] = _choice(obj, "segment", "signup", SEGMENTS, UNKNOWN_SEGMENT)
        out["plan"] = _text(obj, "plan", "signup", required=False)
        out["seats"] = _integer(obj, "seats", 1, MAX_SEATS)
        self._currency(obj)
        out["cac"] = self._money(obj, "cac", "signup", required=False)
        out["channel"] = _text(obj, "channel", "signup", required=False)

    def _usage(self, obj: Mapping[str, Any], out: dict[str, Any]) -> None:
        out["action"] = _text(obj, "action", "usage")
        out["quantity"] = _number(obj, "quantity", "usage", required=False, default=1.0)

    def _feature(self, obj: Mapping[str, Any], out: dict[str, Any]) -> None:
        out["feature"] = _text(obj, "feature", "feature")

    def _billing(self, obj: Mapping[str, Any], out: dict[str, Any]) -> None:
        kind = out["type"] = _choice(obj, "type", "billing", BILLING_TYPES, UNKNOWN_TYPE)
        self._currency(obj)
        if kind in ("subscription_started", "subscription_changed"):
            out["mrr"] = self._money(obj, "mrr", kind, required=True)
            out["seats"] = _integer(obj, "seats", 1, MAX_SEATS)
        elif kind == "subscription_cancelled":
            out["mrr"] = 0.0
        else:
            out["amount"] = self._money(obj, "amount", kind, required=True)

    def _support(self, obj: Mapping[str, Any], out: dict[str, Any]) -> None:
        kind = out["type"] = _choice(obj, "type", "support", SUPPORT_TYPES, UNKNOWN_TYPE)
        if kind in ("ticket_opened", "ticket_closed"):
            ticket = obj.get("ticket_id")
            if ticket is None:
                raise InvalidEvent(MISSING_FIELD, f"ticket_id is required for {kind} events")
            if isinstance(ticket, int) and not isinstance(ticket, bool):
                if not 0 <= ticket <= MAX_TICKET_NUMBER:
                    raise InvalidEvent(INVALID_FIELD, f"an integer ticket_id must be in "
                                                      f"[0, 2^63-1], got {_show(ticket)}")
                out["ticket_id"] = str(ticket)
            else:
                out["ticket_id"] = _text(obj, "ticket_id", kind)
            priority = obj.get("priority")
            if priority is None:
                priority = "normal"
            elif not isinstance(priority, str) or priority not in PRIORITIES:
                raise InvalidEvent(INVALID_FIELD,
                                   f"priority must be one of {sorted(PRIORITIES)}, "
                                   f"got {_show(priority)}")
            out["priority"] = priority
        else:
            low, high = SCORE_RANGES[kind]
            score = obj.get("score")
            if score is None:
                raise InvalidEvent(MISSING_FIELD, f"score is required for {kind} events")
            if isinstance(score, bool) or not isinstance(score, int) or not low <= score <= high:
                raise InvalidEvent(INVALID_FIELD, f"{kind} score must be an integer "
                                                  f"{low}-{high}, got {_show(score)}")
            out["score"] = float(score)

    def _currency(self, obj: Mapping[str, Any]) -> str | None:
        """The event's currency: type-checked whenever present, looked up only for money."""
        currency = obj.get("currency")
        if currency is not None and (not isinstance(currency, str)
                                     or not 1 <= len(currency) <= TEXT_MAX_CHARS):
            raise InvalidEvent(INVALID_FIELD, f"currency must be an ISO 4217 code, "
                                              f"got {_show(currency)}")
        return currency

    def _money(self, obj: Mapping[str, Any], name: str, family: str,
               required: bool) -> float | None:
        """An amount in the reporting currency, rounded to micro-units, in [0, max_amount]."""
        value = obj.get(name)
        if value is None:
            _absent(name, family, required)
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value <= sys.float_info.max:
            raise InvalidEvent(INVALID_FIELD, f"{name} must be a finite number >= 0, "
                                              f"got {_show(value)}")
        amount = float(value)
        currency = self._currency(obj)
        if currency is not None and currency != self.reporting_currency:
            rate = self.currency_rates.get(currency)
            if rate is None:
                raise InvalidEvent(UNKNOWN_CURRENCY,
                                   f"no rate configured for currency {_show(currency)} "
                                   f"(reporting currency {self.reporting_currency})")
            amount *= rate
        if not 0 <= amount <= self.max_amount:  # also inf after conversion
            raise InvalidEvent(INVALID_FIELD, f"{name} is {amount:.6g} "
                                              f"{self.reporting_currency}, over the limit of "
                                              f"{self.max_amount:g} per event")
        if 0 < amount < MONEY_RESOLUTION:
            raise InvalidEvent(INVALID_FIELD, f"{name} is {amount:.3g} "
                                              f"{self.reporting_currency}, positive but below "
                                              f"the money resolution of {MONEY_RESOLUTION:g}")
        return from_units(to_units(amount))

    _checks = {"signup": _signup, "usage": _usage, "feature": _feature, "billing": _billing,
               "support": _support}


def route_by_shape(obj: Mapping[str, Any]) -> str | None:
    """Family of a replayed JSONL object without a `family` field, from its distinctive fields."""
    kind = obj.get("type")
    if not isinstance(kind, str):
        kind = None
    if kind in BILLING_TYPES:
        return "billing"
    if kind in SUPPORT_TYPES:
        return "support"
    if "segment" in obj:
        return "signup"
    if "action" in obj or kind == "track":
        return "usage"
    if "feature" in obj:
        return "feature"
    return None
