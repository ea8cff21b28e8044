"""A plain batch computation of the revenue part of `vitals.business` (METRICS.md "Revenue").

Written independently of `streams/` and `models/` (stdlib only) so that the streaming results
can be checked against it: the whole history is known up front, every customer's MRR timeline
is built from its subscription events sorted by event time, and each scope and calendar month
is evaluated by looking the timelines up at the month's boundaries.

Input: (family, event) pairs as the simulator yields them (CONTRACT.md §1 shapes). Output:
{(scope, "YYYY-MM"): record} with the revenue fields of a `vitals.business` record:

    mrr_start, mrr_end, new, reactivation, expansion, contraction, churn,
    customers_start, customers_end, customers_churned,
    nrr, grr, expansion_rate, logo_retention, arpa,
    nrr_expansion, nrr_contraction, nrr_churn   (the starting-cohort parts of nrr/grr)

Rules (METRICS.md "Revenue" and "Time", CONTRACT.md §1):

- Only valid events count: a dict with `event_id` and `customer_id` (strings of 1-128
  characters), a parseable `ts` (RFC 3339 with an offset, or epoch seconds) and the family's
  required fields. Anything else is skipped. A Segment `track` event is a usage or feature
  event (it only matters here for the time of the last event), never billing. Checks that
  depend on the service's watermark (`future_ts` skew, `too_late`) are not modelled: the
  simulator's valid events never trip them.
- A repeated `event_id` for the same customer (any family) is a duplicate: the first wins.
- A customer's segment is the one of its signup event (the newest signup if several). Scope
  `all` has every customer; `segment:<s>` the customers whose signup says `s`. A customer with
  subscription events but no signup is in `all` only.
- A customer's MRR is the `mrr` of its latest subscription event (subscription_started /
  subscription_changed), 0 after subscription_cancelled; events of one customer are applied
  in event-time order (equal times: input order). Every change old -> new is one movement,
  classified by the METRICS.md table (new / reactivation / expansion / contraction / churn).
  (The service applies subscription events in arrival order and ignores one older than the
  customer's latest applied one; for input in event-time order per customer, as the simulator
  produces it, the two are the same.)
- Months of a scope: every calendar month (UTC) from the month of the scope's first movement to
  the month of the last valid event of the input, empty months included.
- mrr_start = Σ MRR at the month's first instant; mrr_end = Σ MRR at the month's end (for the
  last month: after the last event). new ... churn sum every movement of every member in the
  month, so mrr_end = mrr_start + new + reactivation + expansion - contraction - churn.
- Starting cohort (members with MRR > 0 at the month's start), judged net per customer by its
  MRR at the month's start vs at the month's end: 0 at the end is a churned logo losing its
  whole start; below its start a contraction by the difference; above, an expansion. nrr, grr
  and expansion_rate use these parts; null when mrr_start == 0. logo_retention is null without
  starting customers, arpa null without customers at the end.
"""
from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

SEGMENTS = frozenset({"enterprise", "mid_market", "smb", "solo"})
SUBSCRIPTION_TYPES = frozenset({"subscription_started", "subscription_changed",
                                "subscription_cancelled"})
BILLING_TYPES = SUBSCRIPTION_TYPES | {"payment_succeeded", "payment_failed", "refund"}
PRIORITIES = frozenset({"low", "normal", "high", "urgent"})
MAX_TS = 253402300799.0  # 9999-12-31T23:59:59Z

MOVEMENTS = ("new", "reactivation", "expansion", "contraction", "churn")
FLOAT_FIELDS = ("mrr_start", "mrr_end", *MOVEMENTS, "nrr", "grr", "expansion_rate",
                "logo_retention", "arpa", "nrr_expansion", "nrr_contraction", "nrr_churn")
INT_FIELDS = ("customers_start", "customers_end", "customers_churned")
RATIO_FIELDS = ("nrr", "grr", "expansion_rate", "logo_retention")
REVENUE_FIELDS = FLOAT_FIELDS + INT_FIELDS


# -- parsing ----------------------------------------------------------------------------------


