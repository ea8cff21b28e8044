"""A plain batch computation of `vitals.feature` (METRICS.md "Features") as of one day close.

Independent of `streams/` and `models/`: it reuses only the test-side event parsing and MRR
timelines of `batch_revenue.py`, holds the whole history in sets, and counts directly.

Definitions (as the README states them for the service):

- Users are (customer_id, user_id) pairs; a user is active on a day with a usage or feature
  event. The figures of day close D are as of T = (D + 1) 00:00 UTC over days D-29 .. D.
- A feature's release R is the configured one, else the time of its first event.
- stickiness = (Σ DAU_f over the window days since day(R)) / n / feature_users_30d, with
  n = min(30, D - day(R) + 1).
- adoption_30d_after_release: users with an f event over users with any usage or feature
  event, both in [R, R + 30 days) by exact event time; null until T >= R + 30 days + lateness.
- median_days_to_adopt: over customers that used f before T, first use - max(R, signup), never
  below 0 (days).
- A feature with eligible segments counts only the users and customers of those segments
  (the segment of the customer's newest signup).
- Retention (W = 90 days): customers with MRR > 0 at T - W, "with" if their first use of f is
  before T - W; retained if MRR > 0 at T; a group's retention is null when that group has
  fewer than 10 customers, the impact when either is null.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.integration.batch_revenue import distinct_valid, timelines

DAY = 86400.0


def _ratio(num: float, den: float) -> float | None:
    return None if not den else num / den


def compute(events: list[tuple[str, Any]], closed_day: int,
            released: Mapping[str, float] | None = None,
            eligible: Mapping[str, set[str]] | None = None, window: int = 30,
            retention_days: int = 90, min_group: int = 10, lateness_days: float = 2.0
            ) -> dict[str, dict[str, Any]]:
    released = dict(released or {})
    eligible = dict(eligible or {})
    T = (closed_day + 1) * DAY
    active_days: dict[tuple[str, str], set[int]] = defaultdict(set)      # user -> days
    active_at: dict[tuple[str, str], list[float]] = defaultdict(list)    # user -> event times
    used_at: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    daily: dict[str, dict[int, set[tuple[str, str]]]] = defaultdict(lambda: defaultdict(set))
    first_use: dict[str, dict[str, float]] = defaultdict(dict)            # f -> customer -> ts
    first_seen: dict[str, float] = {}
    signup: dict[str, float] = {}
    for _, family, e in distinct_valid(events):
        ts, cid = e["ts"], e["customer_id"]
        if family == "signup":
            signup[cid] = min(ts, signup.get(cid, ts))
        if family not in ("usage", "feature") or ts >= T:
            continue
        user = (cid, e["user_id"])
        day = int(ts // DAY)
        active_days[user].add(day)
        active_at[user].append(ts)
        if family == "feature":
            f = e["feature"]
            daily[f][day].add(user)
            used_at[f][user].append(ts)
            first_seen[f] = min(ts, first_seen.get(f, ts))
            if ts < first_use[f].get(cid, float("inf")):
                first_use[f][cid] = ts
    lines, segments, _ = timelines(events)

    def paying(cid: str, t: float) -> bool:
        line = lines.get(cid)
        return line is not None and line.before(t + 1e-6) > 0   # a change at t counts at t

    def active_users(lo: int, hi: int, admits: Any) -> set[tuple[str, str]]:
        return {u for u, days in active_days.items()
                if admits(u[0]) and any(lo <= d <= hi for d in days)}

    lo = closed_day - window + 1
    anchor = T - retention_days * DAY
    out = {}
    for f in sorted(set(first_seen) | set(released)):
        allowed = eligible.get(f)

        def admits(cid: str, allowed: set[str] | None = allowed) -> bool:
            return allowed is None or segments.get(cid) in allowed

        active = active_users(lo, closed_day, admits)
        active_customers = {c for c, _ in active}
        paying_then = {c for c in lines if admits(c) and paying(c, anchor)}
        R = released.get(f, first_seen.get(f))
        users = {u for d in range(lo, closed_day + 1) for u in daily[f].get(d, ()) if admits(u[0])}
        record: dict[str, Any] = {
            "feature": f, "active_users_30d": len(active), "feature_users_30d": len(users),
            "adoption_rate": _ratio(len(users), len(active)),
            "customer_adoption_rate": _ratio(len({c for c, _ in users}), len(active_customers)),
        }
        r_day = None if R is None else int(R // DAY)
        n = window if r_day is None else min(window, closed_day - r_day + 1)
        start = lo if r_day is None else max(lo, r_day)
        dau_sum = sum(sum(1 for u in daily[f].get(d, ()) if admits(u[0]))
                      for d in range(start, closed_day + 1))
        record["stickiness"] = (None if not users or n <= 0 else dau_sum / n / len(users))
        after = None
        if R is not None and T >= R + (30 + lateness_days) * DAY:
            end = R + 30 * DAY

            def within(times: list[float], R: float = R, end: float = end) -> bool:
                return any(R <= t < end for t in times)

            adopters = [u for u, times in used_at[f].items() if admits(u[0]) and within(times)]
            users_in = [u for u, times in active_at.items() if admits(u[0]) and within(times)]
            after = _ratio(len(adopters), len(users_in))
        record["adoption_30d_after_release"] = after
        waits = []
        for cid, first in first_use[f].items():
            if not admits(cid):
                continue
            start_at = max(x for x in (R, signup.get(cid)) if x is not None) if (
                R is not None or cid in signup) else first
            waits.append(max(0.0, first - start_at) / DAY)
        record["median_days_to_adopt"] = statistics.median(waits) if waits else None
        with_group = {c for c in paying_then if first_use[f].get(c, T) < anchor}
        without_group = paying_then - with_group
        kept_with = sum(paying(c, T) for c in with_group)
        kept_without = sum(paying(c, T) for c in without_group)
        rw = kept_with / len(with_group) if len(with_group) >= max(1, min_group) else None
        rwo = (kept_without / len(without_group) if len(without_group) >= max(1, min_group)
               else None)
        record.update(retention_with=rw, retention_without=rwo,
                      retention_impact=None if rw is None or rwo is None else rw - rwo)
        out[f] = record
    return out


EXACT = ("active_users_30d", "feature_users_30d")
RATIOS = ("adoption_rate", "customer_adoption_rate", "stickiness", "adoption_30d_after_release",
          "retention_with", "retention_without", "retention_impact")


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Counts exactly, ratios to the record's 4 decimals, the median to its 0.1-day buckets."""
    out = []
    for k in EXACT:
        if expected[k] != actual[k]:
            out.append(f"{k}: batch {expected[k]} != stream {actual[k]}")
    for k in RATIOS:
        e, a = expected[k], actual[k]
        if (e is None) != (a is None) or (e is not None and abs(e - a) > 6e-5):
            out.append(f"{k}: batch {e} != stream {a}")
    e, a = expected["median_days_to_adopt"], actual["median_days_to_adopt"]
    # The service's histogram buckets: 0.1 day below 30 days, whole days above (an even count
    # averages two middle values, which may sit in different buckets).
    resolution = 0.1 if e is None or e < 29 else 1.0
    if (e is None) != (a is None) or (e is not None and abs(e - a) > resolution + 1e-9):
        out.append(f"median_days_to_adopt: batch {e} != stream {a}")
    return out


