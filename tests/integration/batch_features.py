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
from typing import Any, Mapping

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

        def admits(cid: str) -> bool:
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

            def within(times: list[float]) -> bool:
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