def parse_ts(value: Any) -> float | None:
    """RFC 3339 with an offset, or epoch seconds -> epoch seconds; None when invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        ts = float(value)
        return ts if math.isfinite(ts) and 0 <= ts <= MAX_TS else None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        ts = parsed.timestamp()
        return ts if 0 <= ts <= MAX_TS else None
    return None


def _text(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128


def _amount(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value >= 0)


def _seats(value: Any) -> bool:
    """Optional seats: absent, or an integer >= 1."""
    return value is None or (not isinstance(value, bool) and isinstance(value, int) and value >= 1)


def _money(value: float, event: Mapping[str, Any], reporting: str,
           rates: Mapping[str, float]) -> float | None:
    currency = event.get("currency")
    if currency is None or currency == reporting:
        return float(value)
    if not isinstance(currency, str) or currency not in rates:
        return None
    return float(value) * rates[currency]


def _from_track(obj: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Segment `track` call -> contract shape (CONTRACT.md §1)."""
    context = obj["context"] if isinstance(obj.get("context"), dict) else {}
    properties = obj["properties"] if isinstance(obj.get("properties"), dict) else {}
    out = {"event_id": obj.get("messageId"),
           "customer_id": context.get("groupId") or properties.get("customer_id"),
           "user_id": obj.get("userId"), "ts": obj.get("timestamp"),
           ("action" if family == "usage" else "feature"): obj.get("event")}
    if family == "usage" and "quantity" in properties:
        out["quantity"] = properties["quantity"]
    return out


def _parse(family: str, event: Any, reporting: str, rates: Mapping[str, float]
           ) -> dict[str, Any] | None:
    """The fields this computation needs from one event, or None if it is not valid."""
    if not isinstance(event, dict):
        return None  # raw bytes (malformed) or a JSON value that is not an object
    if event.get("type") == "track":
        if family not in ("usage", "feature"):
            return None  # a track call is a usage or feature event, never billing
        event = _from_track(event, family)
    if not (_text(event.get("event_id")) and _text(event.get("customer_id"))):
        return None
    ts = parse_ts(event.get("ts"))
    if ts is None:
        return None
    user = event.get("user_id")
    if user is not None and not _text(user):
        return None
    out = {"family": family, "event_id": event["event_id"], "customer_id": event["customer_id"],
           "ts": ts}
    if family == "signup":
        valid = _signup(event, out, reporting, rates)
    elif family == "billing":
        valid = _billing(event, out, reporting, rates)
    elif family in ("usage", "feature"):
        valid = _activity(family, event, user, out)
    elif family == "support":
        valid = _support(event)
    else:
        valid = False
    return out if valid else None


def _signup(event: dict[str, Any], out: dict[str, Any], reporting: str,
            rates: Mapping[str, float]) -> bool:
    if event.get("segment") not in SEGMENTS:
        return False
    if not all(event.get(k) is None or _text(event[k]) for k in ("plan", "channel")):
        return False
    if not _seats(event.get("seats")):
        return False
    cac = event.get("cac")
    if cac is not None and (not _amount(cac)
                            or _money(cac, event, reporting, rates) is None):
        return False
    out["segment"] = event["segment"]
    return True


def _billing(event: dict[str, Any], out: dict[str, Any], reporting: str,
             rates: Mapping[str, float]) -> bool:
    kind = event.get("type")
    if kind not in BILLING_TYPES:
        return False
    out["type"] = kind
    if kind in ("subscription_started", "subscription_changed"):
        if not (_amount(event.get("mrr")) and _seats(event.get("seats"))):
            return False
        mrr = _money(event["mrr"], event, reporting, rates)
        if mrr is None:
            return False
        out["mrr"] = mrr
    elif kind == "subscription_cancelled":
        out["mrr"] = 0.0
    else:
        if not _amount(event.get("amount")):
            return False
        if _money(event["amount"], event, reporting, rates) is None:
            return False
    return True


def _activity(family: str, event: dict[str, Any], user: Any, out: dict[str, Any]) -> bool:
    if user is None:
        return False
    if family == "usage" and not (_text(event.get("action")) and (
            event.get("quantity") is None or _amount(event["quantity"]))):
        return False
    if family == "feature" and not _text(event.get("feature")):
        return False
    out["user_id"] = user                      # for batch_features.py
    if family == "feature":
        out["feature"] = event["feature"]
    return True


