"""Tests of the synthetic event generator (no broker).

The contract checker below is written from CONTRACT.md section 1 independently of the simulator,
so the simulator cannot pass by agreeing with itself.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from itertools import islice, pairwise
from typing import Any

import orjson
import pytest

from streams.simulator import (
    BAD_KINDS,
    FAMILIES,
    SimConfig,
    from_jsonl_line,
    generate,
    to_jsonl_line,
)

DAY = 86_400.0

# ---------------------------------------------------------------------------------------------
# an independent checker of CONTRACT.md section 1

SEGMENTS = {"enterprise", "mid_market", "smb", "solo"}
BILLING_TYPES = {
    "subscription_started", "subscription_changed", "subscription_cancelled",
    "payment_succeeded", "payment_failed", "refund",
}
SUPPORT_TYPES = {"ticket_opened", "ticket_closed", "csat", "nps"}
PRIORITIES = {"low", "normal", "high", "urgent"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_ts(value: Any) -> float | None:
    """Epoch seconds of a contract ts (RFC 3339 with offset, or epoch seconds), else None."""
    if is_number(value):
        return float(value)
    if not isinstance(value, str) or not RFC3339.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def normalise(family: str, obj: dict) -> dict:
    """Map a Segment `track` event onto the plain field names; other events unchanged."""
    if obj.get("type") != "track" or family not in ("usage", "feature"):
        return obj
    mapped: dict = {}
    context = obj.get("context") if isinstance(obj.get("context"), dict) else {}
    for source, target in (
        ("messageId", "event_id"), ("userId", "user_id"), ("timestamp", "ts"),
        ("event", "action" if family == "usage" else "feature"),
    ):
        if source in obj:
            mapped[target] = obj[source]
    if "groupId" in context:
        mapped["customer_id"] = context["groupId"]
    return mapped


def contract_error(family: str, value: dict | bytes) -> str | None:
    """The class of contract violation of one message value, or None when it is valid."""
    if isinstance(value, bytes):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return "not_json"
    if not isinstance(value, dict):
        return "not_object"
    obj = normalise(family, value)
    for key in ("event_id", "customer_id", "ts"):
        if key not in obj:
            return "missing_field"
    for key in ("event_id", "customer_id"):
        if not isinstance(obj[key], str):
            return "ill_typed"
        if not 1 <= len(obj[key]) <= 128:
            return "out_of_range"
    if not (isinstance(obj["ts"], str) or is_number(obj["ts"])):
        return "ill_typed"
    if parse_ts(obj["ts"]) is None:
        return "bad_ts"
    if family in ("usage", "feature") and "user_id" not in obj:
        return "missing_user_id"
    if "user_id" in obj and not isinstance(obj["user_id"], str):
        return "ill_typed"
    return FAMILY_CHECKS[family](obj)


def _number_field(obj: dict, key: str, required: bool, low: float = 0.0) -> str | None:
    if key not in obj:
        return "missing_field" if required else None
    if not is_number(obj[key]):
        return "ill_typed"
    return "out_of_range" if obj[key] < low else None


def _int_field(obj: dict, key: str, required: bool, low: int, high: int) -> str | None:
    if key not in obj:
        return "missing_field" if required else None
    if not isinstance(obj[key], int) or isinstance(obj[key], bool):
        return "ill_typed"
    return None if low <= obj[key] <= high else "out_of_range"


def _string_field(obj: dict, key: str, required: bool) -> str | None:
    if key not in obj:
        return "missing_field" if required else None
    return None if isinstance(obj[key], str) and obj[key] else "ill_typed"


def check_signup(obj: dict) -> str | None:
    if "segment" not in obj:
        return "missing_field"
    if not isinstance(obj["segment"], str):
        return "ill_typed"
    if obj["segment"] not in SEGMENTS:
        return "unknown_segment"
    return (
        _string_field(obj, "plan", False) or _int_field(obj, "seats", False, 1, 10**9)
        or _number_field(obj, "cac", False) or _string_field(obj, "channel", False)
    )


def check_usage(obj: dict) -> str | None:
    return _string_field(obj, "action", True) or _number_field(obj, "quantity", False)


def check_feature(obj: dict) -> str | None:
    return _string_field(obj, "feature", True)


def check_billing(obj: dict) -> str | None:
    if "type" not in obj:
        return "missing_field"
    if obj["type"] not in BILLING_TYPES:
        return "unknown_type"
    error = _string_field(obj, "currency", False)
    if obj["type"] in ("subscription_started", "subscription_changed"):
        error = error or _number_field(obj, "mrr", True) or _int_field(obj, "seats", False, 1, 10**9)
    elif obj["type"] != "subscription_cancelled":
        error = error or _number_field(obj, "amount", True)
    return error


def check_support(obj: dict) -> str | None:
    if "type" not in obj:
        return "missing_field"
    if obj["type"] not in SUPPORT_TYPES:
        return "unknown_type"
    if obj["type"] in ("ticket_opened", "ticket_closed"):
        error = _string_field(obj, "ticket_id", True)
        if error is None and "priority" in obj and obj["priority"] not in PRIORITIES:
            error = "out_of_range"
        return error
    if obj["type"] == "csat":
        return _int_field(obj, "score", True, 1, 5)
    return _int_field(obj, "score", True, 0, 10)


FAMILY_CHECKS = {
    "signup": check_signup, "usage": check_usage, "feature": check_feature,
    "billing": check_billing, "support": check_support,
}


# ---------------------------------------------------------------------------------------------
# helpers and shared runs


def event_time(family: str, event: dict) -> float:
    ts = parse_ts(normalise(family, event)["ts"])
    assert ts is not None
    return ts


def digest(events: Iterable[tuple[str, dict | bytes]]) -> str:
    sha = hashlib.sha256()
    for family, event in events:
        sha.update(to_jsonl_line(family, event))
    return sha.hexdigest()


def day_index(cfg: SimConfig, ts: float) -> int:
    return int((ts - cfg.start.timestamp()) // DAY)


MAIN_CFG = SimConfig(seed=11, customers=200, days=120, unadopted_features=("exports",))


@pytest.fixture(scope="module")
def main_events() -> list[tuple[str, dict]]:
    events = list(generate(MAIN_CFG))
    assert all(isinstance(event, dict) for _, event in events)   # no extras asked for
    return events


@pytest.fixture(scope="module")
def rows(main_events: list[tuple[str, dict]]) -> list[tuple[str, dict, float]]:
    """(family, normalised event, epoch seconds) for the main run."""
    return [(family, normalise(family, event), event_time(family, event))
            for family, event in main_events]


@pytest.fixture(scope="module")
def customers(rows: list[tuple[str, dict, float]]) -> dict[str, list[tuple[str, dict, float]]]:
    by_customer: dict[str, list[tuple[str, dict, float]]] = defaultdict(list)
    for row in rows:
        by_customer[row[1]["customer_id"]].append(row)
    return by_customer


# ---------------------------------------------------------------------------------------------
# reproducibility and order


def test_same_seed_gives_byte_identical_output() -> None:
    cfg = SimConfig(seed=3, customers=40, days=45, bad_fraction=0.03, duplicate_fraction=0.03)
    assert digest(generate(cfg)) == digest(generate(cfg))


def test_different_seed_gives_different_output() -> None:
    first = digest(generate(SimConfig(seed=3, customers=40, days=45)))
    second = digest(generate(SimConfig(seed=4, customers=40, days=45)))
    assert first != second


def test_extras_leave_the_valid_history_unchanged() -> None:
    base = SimConfig(seed=5, customers=30, days=40)
    noisy = SimConfig(seed=5, customers=30, days=40, bad_fraction=0.1, duplicate_fraction=0.1)
    plain = [event for _, event in generate(base)]
    seen: set[str] = set()
    cleaned = []
    for family, event in generate(noisy):
        if isinstance(event, bytes):
            continue
        event_id = normalise(family, event)["event_id"]
        if event_id not in seen:
            seen.add(event_id)
            cleaned.append(event)
    assert cleaned == plain


def test_events_are_sorted_by_event_time(rows: list[tuple[str, dict, float]]) -> None:
    times = [ts for _, _, ts in rows]
    assert all(a <= b for a, b in pairwise(times))
    start = MAIN_CFG.start.timestamp()
    assert start <= times[0] and times[-1] < start + MAIN_CFG.days * DAY


# ---------------------------------------------------------------------------------------------
# contract shape


def test_every_event_is_valid_per_contract(main_events: list[tuple[str, dict]]) -> None:
    errors = Counter(
        (family, contract_error(family, event)) for family, event in main_events
    )
    assert {key: n for key, n in errors.items() if key[1] is not None} == {}
    assert {family for family, _ in errors} == set(FAMILIES)


def test_ids_and_shapes(customers: dict[str, list[tuple[str, dict, float]]],
                        main_events: list[tuple[str, dict]]) -> None:
    event_ids = [normalise(f, e)["event_id"] for f, e in main_events]
    assert len(event_ids) == len(set(event_ids))
    assert len(customers) == MAIN_CFG.customers
    for customer_id, events in customers.items():
        assert re.fullmatch(r"c-\d{4}", customer_id)
        family, first, _ = events[0]
        assert family == "signup", f"{customer_id} starts with {family}"
        assert sum(1 for f, _, _ in events if f == "signup") == 1
        for _, event, _ in events:
            if "user_id" in event:
                assert event["user_id"].startswith(customer_id + "-u")


def test_both_ts_forms_and_track_events_appear(main_events: list[tuple[str, dict]]) -> None:
    epoch = sum(1 for _, e in main_events if is_number(e.get("ts")))
    track = [(f, e) for f, e in main_events if e.get("type") == "track"]
    assert 0.005 < epoch / len(main_events) < 0.05
    assert 0.005 < len(track) / len(main_events) < 0.05
    assert {f for f, _ in track} == {"usage", "feature"}
    assert all(isinstance(e["timestamp"], str) and e["properties"] == {} for _, e in track)


# ---------------------------------------------------------------------------------------------
# segments


def test_segment_mix_roughly_as_configured() -> None:
    cfg = SimConfig(seed=1, customers=2000, days=1)
    segments = Counter(
        event["segment"] for family, event in generate(cfg) if family == "signup"
    )
    assert sum(segments.values()) == 2000
    for segment, share in cfg.segment_mix.items():
        assert abs(segments[segment] / 2000 - share) < 0.03, segments
    only_smb = SimConfig(seed=1, customers=50, days=1, segment_mix={"smb": 1.0})
    assert {e["segment"] for f, e in generate(only_smb) if f == "signup"} == {"smb"}


def test_segments_differ_in_size_and_price(
    customers: dict[str, list[tuple[str, dict, float]]],
) -> None:
    mrr_ranges = {"enterprise": (2000, 8000), "mid_market": (500, 1500),
                  "smb": (50, 300), "solo": (10, 30)}
    users_by_segment: dict[str, list[int]] = defaultdict(list)
    for events in customers.values():
        signup = events[0][1]
        segment = signup["segment"]
        assert signup["seats"] >= 1 and signup["cac"] >= 0
        started = [e for f, e, _ in events if f == "billing" and e["type"] == "subscription_started"]
        if started:
            low, high = mrr_ranges[segment]
            assert low <= started[0]["mrr"] <= high
            assert signup["cac"] >= started[0]["mrr"]        # CAC is a few months of MRR
        users_by_segment[segment].append(len({e["user_id"] for f, e, _ in events
                                              if f in ("usage", "feature")}))
    assert max(users_by_segment["solo"]) == 1
    assert statistics.median(users_by_segment["enterprise"]) > 15
    assert statistics.median(users_by_segment["mid_market"]) > 5
    assert statistics.median(users_by_segment["smb"]) <= 8


# ---------------------------------------------------------------------------------------------
# onboarding, billing, support


def test_onboarding_milestones_and_ttv_by_segment(
    customers: dict[str, list[tuple[str, dict, float]]],
) -> None:
    value_actions = {"report_created", "message_sent", "integration_connected"}
    ttv: dict[str, list[float]] = defaultdict(list)
    confirmed = never = 0
    for events in customers.values():
        signup_ts = events[0][2]
        actions = [(e["action"], ts) for f, e, ts in events if f == "usage"]
        confirmed += any(a == "email_confirmed" for a, _ in actions)
        # METRICS.md: aha is the first value action, and any feature event is one.
        aha = next((ts for f, e, ts in events
                    if f == "feature" or (f == "usage" and e["action"] in value_actions)), None)
        if aha is None:
            never += 1
            continue
        ttv[events[0][1]["segment"]].append((aha - signup_ts) / DAY)
    assert confirmed > 0.85 * len(customers)
    assert 0 < never < 0.35 * len(customers)
    assert statistics.median(ttv["solo"]) < statistics.median(ttv["enterprise"])
    assert statistics.median(ttv["smb"]) < 7 < statistics.median(ttv["enterprise"])


def test_billing_story(customers: dict[str, list[tuple[str, dict, float]]]) -> None:
    types: Counter[str] = Counter()
    payers = trial_only = troubled = ups = downs = 0
    for events in customers.values():
        billing = [(e, ts) for f, e, ts in events if f == "billing"]
        types.update(e["type"] for e, _ in billing)
        if not billing:
            trial_only += 1
            continue
        assert billing[0][0]["type"] == "subscription_started"
        assert billing[0][1] - events[0][2] < 41 * DAY
        payers += 1
        mrr = 0.0
        retried: float | None = None
        streak = longest = 0
        for event, _ in billing:
            kind = event["type"]
            if kind == "subscription_changed":
                ups += event["mrr"] > mrr
                downs += event["mrr"] < mrr
            if kind in ("subscription_started", "subscription_changed"):
                mrr = event["mrr"]
            elif kind == "subscription_cancelled":
                mrr = 0.0
            elif kind in ("payment_succeeded", "payment_failed"):
                # The current price, or a retry of the invoice that failed before a change.
                assert event["amount"] in (mrr, retried) and event["amount"] > 0
                retried = event["amount"] if kind == "payment_failed" else None
            streak = streak + 1 if kind == "payment_failed" else 0
            longest = max(longest, streak)
        troubled += longest >= 2
    assert 0.5 * len(customers) < payers < 0.95 * len(customers) and trial_only > 0
    assert types["payment_succeeded"] > 2 * payers           # monthly anniversaries
    assert types["payment_failed"] > 0 and troubled > 0
    assert ups > 0 and downs > 0 and types["refund"] > 0


def test_monthly_payments_fall_on_the_anniversary(
    customers: dict[str, list[tuple[str, dict, float]]],
) -> None:
    checked = 0
    for events in customers.values():
        billing = [(e, ts) for f, e, ts in events if f == "billing"]
        if not billing or any(e["type"] in ("payment_failed", "subscription_cancelled")
                              for e, _ in billing):
            continue
        anchor = datetime.fromtimestamp(billing[0][1], UTC)
        paid = [datetime.fromtimestamp(ts, UTC).date()
                for e, ts in billing if e["type"] == "payment_succeeded"]
        assert paid[0] == anchor.date()
        for previous, current in pairwise(paid):
            assert 28 <= (current - previous).days <= 31
            month_end = calendar.monthrange(current.year, current.month)[1]
            assert current.day == min(anchor.day, month_end)
        checked += 1
    assert checked > 50


def test_support_tickets_priorities_and_spikes(
    customers: dict[str, list[tuple[str, dict, float]]],
) -> None:
    spikes = csat = nps = 0
    for events in customers.values():
        opened: dict[str, float] = {}
        per_day: Counter[int] = Counter()
        for family, event, ts in events:
            if family != "support":
                continue
            kind = event["type"]
            if kind == "ticket_opened":
                assert event["priority"] in PRIORITIES
                opened[event["ticket_id"]] = ts
                per_day[day_index(MAIN_CFG, ts)] += 1
            elif kind == "ticket_closed":
                assert opened[event["ticket_id"]] <= ts
            elif kind == "csat":
                assert event["ticket_id"] in opened
                csat += 1
            else:
                nps += 1
        spikes += bool(per_day) and max(per_day.values()) >= 6
    assert spikes > 0 and csat > 0 and nps > 0


# ---------------------------------------------------------------------------------------------
# rhythm, churn and features


def test_weekends_are_quieter(rows: list[tuple[str, dict, float]]) -> None:
    per_day: Counter[int] = Counter()
    for family, _, ts in rows:
        if family == "usage":
            per_day[day_index(MAIN_CFG, ts)] += 1
    weekday, weekend = [], []
    for day in range(28, MAIN_CFG.days):       # once the customer base has built up
        date = MAIN_CFG.start + timedelta(days=day)
        (weekend if date.weekday() >= 5 else weekday).append(per_day[day])
    assert statistics.mean(weekend) < 0.5 * statistics.mean(weekday)


def test_churners_fade_before_cancelling(
    customers: dict[str, list[tuple[str, dict, float]]],
) -> None:
    payers = churners = 0
    before, last = [], []
    nps_churners, nps_others = [], []
    for events in customers.values():
        billing = [(e["type"], ts) for f, e, ts in events if f == "billing"]
        if not billing:
            continue
        payers += 1
        cancel = next((ts for kind, ts in billing if kind == "subscription_cancelled"), None)
        scores = [e["score"] for f, e, _ in events if f == "support" and e["type"] == "nps"]
        if cancel is None:
            nps_others += scores
            continue
        churners += 1
        nps_churners += scores
        usage = [ts for f, _, ts in events if f in ("usage", "feature") and ts < cancel]
        if cancel - events[0][2] >= 56 * DAY:
            before.append(sum(1 for ts in usage if cancel - 56 * DAY <= ts < cancel - 42 * DAY))
            last.append(sum(1 for ts in usage if cancel - 14 * DAY <= ts))
    assert abs(churners / payers - MAIN_CFG.churn_fraction) < 0.03
    assert len(before) >= 5
    assert sum(last) < 0.6 * sum(before)
    assert statistics.mean(nps_churners) < statistics.mean(nps_others)


def test_some_churners_come_back() -> None:
    cfg = SimConfig(seed=2, customers=150, days=120, churn_fraction=0.3, reactivation_fraction=0.5)
    starts: Counter[str] = Counter()
    cancelled: set[str] = set()
    for family, event in generate(cfg):
        if family == "billing" and "type" in event:
            if event["type"] == "subscription_started":
                starts[event["customer_id"]] += 1
                if event["customer_id"] in cancelled:
                    assert event["mrr"] > 0
            elif event["type"] == "subscription_cancelled":
                cancelled.add(event["customer_id"])
    reactivated = [c for c, n in starts.items() if n == 2]
    assert reactivated and set(reactivated) <= cancelled


def test_features_respect_release_days(rows: list[tuple[str, dict, float]]) -> None:
    first_seen: dict[str, int] = {}
    for family, event, ts in rows:
        if family == "feature":
            first_seen.setdefault(event["feature"], day_index(MAIN_CFG, ts))
    for feature, day in first_seen.items():
        assert day >= MAIN_CFG.feature_release_day.get(feature, 0), feature
    assert {"reports", "dashboards", "alerts_center", "sso"} <= set(first_seen)


def test_unadopted_features_get_almost_no_use(rows: list[tuple[str, dict, float]]) -> None:
    feature_events = Counter(e["feature"] for f, e, _ in rows if f == "feature")
    users = {(e["customer_id"], e["user_id"]) for f, e, _ in rows if f in ("usage", "feature")}
    exports_users = {(e["customer_id"], e["user_id"]) for f, e, _ in rows
                     if f == "feature" and e["feature"] == "exports"}
    assert feature_events["exports"] < 0.005 * sum(feature_events.values())
    assert len(exports_users) < 0.02 * len(users)


# ---------------------------------------------------------------------------------------------
# bad input and duplicates


def test_bad_fraction_produces_every_class_of_bad_input() -> None:
    cfg = SimConfig(seed=9, customers=40, days=60, bad_fraction=0.08)
    valid = 0
    classes: Counter[str] = Counter()
    watermark = 0.0
    for family, event in generate(cfg):
        assert family in FAMILIES
        if isinstance(event, dict):
            assert contract_error(family, event) is None
            watermark = max(watermark, event_time(family, event))
            valid += 1
            continue
        error = contract_error(family, event)
        if error is None:
            ts = event_time(family, orjson.loads(event))
            error = "future_ts" if ts > watermark + DAY else None
        assert error is not None, event
        classes[error] += 1
    assert abs(sum(classes.values()) / valid - cfg.bad_fraction) < 0.015
    assert set(classes) == {
        "not_json", "not_object", "missing_field", "missing_user_id", "unknown_type",
        "unknown_segment", "bad_ts", "ill_typed", "out_of_range", "future_ts",
    }
    assert len(BAD_KINDS) >= len(classes)


def test_duplicate_fraction_resends_identical_events() -> None:
    cfg = SimConfig(seed=9, customers=40, days=60, duplicate_fraction=0.05)
    first: dict[str, dict] = {}
    duplicates = 0
    for family, event in generate(cfg):
        assert isinstance(event, dict)
        event_id = normalise(family, event)["event_id"]
        if event_id in first:
            assert event == first[event_id]
            duplicates += 1
        else:
            first[event_id] = event
    assert abs(duplicates / len(first) - cfg.duplicate_fraction) < 0.01


# ---------------------------------------------------------------------------------------------
# JSONL, laziness, scale, config


def test_jsonl_round_trip() -> None:
    cfg = SimConfig(seed=4, customers=10, days=20, bad_fraction=0.1)
    for family, event in generate(cfg):
        line = to_jsonl_line(family, event)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        record = orjson.loads(line)
        assert next(iter(record)) == "family" and record["family"] == family
        if isinstance(event, bytes):
            assert record == {"family": family, "raw": event.decode()}
        assert from_jsonl_line(line) == (family, event)
    binary = b"\xff\xfe\x00garbage"
    line = to_jsonl_line("usage", binary)
    assert "raw_base64" in orjson.loads(line)
    assert from_jsonl_line(line) == ("usage", binary)
    with pytest.raises(ValueError):
        to_jsonl_line("orders", {})


def test_generation_is_lazy() -> None:
    big = SimConfig(seed=1, customers=2000, days=365)
    first = list(islice(generate(big), 2000))
    assert len(first) == 2000 and first[0][0] == "signup"


def test_a_year_of_300_customers_runs() -> None:
    cfg = SimConfig(seed=21, customers=300, days=365)
    families: Counter[str] = Counter()
    last_ts = ""
    for family, event in generate(cfg):
        families[family] += 1
        if family == "billing" and isinstance(event.get("ts"), str):
            last_ts = event["ts"]
    assert set(families) == set(FAMILIES)
    assert families["usage"] > 100 * families["signup"]
    assert last_ts >= "2026-12"


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SimConfig(start=datetime(2026, 1, 1))             # naive
    with pytest.raises(ValueError):
        SimConfig(churn_fraction=1.5)
    with pytest.raises(ValueError):
        SimConfig(segment_mix={"government": 1.0})
    with pytest.raises(ValueError):
        SimConfig(unadopted_features=("teleport",))
    shifted = SimConfig(start=datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
    assert shifted.start == datetime(2026, 1, 1, tzinfo=UTC)
