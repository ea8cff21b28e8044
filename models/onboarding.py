"""Onboarding milestones and time-to-value (METRICS.md, "Onboarding and time-to-value").

Pure domain math: stdlib only, no Faust/Kafka/Prometheus. Times are float epoch seconds,
days are integer days since the Unix epoch (UTC), weeks are ISO-week ordinals (see
`iso_week`).

Events may arrive in any order, late, or before the signup event. Every milestone is the
EARLIEST qualifying event time, so a late earlier event moves a milestone back; that makes
the state a monotone "min" structure and replaying events in any order gives the same result.

Bounded state (what `Onboarding` keeps besides five timestamps):

- ``days``: the earliest value-action ts of at most ``eureka_days`` distinct days — the
  smallest ones. Eureka is the first value ts of the K-th distinct day, and events can only
  add days or lower timestamps, so a day later than the K-th smallest can never matter again.
- ``weeks``: the earliest value-action ts per ISO week, at most ``max_weeks`` (26) of the
  newest, never any week after the current habit week (a later run completes later). Exact as
  long as value events are at most ``max_weeks - habit_weeks`` weeks late; the service
  dead-letters usage/feature events older than its 3-day dedup horizon, far inside that.
  `Onboarding.prune` tightens this further given the oldest ts that can still arrive.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DAY = 86400.0

STAGES: tuple[str, ...] = ("signed_up", "account_setup", "aha", "eureka", "habit")


def day_of(ts: float) -> int:
    """Day index of an epoch-seconds time, the one key every window in the project uses."""
    return int(ts // DAY)


def iso_week(day: int) -> int:
    """Ordinal of the ISO week (Monday-based) holding `day`.

    An ordinal rather than (year, week) so that consecutive weeks differ by one across ISO-year
    boundaries (2020-W53 → 2021-W01). Day 0 (1970-01-01) is a Thursday, so Mondays are the days
    with (day + 3) % 7 == 0.
    """
    return (day + 3) // 7


def rfc3339(ts: float | None) -> str | None:
    """RFC 3339 UTC text as the CONTRACT prints times ("2026-03-01T12:00:00Z").

    Milliseconds are kept only when the time has a fraction, so whole-second times stay short.
    """
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, tz=UTC)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class MilestoneParams:
    """The `[milestones]` settings; collections are frozen so params can be shared safely."""

    account_setup_usage: Collection[str] = frozenset({"email_confirmed", "onboarding_completed"})
    account_setup_billing: Collection[str] = frozenset({"subscription_started"})
    value_actions: Collection[str] = frozenset(
        {"report_created", "message_sent", "integration_connected"}
    )
    feature_events_are_value: bool = True
    eureka_days: int = 3
    habit_weeks: int = 4
    success_days: int = 90
    max_weeks: int = 26

    def __post_init__(self) -> None:
        # Settings hand over lists; membership tests want sets.
        for name in ("account_setup_usage", "account_setup_billing", "value_actions"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))
        if self.eureka_days < 1 or self.habit_weeks < 1:
            raise ValueError("eureka_days and habit_weeks must be >= 1")
        if self.max_weeks < self.habit_weeks:
            raise ValueError("max_weeks must be >= habit_weeks")


def ttv_days(signed_up: float | None, aha: float | None) -> float | None:
    """Time to value in days; null until both ends are known (usage may precede the signup).

    An aha stamped before the signup (trial usage recorded before the account) counts as
    zero: a negative time-to-value means nothing and would skew medians and histograms.
    """
    if signed_up is None or aha is None:
        return None
    return max(0.0, (aha - signed_up) / DAY)


def stage(
    signed_up: float | None,
    account_setup: float | None = None,
    aha: float | None = None,
    eureka: float | None = None,
    habit: float | None = None,
) -> str | None:
    """Furthest funnel step reached, by funnel order (not by time); None before signup.

    Funnel order because steps can be skipped (a value action without the setup actions) and
    the furthest step is what tells how far the customer got.
    """
    if signed_up is None:
        return None
    reached = (signed_up, account_setup, aha, eureka, habit)
    for name, ts in zip(reversed(STAGES), reversed(reached), strict=True):
        if ts is not None:
            return name
    return "signed_up"  # unreachable: signed_up is set


def succeeded(signed_up: float | None, eureka: float | None, success_days: int = 90) -> bool:
    """Seed question 38: did the customer reach eureka within `success_days` of signup?

    "Within" is inclusive and measured in exact time: eureka at signup + 90 days succeeds,
    one second later does not.
    """
    if signed_up is None or eureka is None:
        return False
    return eureka - signed_up <= success_days * DAY


def success_eligible(signed_up: float | None, as_of: float, success_days: int = 90) -> bool:
    """Whether the customer belongs in `success_rate_90d`'s denominator at `as_of`.

    Only customers whose whole success window has elapsed count, or young customers would
    drag the rate down before they had their chance.
    """
    return signed_up is not None and as_of - signed_up >= success_days * DAY


def _min(a: float | None, b: float) -> float:
    return b if a is None or b < a else a


@dataclass
class Onboarding:
    """Per-customer milestone state, safe for out-of-order and pre-signup events.

    The `on_*` methods return True when a milestone or the kept evidence changed, so the
    caller knows whether the customer record needs re-emitting.
    """

    signed_up: float | None = None
    account_setup: float | None = None
    aha: float | None = None
    eureka: float | None = None
    habit: float | None = None
    days: dict[int, float] = field(default_factory=dict)
    weeks: dict[int, float] = field(default_factory=dict)
    params: MilestoneParams = field(default_factory=MilestoneParams, compare=False, repr=False)

    # ---- events -------------------------------------------------------------------------

    def on_signup(self, ts: float) -> bool:
        """Record the signup; the earliest wins if the signup is ever resent."""
        new = _min(self.signed_up, ts)
        changed = new != self.signed_up
        self.signed_up = new
        return changed

    def on_usage(self, action: str, ts: float) -> bool:
        """A usage event: may be an account-setup action and/or a value action."""
        changed = False
        if action in self.params.account_setup_usage:
            changed |= self._setup(ts)
        if action in self.params.value_actions:
            changed |= self._value(ts)
        return changed

    def on_feature(self, ts: float) -> bool:
        """A feature event: a value action when `feature_events_are_value`."""
        return self._value(ts) if self.params.feature_events_are_value else False

    def on_billing(self, type_: str, ts: float) -> bool:
        """A billing event: `subscription_started` (by default) completes the account setup."""
        if type_ in self.params.account_setup_billing:
            return self._setup(ts)
        return False

    def _setup(self, ts: float) -> bool:
        new = _min(self.account_setup, ts)
        changed = new != self.account_setup
        self.account_setup = new
        return changed

    def _value(self, ts: float) -> bool:
        aha = _min(self.aha, ts)
        changed = aha != self.aha
        self.aha = aha
        changed |= self._value_day(day_of(ts), ts)
        changed |= self._value_week(iso_week(day_of(ts)), ts)
        return changed

    def _value_day(self, day: int, ts: float) -> bool:
        k = self.params.eureka_days
        if self.eureka is not None:
            if len(self.days) < k:
                return False  # pruned: eureka is final
            if day > day_of(self.eureka):
                return False  # a later day can never be among the K earliest
        old = self.days.get(day)
        if old is not None and old <= ts:
            return False
        self.days[day] = ts
        while len(self.days) > k:
            del self.days[max(self.days)]
        if len(self.days) >= k:
            self.eureka = self.days[max(self.days)]
        return True

    def _value_week(self, week: int, ts: float) -> bool:
        h = self.params.habit_weeks
        if self.habit is not None and week > iso_week(day_of(self.habit)):
            return False  # a run ending later completes later
        old = self.weeks.get(week)
        if old is not None and old <= ts:
            return False
        self.weeks[week] = ts
        # Runs of h consecutive weeks that contain `week`: each completes at the first value
        # ts of its last week (weeks are time-ordered, so that one is the latest).
        for end in range(week, week + h):
            if all((end - i) in self.weeks for i in range(h)):
                self.habit = _min(self.habit, self.weeks[end])
        if self.habit is not None:
            hw = iso_week(day_of(self.habit))
            for w in [w for w in self.weeks if w > hw]:
                del self.weeks[w]
        if len(self.weeks) > self.params.max_weeks:
            for w in sorted(self.weeks)[: len(self.weeks) - self.params.max_weeks]:
                del self.weeks[w]
        return True

    def prune(self, frozen_ts: float) -> None:
        """Drop evidence that can no longer change a milestone.

        `frozen_ts`: no value event older than this will be applied any more (e.g. watermark
        minus the dedup horizon). A new value event lies in week >= iso_week(frozen), so it can
        only complete a run starting at iso_week(frozen) - habit_weeks + 1 or later; once
        frozen_ts passes eureka / habit, those are final and their evidence goes entirely.
        """
        if self.eureka is not None and frozen_ts >= self.eureka:
            self.days.clear()
        if self.habit is not None and frozen_ts >= self.habit:
            self.weeks.clear()
            return
        first = iso_week(day_of(frozen_ts)) - self.params.habit_weeks + 1
        for w in [w for w in self.weeks if w < first]:
            del self.weeks[w]

    # ---- views --------------------------------------------------------------------------

    def ttv_days(self) -> float | None:
        """Time to value of this customer (see module function `ttv_days`)."""
        return ttv_days(self.signed_up, self.aha)

    def stage(self) -> str | None:
        """Furthest milestone of this customer (see module function `stage`)."""
        return stage(self.signed_up, self.account_setup, self.aha, self.eureka, self.habit)

    def succeeded(self) -> bool:
        """Whether eureka came within `success_days` of signup."""
        return succeeded(self.signed_up, self.eureka, self.params.success_days)

    def to_record(self, ndigits: int = 4) -> dict[str, Any]:
        """The CONTRACT's `onboarding` object; ttv rounded to `ndigits` (4 ≈ 9 seconds)."""
        ttv = self.ttv_days()
        return {
            "signed_up": rfc3339(self.signed_up),
            "account_setup": rfc3339(self.account_setup),
            "aha": rfc3339(self.aha),
            "eureka": rfc3339(self.eureka),
            "habit": rfc3339(self.habit),
            "ttv_days": None if ttv is None else round(ttv, ndigits),
            "stage": self.stage(),
        }

    # ---- persistence --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-friendly form for the changelog: short keys, absent values omitted.

        Keys: s signed_up, u account_setup, a aha, e eureka, h habit, d [[day, ts], ...]
        (value days), w [[iso_week_ordinal, ts], ...] (value weeks).
        """
        out: dict[str, Any] = {}
        for key, value in (
            ("s", self.signed_up),
            ("u", self.account_setup),
            ("a", self.aha),
            ("e", self.eureka),
            ("h", self.habit),
        ):
            if value is not None:
                out[key] = value
        if self.days:
            out["d"] = [[d, t] for d, t in sorted(self.days.items())]
        if self.weeks:
            out["w"] = [[w, t] for w, t in sorted(self.weeks.items())]
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], params: MilestoneParams | None = None
    ) -> Onboarding:
        """Inverse of `to_dict`; params are configuration, not state, so they come separately."""
        return cls(
            signed_up=data.get("s"),
            account_setup=data.get("u"),
            aha=data.get("a"),
            eureka=data.get("e"),
            habit=data.get("h"),
            days={int(d): float(t) for d, t in data.get("d", ())},
            weeks={int(w): float(t) for w, t in data.get("w", ())},
            params=params or MilestoneParams(),
        )
