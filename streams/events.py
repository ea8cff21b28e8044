"""Parsing and validation of input events (CONTRACT.md §1).

Every rejection carries an error code and a human-readable detail, so that the dead-letter
record says exactly what was wrong. Valid events are normalised to a flat dict whose `ts` is
epoch seconds and whose money is in the reporting currency.
"""
from __future__ import annotations

import hashlib
import math
from datetime import datetime
from typing import Any, Mapping

import orjson

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
ERROR_CODES = (NOT_JSON, NOT_OBJECT, MISSING_FIELD, INVALID_FIELD, UNKNOWN_TYPE,
               UNKNOWN_SEGMENT, INVALID_TS, FUTURE_TS, TOO_LATE, UNKNOWN_CURRENCY, TOO_LARGE,
               UNKNOWN_FAMILY)


MAX_TS = 253402300799.0  # 9999-12-31T23:59:59Z: beyond it no date can be written


class InvalidEvent(Exception):
    """Raised by the validators; `code` is the dead-letter error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def event_hash(event_id: str) -> int:
    """Stable 64-bit id hash: Python's hash() is salted per process and would not survive restarts."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


def parse_ts(value: Any) -> float:
    """RFC 3339 with an offset, or epoch seconds, to epoch seconds."""
    if isinstance(value, bool):
        raise InvalidEvent(INVALID_TS, f"ts must be RFC 3339 or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        ts = float(value)
        if not math.isfinite(ts) or not 0 <= ts <= MAX_TS:
            raise InvalidEvent(INVALID_TS, f"ts is not a valid epoch time in seconds: {value!r}")
        return ts
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(INVALID_TS, f"ts is not RFC 3339: {value[:64]!r}") from None
        if parsed.tzinfo is None:
            raise InvalidEvent(INVALID_TS, f"ts has no UTC offset: {value[:64]!r}")
        ts = parsed.timestamp()
        if not 0 <= ts <= MAX_TS:
            raise InvalidEvent(INVALID_TS, f"ts is out of range: {value[:64]!r}")
        return ts
    raise InvalidEvent(INVALID_TS, f"ts must be RFC 3339 or epoch seconds, got {type(value).__name__}")


def _text(obj: Mapping[str, Any], name: str, family: str, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidEvent(MISSING_FIELD, f"{name} is required for {family} events")
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise InvalidEvent(INVALID_FIELD, f"{name} must be a string of 1-128 characters")
    return value


def _number(obj: Mapping[str, Any], name: str, family: str, required: bool,
            default: float | None = None) -> float | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidEvent(MISSING_FIELD, f"{name} is required for {family} events")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidEvent(INVALID_FIELD, f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _seats(obj: Mapping[str, Any]) -> int | None:
    value = obj.get("seats")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidEvent(INVALID_FIELD, f"seats must be an integer >= 1, got {value!r}")
    return value


def from_segment_track(obj: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Segment `track` call -> contract shape, so pipelines built on Segment need no adapter."""
    context = obj.get("context") if isinstance(obj.get("context"), dict) else {}
    properties = obj.get("properties") if isinstance(obj.get("properties"), dict) else {}
    out: dict[str, Any] = {
        "event_id": obj.get("messageId"),
        "customer_id": context.get("groupId") or properties.get("customer_id"),
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
    """Validates one family's raw values; holds the currency settings it needs."""

    def __init__(self, reporting_currency: str, currency_rates: Mapping[str, float],
                 max_event_bytes: int = 1 << 20) -> None:
        self.reporting_currency = reporting_currency
        self.currency_rates = dict(currency_rates)
        self.max_event_bytes = max_event_bytes

    def parse(self, family: str, raw: bytes) -> dict[str, Any]:
        """Raw bytes -> normalised event, or InvalidEvent."""
        if len(raw) > self.max_event_bytes:
            raise InvalidEvent(TOO_LARGE, f"event is {len(raw)} bytes, over {self.max_event_bytes}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(NOT_JSON, f"value is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise InvalidEvent(NOT_OBJECT, f"value is JSON {type(obj).__name__}, not an object")
        return self.validate(family, obj)

    def validate(self, family: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj.get("type") == "track" and family in ("usage", "feature"):
            obj = from_segment_track(obj, family)
        event_id = _text(obj, "event_id", family)
        customer_id = _text(obj, "customer_id", family)
        if "ts" not in obj or obj["ts"] is None:
            raise InvalidEvent(MISSING_FIELD, f"ts is required for {family} events")
        ts = parse_ts(obj["ts"])
        needs_user = family in ("usage", "feature")
        user_id = _text(obj, "user_id", family, required=needs_user)
        out: dict[str, Any] = {"family": family, "event_id": event_id,
                               "customer_id": customer_id, "ts": ts, "user_id": user_id}
        check = getattr(self, f"_{family}", None)
        if check is None:
            raise InvalidEvent(UNKNOWN_FAMILY, f"unknown event family {family!r}")
        check(obj, out)
        return out

    def _signup(self, obj: Mapping[str, Any], out: dict[str, Any]) -> None:
        segment = obj.get("segment")
        if segment is None:
            raise InvalidEvent(MISSING_FIELD, "segment is required for signup events")
        if segment not in SEGMENTS:
            raise InvalidEvent(UNKNOWN_SEGMENT,
                               f"segment must be one of {sorted(SEGMENTS)}, got {segment!r}")
        out["segment"] = segment
        out["plan"] = _text(obj, "plan", "signup", required=False)
        out["seats"] = _seats(obj)
        cac = _number(obj, "cac", "signup", required=False)
        out["cac"] = None if cac is None else self._convert(cac, obj)
        out["channel"] = _text(obj, "channel", "signup", required=False)

    def _usage(self, obj: Mapping[str, Any], out: dict[str, Any]) -> None:
        out["action"] = _text(obj, "action", "usage")
        out["quantity"] = _number(obj, "quantity", "usage", required=False, default=1.0)

    def _feature(self, obj: Mapping[str, Any], out: dict[str, Any]) -> None:
        out["feature"] = _text(obj, "feature", "feature")

    def _billing(self, obj: Mapping[str, Any], out: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind is None:
            raise InvalidEvent(MISSING_FIELD, "type is required for billing events")
        if kind not in BILLING_TYPES:
            raise InvalidEvent(UNKNOWN_TYPE, f"unknown billing type {kind!r}")
        out["type"] = kind
        if kind in ("subscription_started", "subscription_changed"):
            out["mrr"] = self._convert(_number(obj, "mrr", f"{kind}", required=True), obj)
            out["seats"] = _seats(obj)
        elif kind == "subscription_cancelled":
            out["mrr"] = 0.0
        else:
            out["amount"] = self._convert(_number(obj, "amount", f"{kind}", required=True), obj)

    def _support(self, obj: Mapping[str, Any], out: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind is None:
            raise InvalidEvent(MISSING_FIELD, "type is required for support events")
        if kind not in SUPPORT_TYPES:
            raise InvalidEvent(UNKNOWN_TYPE, f"unknown support type {kind!r}")
        out["type"] = kind
        if kind in ("ticket_opened", "ticket_closed"):
            ticket = obj.get("ticket_id")
            if ticket is None:
                raise InvalidEvent(MISSING_FIELD, f"ticket_id is required for {kind} events")
            if isinstance(ticket, bool) or not isinstance(ticket, (str, int)) or ticket == "":
                raise InvalidEvent(INVALID_FIELD, "ticket_id must be a non-empty string")
            out["ticket_id"] = str(ticket)
            priority = obj.get("priority") or "normal"
            if priority not in PRIORITIES:
                raise InvalidEvent(INVALID_FIELD,
                                   f"priority must be one of {sorted(PRIORITIES)}, got {priority!r}")
            out["priority"] = priority
        else:
            low, high = (1, 5) if kind == "csat" else (0, 10)
            score = obj.get("score")
            if score is None:
                raise InvalidEvent(MISSING_FIELD, f"score is required for {kind} events")
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not low <= score <= high:
                raise InvalidEvent(INVALID_FIELD, f"{kind} score must be {low}-{high}, got {score!r}")
            out["score"] = float(score)

    def _convert(self, amount: float | None, obj: Mapping[str, Any]) -> float | None:
        currency = obj.get("currency")
        if amount is None or currency is None or currency == self.reporting_currency:
            return amount
        if not isinstance(currency, str):
            raise InvalidEvent(INVALID_FIELD, f"currency must be an ISO 4217 code, got {currency!r}")
        rate = self.currency_rates.get(currency)
        if rate is None:
            raise InvalidEvent(UNKNOWN_CURRENCY,
                               f"no rate configured for currency {currency!r} "
                               f"(reporting currency {self.reporting_currency})")
        return amount * rate


def route_by_shape(obj: Mapping[str, Any]) -> str | None:
    """Family of a replayed JSONL object without a `family` field, from its distinctive fields."""
    kind = obj.get("type")
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
