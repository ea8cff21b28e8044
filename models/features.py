"""Feature analytics (METRICS.md "Features", CONTRACT.md ``vitals.feature``).

Three pieces, one per stage:

* ``CustomerFeatures`` and ``PaidHistory`` live in the customer record (customer stage). Users
  are (customer_id, user_id) pairs, so every user belongs to exactly one customer and every
  customer to exactly one partition: distinct users and customers of different partitions
  never overlap, and exact per-partition counts simply add up. The customer keeps, per
  feature, the users who used it on each day of the window as bit masks over interned user ids
  (as ``models/activity.py`` does for all activity), plus its first use; ``PaidHistory`` keeps
  when MRR went from 0 to > 0 and back, for the 90-day retention split.
* ``FeatureContribution`` is what one partition sends, once per day close D and feature f:
  exact integer sums over its customers, a histogram of days-to-adopt, and four retention
  counts. Every field merges by addition (``first_seen`` by min), so the merge is associative,
  commutative and its size is fixed: it does not grow with users or customers.
* ``FeatureBook`` is what the feature stage keeps per feature: the latest contribution of each
  partition (a resend replaces, it does not add) and a short history of the window counts for
  ``adoption_30d_after_release``. ``feature_record`` turns the merged figures into the record.

No distinct count here needs a sketch: the sets are partition-disjoint and each partition
counts its own exactly. ``models/sketch.py`` (HyperLogLog) is there for distinct counts over
sets that are *not* partition-disjoint.

Time: the figures of day close D are as of T = (D + 1) 00:00 UTC, over days D-29 .. D, except
``adoption_30d_after_release``: over [R, R+30d) by event time, R the exact release instant,
fixed at the first close at or past R + 30d + lateness.

How the stages use it:

* customer: on every usage or feature event ``CustomerFeatures.on_activity(ts, user_id)``,
  on a feature event also ``CustomerFeatures.record(f, ts, user_id)``; on every MRR change the
  revenue applied ``PaidHistory.on_mrr(mv.ts, mv.new_mrr)``; when pruning,
  ``CustomerFeatures.prune(day(wm) - 30, keep_from=day(wm) - 30 - (lateness + 3))`` and
  ``PaidHistory.prune(wm - (W + lateness + 1) d)``.
  Cost per customer (JSON), measured on the simulator's customers: about 2.4 kB for an smb
  customer (5 users), 10 kB for an enterprise one (20-60 users); two thirds of it are the
  per-user event times kept for the exact after-release window.
* partition, at day close D: per feature f, ``part = FeatureContribution(f, D)`` and
  ``part.add_customer(...)`` for *every* customer of the partition (or ``set_base``); from
  the close ``after_release_fix_day(R, lateness)`` on, ``part.set_after_release(R, ...)`` with
  the sum of ``CustomerFeatures.after_release(f, R)``; send ``part.to_state()`` keyed by f,
  with the partition number.
* feature: ``FeatureBook.update(partition, part)``; then ``merged()``, ``released_at()``,
  ``after_release_counts()``, ``stickiness_days()`` and ``feature_record()``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from models.activity import DAY_SECONDS, day_of, intern, window_days

WINDOW_DAYS = 30
RETENTION_WINDOW_DAYS = 90      # features.retention_window_days
MIN_GROUP = 10                  # features.min_group
RATIO_DIGITS = 4               # published precision (docs/precision.md): ratios and rates
STICKINESS_DIGITS = 6
DAYS_DIGITS = 4

# Days-to-adopt histogram: tenths of a day below FINE_DAYS, whole days from there on, so a
# feature's histogram holds at most 10 * FINE_DAYS + (oldest age in days) buckets.
FINE_DAYS = 30


# --------------------------------------------------------------------------------------------
# Figures (pure)
# --------------------------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float | None:
    return None if den <= 0 else num / den


def adoption_rate(feature_users_30d: float, active_users_30d: float) -> float | None:
    """Users of f in the window / active users in the window; None without active users."""
    return _ratio(feature_users_30d, active_users_30d)


def customer_adoption_rate(feature_customers_30d: int, active_customers_30d: int) -> float | None:
    """Customers with an f event in the window / active customers; None without any."""
    return _ratio(feature_customers_30d, active_customers_30d)


def stickiness_days(as_of_day: int, released_at: float | None, window: int = WINDOW_DAYS) -> int:
    """Days the DAU mean is taken over: the window, or the days since release within it.

    A feature released 3 days ago has had 3 days to be used daily; dividing by 30 would make
    every new feature look unsticky.
    """
    return window_days(as_of_day, None if released_at is None else day_of(released_at), window)


def stickiness(dau_sum: float, n_days: int, feature_users_30d: float) -> float | None:
    """(Σ DAU_f over the last n_days ÷ n_days) ÷ feature_users_30d; None when nobody used f."""
    if feature_users_30d <= 0 or n_days <= 0:
        return None
    return (dau_sum / n_days) / feature_users_30d


def after_release_day(released_at: float) -> int:
    """The day close whose 30-day window is the 30 UTC days starting with the release day.

    Only the fallback of ``FeatureBook.after_release_counts`` uses it: a partition that learnt
    of f after it had dropped the events of day(R) can only give its counts of the UTC days
    day(R) .. day(R)+29, which is [R, R+30d) exactly when R is a midnight.
    """
    return day_of(released_at) + WINDOW_DAYS - 1


def after_release_fix_day(released_at: float, lateness_days: float = 0.0,
                          window: int = WINDOW_DAYS) -> int:
    """The first day close D whose as-of (D+1 00:00) is at or past R + 30d + lateness.

    From that close on, no event of [R, R+30d) is within the allowed lateness any more: the
    figure is fixed there.
    """
    end = released_at + (window + lateness_days) * DAY_SECONDS
    return math.ceil(end / DAY_SECONDS) - 1


def adoption_30d_after_release(users: float | None, active: float | None, watermark: float,
                               released_at: float | None, lateness_days: float = 0.0
                               ) -> float | None:
    """Users of f / active users in [R, R+30d); None until the watermark passed R + 30d plus
    the allowed lateness (late events of the period still count), then fixed."""
    if released_at is None or users is None or active is None:
        return None
    if watermark < released_at + (WINDOW_DAYS + lateness_days) * DAY_SECONDS:
        return None
    return _ratio(users, active)


def days_to_adopt(first_use: float, released_at: float | None,
                  signup_ts: float | None) -> float:
    """first use − max(R, signup) in days, never negative (use in a beta before R counts as 0).

    An unknown signup or release drops out of the max; with neither, the customer adopted at
    its first use (0).
    """
    starts = [t for t in (released_at, signup_ts) if t is not None]
    if not starts:
        return 0.0
    return max(0.0, (first_use - max(starts)) / DAY_SECONDS)


def adopt_bucket(days: float) -> int:
    """Histogram key in tenths of a day: 0.1-day resolution below FINE_DAYS, 1 day above."""
    days = max(0.0, days)
    if days < FINE_DAYS:
        return min(int(math.floor(days * 10 + 0.5)), FINE_DAYS * 10)
    return int(math.floor(days + 0.5)) * 10


def bucket_days(key: int) -> float:
    return key / 10


def median_from_histogram(hist: Mapping[int, int]) -> float | None:
    """Median of the bucketed values (mean of the two middle ones for an even count)."""
    total = sum(hist.values())
    if total <= 0:
        return None
    keys = sorted(k for k, n in hist.items() if n > 0)
    lo_rank, hi_rank = (total - 1) // 2, total // 2      # 0-based ranks of the middle values
    lo = hi = None
    seen = 0
    for key in keys:
        seen += hist[key]
        if lo is None and seen > lo_rank:
            lo = key
        if seen > hi_rank:
            hi = key
            break
    assert lo is not None and hi is not None
    return (bucket_days(lo) + bucket_days(hi)) / 2


def median_days_to_adopt(values: Iterable[float]) -> float | None:
    """Median of days-to-adopt values at the histogram's resolution (one partition's worth)."""
    hist: dict[int, int] = {}
    for v in values:
        key = adopt_bucket(v)
        hist[key] = hist.get(key, 0) + 1
    return median_from_histogram(hist)


def retention_impact(with_kept: int, with_total: int, without_kept: int, without_total: int,
                     min_group: int = MIN_GROUP
                     ) -> tuple[float | None, float | None, float | None]:
    """(retention_with, retention_without, impact), each group judged on its own.

    The groups are customers paying at D − W that had / had not used f before D − W; retention
    is the share of them still paying at D. A group under min_group (or empty) has a null
    retention: below that a share is noise, not evidence. The other group's retention is still
    published; the impact needs both.
    """
    def rate(kept: int, total: int) -> float | None:
        return None if total < max(1, min_group) else kept / total

    with_rate = rate(with_kept, with_total)
    without_rate = rate(without_kept, without_total)
    if with_rate is None or without_rate is None:
        return with_rate, without_rate, None
    return with_rate, without_rate, with_rate - without_rate


# --------------------------------------------------------------------------------------------
# Per-customer state (customer stage)
# --------------------------------------------------------------------------------------------


def _span(spans: dict[int, dict[int, list[float]]], ts: float, index: int) -> None:
    """Widen user `index`'s [first, last] event time of ts's day to include ts."""
    _span_day(spans, day_of(ts), ts, index)


def _span_day(spans: dict[int, dict[int, list[float]]], day: int, ts: float, index: int
              ) -> None:
    per_day = spans.get(day)
    if per_day is None:
        per_day = spans[day] = {}
    span = per_day.get(index)
    if span is None:
        per_day[index] = [ts, ts]
    elif ts < span[0]:
        span[0] = ts
    elif ts > span[1]:
        span[1] = ts


def _users_in(spans: Mapping[int, Mapping[int, list[float]]], start: float, end: float) -> int:
    """Bit mask of the users with an event in [start, end), from per-day [first, last] times.

    Whole days inside need no time; on the day of `start` a user counts when its last event is
    at or after start, on the day of `end` when its first event is before end. Exact for
    windows of at least a day (start and end on different days), the only ones used.
    """
    lo_day, hi_day = day_of(start), day_of(end)
    mask = 0
    for day, per_day in spans.items():
        if day < lo_day or day > hi_day:
            continue
        for index, (first, last) in per_day.items():
            if day == lo_day and last < start:
                continue
            if day == hi_day and first >= end:
                continue
            mask |= 1 << index
    return mask


class CustomerFeatures:
    """Per feature: users per day of the window (bit masks), and the customer's first use.

    Users are interned separately from ``ActivityWindow`` to keep the two prunes independent.

    For ``adoption_30d_after_release`` over the exact window [R, R+30d) it also keeps, per day
    and user, the first and last event time: of any usage or feature event (``active``, fed
    by ``on_activity``) and of each feature's events (``spans``). A release R rarely falls on a
    midnight, so the two edge days (day(R) from R, day(R)+30 until R+30d) need the times; the
    days between need only the day. These are kept ``lateness + 3`` days longer than the
    window (``prune``'s ``keep_from``), until the figure is fixed.
    """

    __slots__ = ("users", "masks", "first", "_index", "active", "spans", "held_from")

    def __init__(self) -> None:
        self.users: list[str] = []
        self.masks: dict[str, dict[int, int]] = {}     # feature -> day -> users mask
        self.first: dict[str, float] = {}              # feature -> first use ts (kept for life)
        self._index: dict[str, int] = {}
        self.active: dict[int, dict[int, list[float]]] = {}             # day -> user -> span
        self.spans: dict[str, dict[int, dict[int, list[float]]]] = {}   # feature -> same
        self.held_from: int | None = None      # oldest day still held in active/spans

    def record(self, feature: str, ts: float, user_id: str) -> bool:
        """A feature event of user at ts; True when it changed anything."""
        changed = False
        first = self.first.get(feature)
        if first is None or ts < first:
            self.first[feature] = ts
            changed = True
        index = intern(self.users, self._index, user_id)
        bit = 1 << index
        days = self.masks.setdefault(feature, {})
        day = day_of(ts)
        mask = days.get(day, 0)
        if not mask & bit:
            days[day] = mask | bit
            changed = True
        _span(self.spans.setdefault(feature, {}), ts, index)
        return changed

    def on_activity(self, ts: float, user_id: str) -> None:
        """Any usage or feature event of user at ts (for the after-release active users)."""
        _span(self.active, ts, intern(self.users, self._index, user_id))

    def on_event(self, ts: float, day: int, user_id: str, feature: str | None = None) -> None:
        """``on_activity`` and, for a feature event, ``record``, with one lookup of the user:
        the customer stage's path for every usage and feature event."""
        index = intern(self.users, self._index, user_id)
        _span_day(self.active, day, ts, index)
        if feature is None:
            return
        first = self.first.get(feature)
        if first is None or ts < first:
            self.first[feature] = ts
        bit = 1 << index
        days = self.masks.get(feature)
        if days is None:
            days = self.masks[feature] = {}
        mask = days.get(day, 0)
        if not mask & bit:
            days[day] = mask | bit
        spans = self.spans.get(feature)
        if spans is None:
            spans = self.spans[feature] = {}
        _span_day(spans, day, ts, index)

    def after_release(self, feature: str, released_at: float, window: int = WINDOW_DAYS
                      ) -> tuple[int, int] | None:
        """(users of f, active users) with an event in [R, R + window days), exactly.

        None when the events of day(R) were already pruned (the caller cannot be exact).
        """
        if self.held_from is not None and day_of(released_at) < self.held_from:
            return None
        end = released_at + window * DAY_SECONDS
        users = _users_in(self.spans.get(feature, {}), released_at, end)
        active = _users_in(self.active, released_at, end)
        return users.bit_count(), active.bit_count()

    def first_use(self, feature: str) -> float | None:
        return self.first.get(feature)

    def dau_days(self, feature: str, as_of_day: int, window: int = WINDOW_DAYS
                 ) -> dict[int, int]:
        """DAU_f per day of D-window+1 .. D (days with users only)."""
        lo = as_of_day - window + 1
        return {day: mask.bit_count() for day, mask in self.masks.get(feature, {}).items()
                if lo <= day <= as_of_day and mask}

    def window(self, feature: str, as_of_day: int, since_day: int | None = None,
               window: int = WINDOW_DAYS) -> tuple[int, int]:
        """(distinct users of f over D-window+1 .. D, Σ DAU_f over those days >= since_day)."""
        lo = as_of_day - window + 1
        lo_sum = lo if since_day is None else max(lo, since_day)
        union = dau_sum = 0
        for day, mask in self.masks.get(feature, {}).items():
            if lo <= day <= as_of_day:
                union |= mask
                if day >= lo_sum:
                    dau_sum += mask.bit_count()
        return union.bit_count(), dau_sum

    def prune(self, oldest_day: int, keep_from: int | None = None) -> None:
        """Forget mask days before oldest_day, event times of days before keep_from (default
        oldest_day), and users no longer referenced (first uses stay)."""
        keep_from = oldest_day if keep_from is None else min(keep_from, oldest_day)
        changed = self._drop_days(oldest_day, keep_from)
        if self.held_from is None or keep_from > self.held_from:
            self.held_from = keep_from
        if not changed:
            return
        union = self._referenced_users()
        if union.bit_count() == len(self.users):
            return
        self._renumber_users(union)

    def _drop_days(self, oldest_day: int, keep_from: int) -> bool:
        """Drop mask days before oldest_day and span days before keep_from; True if any went."""
        changed = False
        for feature in list(self.masks):
            days = self.masks[feature]
            stale = [d for d in days if d < oldest_day]
            for d in stale:
                del days[d]
            changed |= bool(stale)
            if not days:
                del self.masks[feature]
        for spans in (self.active, *self.spans.values()):
            stale = [d for d in spans if d < keep_from]
            for d in stale:
                del spans[d]
            changed |= bool(stale)
        self.spans = {f: days for f, days in self.spans.items() if days}
        return changed

    def _referenced_users(self) -> int:
        """Bit set of the user indexes some mask or span still names."""
        union = 0
        for days in self.masks.values():
            for mask in days.values():
                union |= mask
        for spans in (self.active, *self.spans.values()):
            for per_day in spans.values():
                for index in per_day:
                    union |= 1 << index
        return union

    def _renumber_users(self, union: int) -> None:
        """Keep only the users in union, renumbered densely in their old order."""
        remap = {old: new for new, old in
                 enumerate(i for i in range(len(self.users)) if union >> i & 1)}
        for days in self.masks.values():
            for d, mask in days.items():
                new_mask = 0
                for old, new in remap.items():
                    if mask >> old & 1:
                        new_mask |= 1 << new
                days[d] = new_mask
        for spans in (self.active, *self.spans.values()):
            for d, per_day in spans.items():
                spans[d] = {remap[i]: span for i, span in per_day.items()}
        self.users = [self.users[old] for old in remap]
        self._index = {u: i for i, u in enumerate(self.users)}

    def to_dict(self) -> dict[str, Any]:
        # Masks as hex: JSON integers stop at 64 bits, customers can have more users.
        # Spans flat per day, [day, user, first, last, user, first, last, ...], as epoch
        # seconds ("A", "S"). Seconds into the day ("a", "s", still read) were longer for
        # millisecond times (t - base shows the binary fraction: 5351.055000066757), and the
        # subtraction cost: the spans are the largest part of a customer's changelog value.
        def spans(days: Mapping[int, Mapping[int, list[float]]]) -> list[Any]:
            out = []
            for d, per in sorted(days.items()):
                row: list[Any] = [d]
                for i, span in sorted(per.items()):
                    row.append(i)
                    row += span
                out.append(row)
            return out

        out: dict[str, Any] = {
            "u": self.users, "f": self.first,
            "m": {f: [[d, format(m, "x")] for d, m in sorted(days.items())]
                  for f, days in self.masks.items()}}
        out["A"] = spans(self.active)     # always present: its absence marks an older record
        if self.spans:
            out["S"] = {f: spans(days) for f, days in self.spans.items()}
        if self.held_from is not None:
            out["hf"] = self.held_from
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerFeatures:
        def spans(days: Iterable[Any], relative: bool) -> dict[int, dict[int, list[float]]]:
            out: dict[int, dict[int, list[float]]] = {}
            for d, *flat in days:
                base = float(int(d) * DAY_SECONDS) if relative else 0.0
                out[int(d)] = {int(flat[k]): [base + flat[k + 1], base + flat[k + 2]]
                               for k in range(0, len(flat), 3)}
            return out

        state = cls()
        state.users = [str(u) for u in data.get("u", ())]
        state._index = {u: i for i, u in enumerate(state.users)}
        state.first = {str(f): float(ts) for f, ts in data.get("f", {}).items()}
        state.masks = {str(f): {int(d): int(m, 16) for d, m in days}
                       for f, days in data.get("m", {}).items()}
        relative = "A" not in data
        state.active = spans(data.get("a" if relative else "A", ()), relative)
        state.spans = {str(f): spans(days, relative)
                       for f, days in data.get("s" if relative else "S", {}).items()}
        hf = data.get("hf")
        state.held_from = None if hf is None else int(hf)
        if "a" not in data and "A" not in data and state.users:
            # A record from before event times were kept: none are held up to its last day.
            last = max((d for days in state.masks.values() for d in days), default=None)
            state.held_from = None if last is None else last + 1
        return state


class PaidHistory:
    """When the customer's MRR turned > 0 and back to 0, for "paying at D − W" and "at D".

    Fed with every MRR change the customer's revenue applied (time-ordered: ``CustomerRevenue``
    ignores subscription events older than its latest), so only transitions are stored.
    """

    __slots__ = ("changes",)

    def __init__(self) -> None:
        self.changes: list[tuple[float, bool]] = []     # (ts, paying from ts on)

    def on_mrr(self, ts: float, mrr: float) -> None:
        paying = mrr > 0
        if self.changes and ts < self.changes[-1][0]:
            raise ValueError("MRR changes must be applied in time order")
        if self.paying_at(ts) != paying:
            self.changes.append((float(ts), paying))

    def paying_at(self, ts: float) -> bool:
        """MRR > 0 at instant ts (a change at exactly ts already counts)."""
        paying = False
        for at, value in self.changes:
            if at > ts:
                break
            paying = value
        return paying

    def prune(self, keep_from: float) -> None:
        """Forget changes before keep_from except the one that still decides the state there."""
        older = [i for i, (at, _) in enumerate(self.changes) if at <= keep_from]
        if len(older) > 1:
            del self.changes[: older[-1]]

    def to_list(self) -> list[list[float]]:
        return [[at, 1 if paying else 0] for at, paying in self.changes]

    @classmethod
    def from_list(cls, data: Iterable[Iterable[float]]) -> PaidHistory:
        history = cls()
        history.changes = [(float(at), bool(paying)) for at, paying in data]
        return history


# --------------------------------------------------------------------------------------------
# Per-partition contribution (customer stage -> feature stage)
# --------------------------------------------------------------------------------------------


@dataclass
class ReleaseInputs:
    """What the release-dependent parts of a contribution are counted from, as of its close:
    each adopter's first use and signup (days to adopt) and the DAU of f per window day
    (Σ DAU since release). A release learnt later, or earlier than first thought (another
    worker saw f first), recounts those parts exactly as the close would have counted them
    (``rebase``), without the events applied since the close."""

    adopters: list[tuple[float, float | None]] = field(default_factory=list)
    dau_by_day: dict[int, int] = field(default_factory=dict)

    def add(self, use: CustomerFeatures, feature: str, day: int, signup_ts: float | None
            ) -> None:
        """One customer of the close of ``day`` that used f, as ``add_customer`` counts it."""
        first = use.first_use(feature)
        if first is not None and first < (day + 1) * DAY_SECONDS:
            self.adopters.append((first, signup_ts))
        for d, n in use.dau_days(feature, day).items():
            self.dau_by_day[d] = self.dau_by_day.get(d, 0) + n

    def rebase(self, part: FeatureContribution, released_at: float,
               window: int = WINDOW_DAYS) -> None:
        """Set ``part``'s days to adopt and Σ DAU since release for release ``released_at``."""
        hist: dict[int, int] = {}
        for first, signup in self.adopters:
            key = adopt_bucket(days_to_adopt(first, released_at, signup))
            hist[key] = hist.get(key, 0) + 1
        part.adopt_hist = hist
        since = max(part.day - window + 1, day_of(released_at))
        part.dau_sum = sum(n for d, n in self.dau_by_day.items() if since <= d <= part.day)

    def to_state(self) -> list[Any]:
        return [[list(a) for a in self.adopters], sorted(self.dau_by_day.items())]

    @classmethod
    def from_state(cls, data: Sequence[Any]) -> ReleaseInputs:
        adopters, days = data
        return cls([(float(f), None if s is None else float(s)) for f, s in adopters],
                    {int(d): int(n) for d, n in days})


@dataclass
class FeatureContribution:
    """One partition's (or a merge of several) exact counts for feature f at day close ``day``.

    All counts are over the partition's customers, as of T = (day + 1) 00:00 UTC.
    """

    feature: str
    day: int
    first_seen: float | None = None    # earliest f event seen: the release when none configured
    active_users: int = 0              # Σ customer mau (users with any event in the window)
    feature_users: int = 0             # Σ distinct users of f in the window
    dau_sum: int = 0                   # Σ over window days since release of DAU_f(d)
    active_customers: int = 0          # customers with mau > 0
    feature_customers: int = 0         # customers with an f event in the window
    adopt_hist: dict[int, int] = field(default_factory=dict)  # adopt_bucket -> customers
    with_total: int = 0                # paying at T - W and used f before T - W
    with_kept: int = 0                 #   ... and paying at T
    without_total: int = 0             # paying at T - W, no f use before T - W
    without_kept: int = 0              #   ... and paying at T
    # (R, users of f, active users) in [R, R+30d), exact, for the release R the partition
    # knows; sent from the close after_release_fix_day(R) on while the partition can count it.
    after: tuple[float, int, int] | None = None
    # A release R the partition cannot count exactly (it dropped the events of day(R)): the
    # feature stage counts it by UTC days, and waits for this word (or exact counts for R)
    # from a partition that counted exactly for another release.
    no_after: float | None = None

    def add_customer(self, use: CustomerFeatures | None, *, mau: int,
                     released_at: float | None, signup_ts: float | None,
                     paid: PaidHistory | None,
                     retention_window_days: int = RETENTION_WINDOW_DAYS) -> None:
        """Add one customer of the partition (every customer, users of f or not).

        ``mau`` is the customer's ``ActivityWindow.figures(day, ...).mau`` and ``released_at``
        the release time of f this stage knows (configured, else first seen).
        """
        as_of = (self.day + 1) * DAY_SECONDS
        anchor = as_of - retention_window_days * DAY_SECONDS
        self.active_users += mau
        if mau > 0:
            self.active_customers += 1
        first = None
        if use is not None:
            since = None if released_at is None else day_of(released_at)
            users, dau_sum = use.window(self.feature, self.day, since)
            self.feature_users += users
            self.dau_sum += dau_sum
            if users:
                self.feature_customers += 1
            first = use.first_use(self.feature)
        if first is not None and first < as_of:
            if self.first_seen is None or first < self.first_seen:
                self.first_seen = first
            key = adopt_bucket(days_to_adopt(first, released_at, signup_ts))
            self.adopt_hist[key] = self.adopt_hist.get(key, 0) + 1
        if paid is not None and paid.paying_at(anchor):
            kept = int(paid.paying_at(as_of))
            if first is not None and first < anchor:
                self.with_total += 1
                self.with_kept += kept
            else:
                self.without_total += 1
                self.without_kept += kept

    def set_base(self, active_users: int, active_customers: int, paying: int, kept: int
                 ) -> None:
        """Fill the parts that do not depend on f, counted once for all features.

        A partition then calls ``add_customer`` (with ``mau=0``) only for the customers that
        ever used f: everyone else adds nothing but active users and the retention group
        "without", which is the paying-at-anchor total (``paying``, ``kept`` still paying)
        minus the "with" group.
        """
        self.active_users = active_users
        self.active_customers = active_customers
        self.without_total = paying - self.with_total
        self.without_kept = kept - self.with_kept

    def set_after_release(self, released_at: float, users: int, active: int) -> None:
        """The partition's exact counts of [R, R+30d) (``CustomerFeatures.after_release``
        summed over its eligible customers)."""
        self.after = (float(released_at), int(users), int(active))
        self.no_after = None

    def cannot_count_after(self, released_at: float) -> None:
        """The partition holds no longer the events of day(R) (FeatureBook falls back to day
        counts for it)."""
        self.after = None
        self.no_after = float(released_at)

    def merge(self, other: FeatureContribution) -> FeatureContribution:
        """Sum of two contributions (a new object); as of the older of the two days."""
        if other.feature != self.feature:
            raise ValueError(f"cannot merge feature {other.feature!r} into {self.feature!r}")
        hist = dict(self.adopt_hist)
        for key, n in other.adopt_hist.items():
            hist[key] = hist.get(key, 0) + n
        firsts = [t for t in (self.first_seen, other.first_seen) if t is not None]
        return replace(
            self, day=min(self.day, other.day), first_seen=min(firsts) if firsts else None,
            active_users=self.active_users + other.active_users,
            feature_users=self.feature_users + other.feature_users,
            dau_sum=self.dau_sum + other.dau_sum,
            active_customers=self.active_customers + other.active_customers,
            feature_customers=self.feature_customers + other.feature_customers,
            adopt_hist=hist,
            with_total=self.with_total + other.with_total,
            with_kept=self.with_kept + other.with_kept,
            without_total=self.without_total + other.without_total,
            without_kept=self.without_kept + other.without_kept,
            after=(self.after[0], self.after[1] + other.after[1], self.after[2] + other.after[2])
            if self.after is not None and other.after is not None
            and self.after[0] == other.after[0] else None,
            no_after=None,
        )

    def to_state(self) -> dict[str, Any]:
        """Plain JSON types (histogram as sorted [key, count] pairs: JSON keys are strings)."""
        return {"f": self.feature, "d": self.day, "fs": self.first_seen,
                "au": self.active_users, "fu": self.feature_users, "ds": self.dau_sum,
                "ac": self.active_customers, "fc": self.feature_customers,
                "h": [[k, n] for k, n in sorted(self.adopt_hist.items())],
                "r": [self.with_kept, self.with_total, self.without_kept, self.without_total],
                **({} if self.after is None else {"ar": list(self.after)}),
                **({} if self.no_after is None else {"na": self.no_after})}

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> FeatureContribution:
        wk, wt, nk, nt = (int(x) for x in data.get("r", (0, 0, 0, 0)))
        fs = data.get("fs")
        return cls(feature=str(data["f"]), day=int(data["d"]),
                   first_seen=None if fs is None else float(fs),
                   active_users=int(data.get("au", 0)), feature_users=int(data.get("fu", 0)),
                   dau_sum=int(data.get("ds", 0)), active_customers=int(data.get("ac", 0)),
                   feature_customers=int(data.get("fc", 0)),
                   adopt_hist={int(k): int(n) for k, n in data.get("h", ())},
                   with_total=wt, with_kept=wk, without_total=nt, without_kept=nk,
                   after=None if data.get("ar") is None else (
                       float(data["ar"][0]), int(data["ar"][1]), int(data["ar"][2])),
                   no_after=None if data.get("na") is None else float(data["na"]))


@dataclass
class SentContribution:
    """A partition's last contribution to a feature whose release was first seen (not
    configured), the release it was counted for, and what its release-dependent parts come
    from. Kept with the partition's clock until that release can no longer move earlier, so
    an earlier release learnt after a restart or a hand-over still recounts it exactly."""

    part: FeatureContribution
    release: float
    inputs: ReleaseInputs

    def to_state(self) -> list[Any]:
        return [self.part.to_state(), self.release, self.inputs.to_state()]

    @classmethod
    def from_state(cls, data: Sequence[Any]) -> SentContribution:
        part, release, inputs = data
        return cls(FeatureContribution.from_state(part), float(release),
                   ReleaseInputs.from_state(inputs))


def merge_all(parts: Iterable[FeatureContribution]) -> FeatureContribution | None:
    merged: FeatureContribution | None = None
    for part in parts:
        merged = part if merged is None else merged.merge(part)
    return merged


# --------------------------------------------------------------------------------------------
# Feature stage
# --------------------------------------------------------------------------------------------

# Window counts kept per partition for adoption_30d_after_release: enough days for the
# partitions' day closes to catch up with each other and with late release times.
HISTORY_DAYS = 40
# Days of eligible active users a customer partition keeps (and sends once per feature) so
# that a feature it learns of late still gets its after-release counts (FeatureBook.update).
BASE_HISTORY_DAYS = 120


class FeatureBook:
    """What the feature stage keeps for one feature: bounded by the number of partitions.

    ``update`` keeps the latest contribution of each partition (an older or repeated one is
    ignored, so a resend after a restart is harmless), the latest exact after-release counts
    each partition sent, and, per partition, the window counts (feature users, active users)
    of the last HISTORY_DAYS day closes. Once every partition has closed the day
    ``after_release_fix_day(R, lateness)``, the after-release counts are summed and kept for
    good.
    """

    __slots__ = ("feature", "parts", "history", "after_release", "after", "cannot", "by_days")

    def __init__(self, feature: str) -> None:
        self.feature = feature
        self.parts: dict[int, FeatureContribution] = {}
        self.history: dict[int, dict[int, tuple[int, int]]] = {}   # partition -> day -> counts
        self.after_release: tuple[float, int, int] | None = None   # (R, users, active), fixed
        self.after: dict[int, tuple[float, int, int, int]] = {}    # p -> (R, day, users, active)
        self.cannot: dict[int, float] = {}   # p -> the release it said it cannot count exactly
        self.by_days: tuple[int, ...] = ()   # partitions the fixed figure counted by UTC days

    def update(self, partition: int, part: FeatureContribution,
               base: Iterable[Iterable[int]] | None = None) -> bool:
        """Take a partition's contribution; False when it is older than the one held.

        Until ``adoption_30d_after_release`` is known, no window counts are pruned: partitions
        do not close days in step, one may be far ahead when the last one reports the day it
        needs, and a first-seen release can still move earlier. That history is two integers
        per partition and day; it is cut to HISTORY_DAYS once the figure is known.

        ``base``: the partition's eligible active users per closed day, sent with its first
        contribution for f. Days before the partition's first contribution are days it did
        not know f yet; it had no user of f then (its own first use of f would have told
        it), so they count as (0 users, active users). A partition can thus run a month
        ahead of the worker that saw f first and still count in the after-release figure.
        """
        if part.feature != self.feature:
            raise ValueError(f"contribution for {part.feature!r} sent to {self.feature!r}")
        held = self.parts.get(partition)
        if held is not None and part.day < held.day:
            return False
        self.parts[partition] = part
        if part.after is not None:
            self.after[partition] = (part.after[0], part.day, part.after[1], part.after[2])
        if part.no_after is not None:
            self.cannot[partition] = part.no_after
        days = self.history.setdefault(partition, {})
        days[part.day] = (part.feature_users, part.active_users)
        if self.after_release is not None:   # known for good: keep a short history only
            for d in [d for d in days if d <= part.day - HISTORY_DAYS]:
                del days[d]
        elif base:
            earliest = min(days)
            for day, active in base:
                if day < earliest:
                    days[int(day)] = (0, int(active))
        return True

    def merged(self) -> FeatureContribution | None:
        """Sum of the latest contribution of every partition, as of the oldest of them."""
        return merge_all(self.parts[p] for p in sorted(self.parts))

    def released_at(self, configured: float | None) -> float | None:
        """The configured release, else the first time any partition saw f."""
        if configured is not None:
            return configured
        firsts = [p.first_seen for p in self.parts.values() if p.first_seen is not None]
        return min(firsts) if firsts else None

    def after_release_counts(self, released_at: float | None, partitions: int | None = None,
                             lateness_days: float = 0.0) -> tuple[int, int] | None:
        """(users, active) in [R, R+30d), once every partition closed the day that fixes them.

        Per partition: its exact counts for this R sent at a close at or after
        ``after_release_fix_day(R, lateness)``. A partition that closed that day without
        sending them (it learnt of f only after it had dropped the events of day(R), and says
        so with ``no_after``; or sent nothing exact at all) counts with its window of the UTC
        days day(R) .. day(R)+29 (``after_release_day``), exact only for a release at
        midnight. One that counted exactly for another release is waited for.
        ``partitions``: the number of customer partitions; without it, "every partition" is
        every partition that has sent a contribution so far.
        """
        if released_at is None:
            return None
        if self.after_release is not None and self.after_release[0] == released_at:
            return self.after_release[1], self.after_release[2]
        if self.after_release is not None and self.after_release[0] < 0:
            # Fixed by day counts before exact windows existed, keyed -(day + 1): kept.
            if -self.after_release[0] - 1 == after_release_day(released_at):
                self.after_release = (float(released_at), *self.after_release[1:])
                return self.after_release[1], self.after_release[2]
        if not self.parts:
            return None
        expected = range(partitions) if partitions is not None else sorted(self.parts)
        target = after_release_fix_day(released_at, lateness_days)
        users = active = 0
        by_days = []
        for p in expected:
            part = self.parts.get(p)
            if part is None or part.day < target:
                return None                                  # not fixed on that partition yet
            exact = self.after.get(p)
            if exact is not None and exact[0] == released_at and exact[1] >= target:
                users += exact[2]
                active += exact[3]
                continue
            if part.after is not None:
                return None             # counted for another release time: wait for this one
            if exact is not None and self.cannot.get(p) != released_at:
                # Counted exactly for another release at an earlier close: it counts again
                # for this one (or says it cannot) once it learns of it; fixing the figure
                # by days before that made it depend on when the word came.
                return None
            counts = self.history.get(p, {}).get(after_release_day(released_at))
            if counts is None:
                return None
            users += counts[0]
            active += counts[1]
            by_days.append(p)
        self.after_release = (float(released_at), users, active)
        self.by_days = tuple(by_days)
        return users, active

    def to_state(self) -> dict[str, Any]:
        return {"f": self.feature,
                "p": [[p, c.to_state()] for p, c in sorted(self.parts.items())],
                "h": [[p, [[d, u, a] for d, (u, a) in sorted(days.items())]]
                      for p, days in sorted(self.history.items())],
                "ar": None if self.after_release is None else list(self.after_release),
                "ax": [[p, *a] for p, a in sorted(self.after.items())],
                **({"nx": [[p, r] for p, r in sorted(self.cannot.items())]}
                   if self.cannot else {}),
                **({"bd": list(self.by_days)} if self.by_days else {})}

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> FeatureBook:
        book = cls(str(data["f"]))
        book.parts = {int(p): FeatureContribution.from_state(c) for p, c in data.get("p", ())}
        book.history = {int(p): {int(d): (int(u), int(a)) for d, u, a in days}
                        for p, days in data.get("h", ())}
        ar = data.get("ar")
        book.after_release = None if ar is None else (float(ar[0]), int(ar[1]), int(ar[2]))
        if ar is not None and "ax" not in data:      # stored as (day, users, active)
            book.after_release = (-float(ar[0]) - 1, int(ar[1]), int(ar[2]))
        book.after = {int(p): (float(r), int(d), int(u), int(a))
                      for p, r, d, u, a in data.get("ax", ())}
        book.cannot = {int(p): float(r) for p, r in data.get("nx", ())}
        book.by_days = tuple(int(p) for p in data.get("bd", ()))
        return book


# --------------------------------------------------------------------------------------------
# Record
# --------------------------------------------------------------------------------------------

RECORD_KEYS: tuple[str, ...] = (
    "feature", "as_of", "released_at", "active_users_30d", "feature_users_30d",
    "adoption_rate", "customer_adoption_rate", "stickiness", "adoption_30d_after_release",
    "median_days_to_adopt", "retention_with", "retention_without", "retention_impact",
)


def _round(value: float | None, digits: int = RATIO_DIGITS) -> float | None:
    return None if value is None else round(value, digits)


def feature_record(feature: str, as_of: str, released_at: str | None,
                   merged: FeatureContribution, *, n_days: int,
                   after_release: float | None, min_group: int = MIN_GROUP) -> dict[str, Any]:
    """The ``vitals.feature`` record: exactly the CONTRACT keys, ratios to 4 places,
    stickiness to 6 and the median to 4 (docs/precision.md).

    ``as_of``/``released_at`` are already formatted (ISO 8601 UTC); ``n_days`` is
    ``stickiness_days(merged.day, R)`` and ``after_release`` the value of
    ``adoption_30d_after_release`` (None until R + 30d).
    """
    with_rate, without_rate, impact = retention_impact(
        merged.with_kept, merged.with_total, merged.without_kept, merged.without_total,
        min_group)
    median = median_from_histogram(merged.adopt_hist)
    return {
        "feature": feature,
        "as_of": as_of,
        "released_at": released_at,
        "active_users_30d": merged.active_users,
        "feature_users_30d": merged.feature_users,
        "adoption_rate": _round(adoption_rate(merged.feature_users, merged.active_users)),
        "customer_adoption_rate": _round(customer_adoption_rate(merged.feature_customers,
                                                                merged.active_customers)),
        "stickiness": _round(stickiness(merged.dau_sum, n_days, merged.feature_users),
                             STICKINESS_DIGITS),
        "adoption_30d_after_release": _round(after_release),
        "median_days_to_adopt": _round(median, DAYS_DIGITS),
        "retention_with": _round(with_rate),
        "retention_without": _round(without_rate),
        "retention_impact": _round(impact),
    }