def _support(event: dict[str, Any]) -> bool:
    kind = event.get("type")
    if kind in ("ticket_opened", "ticket_closed"):
        ticket = event.get("ticket_id")
        if (ticket is None or isinstance(ticket, bool) or not isinstance(ticket, (str, int))
                or ticket == ""):
            return False
        return (event.get("priority") or "normal") in PRIORITIES
    if kind in ("csat", "nps"):
        score = event.get("score")
        low, high = (1, 5) if kind == "csat" else (0, 10)
        return not (isinstance(score, bool) or not isinstance(score, (int, float))
                    or not low <= score <= high)
    return False


# -- calendar ---------------------------------------------------------------------------------


def month_of(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return f"{dt.year:04d}-{dt.month:02d}"


def month_bounds(month: str) -> tuple[float, float]:
    """[start, end) of a calendar month, epoch seconds."""
    year, mon = int(month[:4]), int(month[5:7])
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), end.timestamp()


def months_between(first: str, last: str) -> list[str]:
    out, month = [], first
    while month <= last:
        out.append(month)
        year, mon = int(month[:4]), int(month[5:7])
        month = f"{year + mon // 12:04d}-{mon % 12 + 1:02d}"
    return out


# -- timelines --------------------------------------------------------------------------------


class Timeline:
    """One customer's MRR over time: MRR after each subscription event, and its movements."""

    def __init__(self, changes: list[tuple[float, float]]) -> None:
        self.times: list[float] = []
        self.mrrs: list[float] = []
        self.movements: list[tuple[float, str, float]] = []   # (ts, kind, amount)
        mrr, paid = 0.0, False
        for ts, new in changes:
            if new != mrr:
                if mrr == 0:
                    self.movements.append((ts, "reactivation" if paid else "new", new))
                elif new == 0:
                    self.movements.append((ts, "churn", mrr))
                elif new > mrr:
                    self.movements.append((ts, "expansion", new - mrr))
                else:
                    self.movements.append((ts, "contraction", mrr - new))
            mrr = new
            paid = paid or new > 0
            self.times.append(ts)
            self.mrrs.append(mrr)

    def before(self, t: float) -> float:
        """MRR at instant t, before any event at t (events at t belong to what starts at t)."""
        i = bisect.bisect_left(self.times, t)
        return self.mrrs[i - 1] if i else 0.0

    def last(self) -> float:
        return self.mrrs[-1] if self.mrrs else 0.0


def distinct_valid(events: Iterable[tuple[str, Any]], reporting_currency: str = "USD",
                   rates: Mapping[str, float] | None = None
                   ) -> Iterable[tuple[int, str, dict[str, Any]]]:
    """(input position, family, parsed event) of the valid events, first of each event_id."""
    rates = dict(rates or {})
    seen: set[tuple[str, str]] = set()
    for n, (family, event) in enumerate(events):
        e = _parse(family, event, reporting_currency, rates)
        if e is None:
            continue
        key = (e["customer_id"], e["event_id"])
        if key in seen:
            continue
        seen.add(key)
        yield n, family, e


def timelines(events: Iterable[tuple[str, Any]], reporting_currency: str = "USD",
              rates: Mapping[str, float] | None = None
              ) -> tuple[dict[str, Timeline], dict[str, str], float | None]:
    """Per customer MRR timeline, per customer segment, and the last valid event time."""
    subs: dict[str, list[tuple[float, int, float]]] = defaultdict(list)
    signups: dict[str, tuple[float, int, str]] = {}
    last_ts: float | None = None
    for n, family, e in distinct_valid(events, reporting_currency, rates):
        cid, ts = e["customer_id"], e["ts"]
        last_ts = ts if last_ts is None else max(last_ts, ts)
        if family == "signup":
            if cid not in signups or (ts, n) >= signups[cid][:2]:
                signups[cid] = (ts, n, e["segment"])
        elif family == "billing" and e["type"] in SUBSCRIPTION_TYPES:
            subs[cid].append((ts, n, e["mrr"]))
    lines = {cid: Timeline([(ts, mrr) for ts, _, mrr in sorted(changes)])
             for cid, changes in subs.items()}
    return lines, {cid: seg for cid, (_, _, seg) in signups.items()}, last_ts