def all_differences(expected: Mapping[str, Mapping[str, Any]],
                    actual: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    diffs = {f: differences(expected[f], actual[f]) for f in expected if f in actual}
    missing = sorted(set(expected) ^ set(actual))
    out = {f: d for f, d in diffs.items() if d}
    if missing:
        out["(features)"] = [f"only on one side: {missing}"]
    return out



# -- one day close of every customer ------------------------------------------------------------

PRIORITY_WEIGHTS = {"low": 0.5, "normal": 1.0, "high": 2.0, "urgent": 4.0}
WEIGHTS = {"usage_frequency": 0.30, "feature_adoption": 0.25, "support": 0.20, "payment": 0.15,
           "engagement": 0.10}


def _customer_events(events: list[tuple[str, Any]]) -> dict[str, list[tuple[str, dict, Any]]]:
    """Per customer, its distinct valid events in input order: (family, parsed, raw)."""
    out: dict[str, list[tuple[str, dict, Any]]] = defaultdict(list)
    for n, family, e in distinct_valid(events):
        out[e["customer_id"]].append((family, e, events[n][1]))
    return out


@dataclass
class _Seen:
    """What one customer's events before a close say, as the batch score reads them."""
    closed_day: int
    lo: int
    users_on: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    used: set[str] = field(default_factory=set)
    tickets: list[tuple[int, str]] = field(default_factory=list)
    open_tickets: set[str] = field(default_factory=set)
    closed_first: dict[str, float] = field(default_factory=dict)
    payments: list[int] = field(default_factory=lambda: [0, 0])
    nps: tuple[float, float] | None = None
    csat: tuple[float, float] | None = None
    seats: Any = None
    signup: float | None = None
    first: float | None = None
    signup_seen: float | None = None

    def add(self, family: str, e: dict, raw: Any) -> None:
        ts = e["ts"]
        self.first = ts if self.first is None else min(self.first, ts)
        day = int(ts // DAY)
        if family in ("usage", "feature"):
            self.users_on[day].add(e["user_id"])
            if family == "feature" and self.lo <= day <= self.closed_day:
                self.used.add(e["feature"])
        elif family == "signup":
            self.signup = ts if self.signup is None else min(self.signup, ts)
            if self.signup_seen is None or ts >= self.signup_seen:
                self.signup_seen, self.seats = ts, raw.get("seats")
        elif family == "billing":
            if raw.get("type") in ("payment_succeeded", "payment_failed") and \
                    self.closed_day - 89 <= day <= self.closed_day:
                self.payments[0 if raw["type"] == "payment_succeeded" else 1] += 1
            if raw.get("seats"):
                self.seats = raw["seats"]
        elif family == "support":
            self._support(raw, ts, day)

    def _support(self, raw: Any, ts: float, day: int) -> None:
        kind, ticket = raw.get("type"), str(raw.get("ticket_id"))
        if kind == "ticket_opened":
            if ticket in self.open_tickets:
                return          # the same ticket opened again while open
            self.tickets.append((day, raw.get("priority") or "normal"))
            if self.closed_first.get(ticket, -1.0) >= ts:
                del self.closed_first[ticket]   # its close came first: not open
            else:
                self.open_tickets.add(ticket)
        elif kind == "ticket_closed":
            if ticket in self.open_tickets:
                self.open_tickets.discard(ticket)
            else:
                self.closed_first[ticket] = ts
        elif kind == "nps" and (self.nps is None or ts >= self.nps[1]):
            self.nps = (float(raw["score"]), ts)
        elif kind == "csat" and (self.csat is None or ts >= self.csat[1]):
            self.csat = (float(raw["score"]), ts)


def _score(events: list[tuple[str, dict, Any]], closed_day: int, key_features: set[str],
           window: int = 30) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(activity, health without trend) of one customer at the close of closed_day: only the
    events before T = closed_day + 1 00:00 exist yet; every window ends with closed_day."""
    T = (closed_day + 1) * DAY
    lo = closed_day - window + 1
    seen = _Seen(closed_day, lo)
    for family, e, raw in events:
        if e["ts"] < T:
            seen.add(family, e, raw)
    users_on, used, tickets, payments = seen.users_on, seen.used, seen.tickets, seen.payments
    nps, csat, seats, signup, first = seen.nps, seen.csat, seen.seats, seen.signup, seen.first
    if first is None:
        return None                     # not a customer yet: no close evaluated it
    start = signup if signup is not None else first
    start_day = None if start is None else int(start // DAY)
    n = window if start_day is None or start_day > closed_day else max(
        1, min(window, closed_day - start_day + 1))
    month = {u for d in range(lo, closed_day + 1) for u in users_on.get(d, ())}
    week = {u for d in range(closed_day - 6, closed_day + 1) for u in users_on.get(d, ())}
    active_days = sum(1 for d in range(lo, closed_day + 1) if users_on.get(d))
    dau_sum = sum(len(users_on.get(d, ())) for d in range(closed_day - n + 1, closed_day + 1))
    stick = (dau_sum / n) / len(month) if month else 0.0
    activity = {"dau": len(users_on.get(closed_day, ())), "wau": len(week), "mau": len(month),
                "active_days_30d": active_days, "stickiness": stick}
    weighted = sum(PRIORITY_WEIGHTS[p] for d, p in tickets if lo <= d <= closed_day)
    signals = [min(1.0, stick / 0.5)]
    if seats:
        signals.append(min(1.0, len(month) / seats))
    survey_from = closed_day - 89
    if nps is not None and int(nps[1] // DAY) >= survey_from:
        signals.append(nps[0] / 10)
    if csat is not None and int(csat[1] // DAY) >= survey_from:
        signals.append((csat[0] - 1) / 4)
    comps = {
        "usage_frequency": 100 * min(1.0, active_days / (20 * min(30, n) / 30)),
        "feature_adoption": 100 * len(used & key_features) / len(key_features)
        if key_features else None,
        "support": 100 * max(0.0, 1 - weighted / 8),
        "payment": 100 * payments[0] / sum(payments) if sum(payments) else None,
        "engagement": 100 * sum(max(0.0, min(1.0, s)) for s in signals) / len(signals),
    }
    weights = sum(WEIGHTS[k] for k, v in comps.items() if v is not None)
    score = sum(WEIGHTS[k] * v for k, v in comps.items() if v is not None) / weights
    return activity, {"score": score, "components": comps}


def customers_at_close(events: list[tuple[str, Any]], closed_day: int,
                       released: Mapping[str, float] | None = None,
                       partition_of: Callable[[str], int] | None = None
                       ) -> dict[str, dict[str, Any]]:
    """The `activity` and `health` of every customer at the close of closed_day (as of
    T = closed_day + 1 00:00), by METRICS.md "Activity" and "Health score": windows over the
    complete days closed_day-29 .. closed_day, trend_7d = score at this close − score at the
    close of closed_day − 7 (over its own complete days, with the events before its close).
    Key features: every feature released (configured) or first seen by T, on the customer's
    own partition (``partition_of``; the whole input when not given)."""
    released = dict(released or {})
    part = partition_of or (lambda cid: 0)
    first_seen: dict[int, dict[str, float]] = {}
    for _, family, e in distinct_valid(events):
        if family == "feature":
            seen = first_seen.setdefault(part(e["customer_id"]), {})
            seen[e["feature"]] = min(e["ts"], seen.get(e["feature"], e["ts"]))

    def keys(day: int, cid: str) -> set[str]:
        T = (day + 1) * DAY
        seen = first_seen.get(part(cid), {})
        return {f for f in set(seen) | set(released)
                if released.get(f, seen.get(f, T + 1)) <= T}

    out = {}
    for cid, evs in _customer_events(events).items():
        now = _score(evs, closed_day, keys(closed_day, cid))
        if now is None:
            continue
        activity, health = now
        before = _score(evs, closed_day - 7, keys(closed_day - 7, cid))
        rounded = round(health["score"], 2)
        health.update(score=rounded, trend_7d=None if before is None else round(
            rounded - round(before[1]["score"], 2), 2),
            grade="green" if rounded >= 70 else "yellow" if rounded >= 40 else "red")
        out[cid] = {"as_of": (closed_day + 1) * DAY, "activity": activity, "health": health}
    return out


def customer_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Activity counts exactly, stickiness to its 6 places, health to its 2 (± one rounding)."""
    out = []
    ea, aa = expected["activity"], actual["activity"]
    for k in ("dau", "wau", "mau", "active_days_30d"):
        if ea[k] != aa[k]:
            out.append(f"activity.{k}: batch {ea[k]} != stream {aa[k]}")
    if abs(ea["stickiness"] - aa["stickiness"]) > 6e-7:
        out.append(f"activity.stickiness: batch {ea['stickiness']} != stream {aa['stickiness']}")
    eh, ah = expected["health"], actual["health"]
    pairs = [("score", eh["score"], ah["score"]), ("trend_7d", eh["trend_7d"], ah["trend_7d"])]
    pairs += [(f"components.{k}", v, ah["components"][k]) for k, v in eh["components"].items()]
    for name, e, a in pairs:
        if (e is None) != (a is None) or (e is not None and abs(e - a) > 0.0101):
            out.append(f"health.{name}: batch {e} != stream {a}")
    if eh["grade"] != ah["grade"] and abs(eh["score"] - ah["score"]) > 1e-9:
        out.append(f"health.grade: batch {eh['grade']} != stream {ah['grade']}")
    return out