# -- the computation --------------------------------------------------------------------------


def _month(members: list[Timeline], start: float, end: float, last: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {k: 0.0 for k in (*MOVEMENTS, "nrr_expansion", "nrr_contraction",
                                           "nrr_churn")}
    mrr_start = mrr_end = 0.0
    customers_start = customers_end = churned = 0
    for line in members:
        m0 = line.before(start)
        m1 = line.last() if last else line.before(end)
        mrr_start += m0
        mrr_end += m1
        customers_start += m0 > 0
        customers_end += m1 > 0
        for ts, kind, amount in line.movements:
            if start <= ts < end:
                rec[kind] += amount
        if m0 > 0:  # starting cohort, net per customer
            if m1 <= 0:
                rec["nrr_churn"] += m0
                churned += 1
            elif m1 < m0:
                rec["nrr_contraction"] += m0 - m1
            else:
                rec["nrr_expansion"] += m1 - m0

    def ratio(num: float) -> float | None:
        return num / mrr_start if mrr_start > 0 else None

    rec.update(
        mrr_start=mrr_start, mrr_end=mrr_end,
        customers_start=customers_start, customers_end=customers_end,
        customers_churned=churned,
        nrr=ratio(mrr_start + rec["nrr_expansion"] - rec["nrr_contraction"] - rec["nrr_churn"]),
        grr=ratio(mrr_start - rec["nrr_contraction"] - rec["nrr_churn"]),
        expansion_rate=ratio(rec["nrr_expansion"]),
        logo_retention=(1.0 - churned / customers_start) if customers_start > 0 else None,
        arpa=mrr_end / customers_end if customers_end > 0 else None,
    )
    return rec


def compute(events: Iterable[tuple[str, Any]], reporting_currency: str = "USD",
            rates: Mapping[str, float] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """{(scope, month): revenue record} for every scope and month (see the module docstring)."""
    lines, segments, last_ts = timelines(events, reporting_currency, rates)
    if last_ts is None:
        return {}
    last_month = month_of(last_ts)
    scopes: dict[str, list[Timeline]] = defaultdict(list)
    for cid, line in lines.items():
        scopes["all"].append(line)
        if cid in segments:
            scopes[f"segment:{segments[cid]}"].append(line)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for scope, members in scopes.items():
        moved = [ts for line in members for ts, _, _ in line.movements]
        if not moved:
            continue
        for month in months_between(month_of(min(moved)), last_month):
            start, end = month_bounds(month)
            out[(scope, month)] = _month(members, start, end, month == last_month)
    return out


def identity_error(rec: Mapping[str, Any]) -> float:
    """|mrr_end - (mrr_start + new + reactivation + expansion - contraction - churn)|."""
    bridge = (rec["mrr_start"] + rec["new"] + rec["reactivation"] + rec["expansion"]
              - rec["contraction"] - rec["churn"])
    return abs(rec["mrr_end"] - bridge)


def close(a: Any, b: Any, rel: float = 1e-6) -> bool:
    """Equal, with floats within `rel` relative to max(|a|, |b|, 1) (None only equals None)."""
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= rel * max(1.0, abs(float(a)), abs(float(b)))


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any],
                fields: Iterable[str] = REVENUE_FIELDS, rel: float = 1e-6
                ) -> dict[str, tuple[Any, Any]]:
    """field -> (expected, actual) for every revenue field that does not match."""
    out = {}
    for name in fields:
        e, a = expected.get(name), actual.get(name)
        if name in INT_FIELDS:
            if e != a:
                out[name] = (e, a)
        elif name in RATIO_FIELDS:   # published to 4 decimals
            if (e is None) != (a is None) or (e is not None and abs(e - a) > 5e-5 + 1e-12):
                out[name] = (e, a)
        elif not close(e, a, rel):
            out[name] = (e, a)
    return out
