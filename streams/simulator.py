"""Seeded generator of realistic synthetic SaaS events for the five input topics.

Why a pure generator: the demo, the replay files, the benchmarks and the tests all need the same
believable history (segments, onboarding, trials, expansions, payment trouble, support spikes,
churners whose usage fades before they cancel), and they need it reproducibly. This module does
no I/O and knows nothing of Kafka or Faust; callers decide where the events go.

Guarantees:

- Same ``SimConfig`` -> byte-identical output (every random draw comes from ``random.Random``
  instances seeded from ``SimConfig.seed``; nothing depends on hash salting or wall time).
- Events are yielded in non-decreasing event time. Valid events are ``dict``; malformed ones
  (only when ``bad_fraction > 0``) are ``bytes`` - the raw value a broken producer would send.
- Lazy: time is simulated day by day and a day's events are released as soon as the day is
  done, so memory grows with the number of customers, not with the simulated period.
- Extra events (malformed ones, duplicates) are drawn from their own random streams, so turning
  ``bad_fraction`` or ``duplicate_fraction`` on leaves the valid events unchanged.

JSONL format (written by ``to_jsonl_line``, read back by ``from_jsonl_line``): one
JSON object per line.

- A valid event is the event object itself with one extra field first, ``"family"`` (one of
  ``signup``, ``usage``, ``feature``, ``billing``, ``support``), naming the topic it belongs on:
  ``{"family":"usage","event_id":"c-0001-7","customer_id":"c-0001","ts":"…","user_id":…}``.
  A replayer drops ``family`` before producing.
- A malformed event is ``{"family": <family>, "raw": <the raw value as text>}``; a replayer
  sends ``raw`` verbatim (UTF-8) as the message value. Values that are not UTF-8 are written as
  ``{"family": <family>, "raw_base64": <base64>}`` instead (the simulator itself only produces
  UTF-8 garbage, so ``raw`` is what you will see).
"""

from __future__ import annotations

import base64
import calendar
import heapq
import math
import random
from bisect import bisect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import accumulate
from typing import Any

import orjson

FAMILIES: tuple[str, ...] = ("signup", "usage", "feature", "billing", "support")
SEGMENTS: tuple[str, ...] = ("enterprise", "mid_market", "smb", "solo")
VALUE_ACTIONS: tuple[str, ...] = ("report_created", "message_sent", "integration_connected")
# Every class of bad input from CONTRACT.md section 1, one name each.
BAD_KINDS: tuple[str, ...] = (
    "not_json",
    "not_object",
    "missing_event_id",
    "missing_field",
    "missing_user_id",
    "unknown_type",
    "unknown_segment",
    "bad_ts",
    "ill_typed",
    "out_of_range",
    "future_ts",
)

DAY = 86_400
HOUR = 3_600
MINUTE = 60


@dataclass(frozen=True)
class SegmentProfile:
    """How one customer segment behaves; ranges are inclusive (lo, hi) draws."""

    seat_slack: tuple[float, float]        # seats = users * slack (rounded up)
    mrr: tuple[float, float]
    cac_months: tuple[float, float]        # CAC as a multiple of the monthly price
    plans: tuple[str, ...]
    channels: tuple[tuple[str, float], ...]
    daily_active: float                    # base chance that a joined user is active on a weekday
    weekend_factor: float
    rollout_days: int                      # users beyond the first join within this many days
    aha_days: tuple[int, int]              # delay from signup to first value action
    never_aha: float                       # share that never reaches a value action
    pay_probability: float                 # share of customers that reach aha and then pay
    ticket_rate: float                     # tickets per weekday for a healthy paying customer
    expansion_probability: float           # chance of one expansion over a quarter of tenure
    contraction_probability: float
    aha_actions: tuple[tuple[str, float], ...]


SEGMENT_PROFILES: dict[str, SegmentProfile] = {
    "enterprise": SegmentProfile(
        seat_slack=(1.1, 1.4), mrr=(2000.0, 8000.0), cac_months=(3.0, 6.0),
        plans=("enterprise",),
        channels=(("outbound_sales", 0.6), ("partner", 0.25), ("events", 0.15)),
        daily_active=0.55, weekend_factor=0.2, rollout_days=35, aha_days=(7, 56),
        never_aha=0.08, pay_probability=0.9, ticket_rate=0.12,
        expansion_probability=0.45, contraction_probability=0.12,
        aha_actions=(("integration_connected", 0.5), ("report_created", 0.5)),
    ),
    "mid_market": SegmentProfile(
        seat_slack=(1.05, 1.3), mrr=(500.0, 1500.0), cac_months=(2.5, 5.0),
        plans=("business", "business_plus"),
        channels=(("inbound", 0.45), ("outbound_sales", 0.35), ("partner", 0.2)),
        daily_active=0.55, weekend_factor=0.2, rollout_days=21, aha_days=(2, 21),
        never_aha=0.1, pay_probability=0.85, ticket_rate=0.06,
        expansion_probability=0.35, contraction_probability=0.1,
        aha_actions=(("report_created", 0.5), ("integration_connected", 0.3),
                     ("message_sent", 0.2)),
    ),
    "smb": SegmentProfile(
        seat_slack=(1.0, 1.5), mrr=(50.0, 300.0), cac_months=(2.0, 4.0),
        plans=("team", "pro"),
        channels=(("organic", 0.4), ("paid_search", 0.35), ("referral", 0.25)),
        daily_active=0.6, weekend_factor=0.3, rollout_days=10, aha_days=(0, 7),
        never_aha=0.12, pay_probability=0.75, ticket_rate=0.025,
        expansion_probability=0.2, contraction_probability=0.08,
        aha_actions=(("report_created", 0.4), ("message_sent", 0.6)),
    ),
    "solo": SegmentProfile(
        seat_slack=(1.0, 1.0), mrr=(10.0, 30.0), cac_months=(1.5, 3.0),
        plans=("starter", "personal"),
        channels=(("organic", 0.5), ("paid_social", 0.3), ("referral", 0.2)),
        daily_active=0.65, weekend_factor=0.45, rollout_days=0, aha_days=(0, 3),
        never_aha=0.18, pay_probability=0.65, ticket_rate=0.01,
        expansion_probability=0.1, contraction_probability=0.05,
        aha_actions=(("message_sent", 0.6), ("report_created", 0.4)),
    ),
}

DEFAULT_SEGMENT_MIX: dict[str, float] = {
    "enterprise": 0.10, "mid_market": 0.20, "smb": 0.45, "solo": 0.25,
}
DEFAULT_USERS_PER_CUSTOMER: dict[str, tuple[int, int]] = {
    "enterprise": (20, 60), "mid_market": (8, 20), "smb": (2, 8), "solo": (1, 1),
}
DEFAULT_FEATURES: tuple[str, ...] = (
    "reports", "dashboards", "integrations", "alerts_center", "exports", "sso",
)
DEFAULT_FEATURE_RELEASE_DAY: dict[str, int] = {
    "reports": 0, "dashboards": 0, "integrations": 0, "exports": 0,
    "alerts_center": 45, "sso": 60,
}
# Relative use per session among the features a customer has adopted.
FEATURE_POPULARITY: dict[str, float] = {
    "reports": 1.0, "dashboards": 0.8, "integrations": 0.3,
    "alerts_center": 0.35, "exports": 0.25, "sso": 0.15,
}
# Share of customers that ever adopt a feature; sso is an enterprise thing.
FEATURE_ADOPTION: dict[str, float] = {
    "reports": 0.85, "dashboards": 0.75, "integrations": 0.45,
    "alerts_center": 0.5, "exports": 0.4, "sso": 0.3,
}
SSO_ADOPTION_BY_SEGMENT: dict[str, float] = {
    "enterprise": 0.7, "mid_market": 0.3, "smb": 0.05, "solo": 0.0,
}
UNKNOWN_FEATURE_POPULARITY = 0.3
UNKNOWN_FEATURE_ADOPTION = 0.4
# An "unadopted" feature still gets a trickle (so the service can discover that it exists),
# far below any adoption alert threshold.
UNADOPTED_CUSTOMER_SHARE = 0.02
UNADOPTED_POPULARITY_FACTOR = 0.05

_ACTIONS_BEFORE_AHA: tuple[tuple[str, float], ...] = (
    ("dashboard_viewed", 30), ("search", 20), ("help_viewed", 20),
    ("settings_changed", 10), ("invite_sent", 10), ("template_browsed", 10),
)
_ACTIONS_AFTER_AHA: tuple[tuple[str, float], ...] = (
    ("report_viewed", 22), ("dashboard_viewed", 20), ("message_sent", 12), ("search", 12),
    ("report_created", 10), ("comment_added", 8), ("export_downloaded", 5),
    ("file_uploaded", 4), ("settings_changed", 3), ("integration_connected", 1),
)
_PRIORITIES: tuple[tuple[str, float], ...] = (
    ("low", 0.3), ("normal", 0.5), ("high", 0.15), ("urgent", 0.05),
)
_PRIORITIES_UNHAPPY: tuple[tuple[str, float], ...] = (
    ("low", 0.15), ("normal", 0.45), ("high", 0.28), ("urgent", 0.12),
)
_PRIORITIES_SPIKE: tuple[tuple[str, float], ...] = (
    ("normal", 0.25), ("high", 0.45), ("urgent", 0.3),
)
# Hours to close a ticket by priority (uniform range).
_CLOSE_HOURS: dict[str, tuple[float, float]] = {
    "urgent": (0.5, 8.0), "high": (2.0, 24.0), "normal": (4.0, 72.0), "low": (12.0, 120.0),
}
_CSAT_HAPPY = (3, 5, 12, 35, 45)            # weights for scores 1..5
_CSAT_UNHAPPY = (18, 22, 28, 20, 12)
_NPS_HAPPY = (1, 1, 1, 2, 2, 4, 6, 12, 20, 25, 26)   # weights for scores 0..10
_NPS_UNHAPPY = (6, 6, 8, 10, 12, 14, 14, 12, 8, 5, 5)


def _cum(pairs: tuple[tuple[str, float], ...]) -> tuple[list[str], list[float]]:
    """Split (name, weight) pairs into the (population, cum_weights) that rng.choices wants."""
    return [name for name, _ in pairs], list(accumulate(weight for _, weight in pairs))


_BEFORE_AHA_POP, _BEFORE_AHA_CUM = _cum(_ACTIONS_BEFORE_AHA)
_AFTER_AHA_POP, _AFTER_AHA_CUM = _cum(_ACTIONS_AFTER_AHA)
_PRIO_POP, _PRIO_CUM = _cum(_PRIORITIES)
_PRIO_UNHAPPY_POP, _PRIO_UNHAPPY_CUM = _cum(_PRIORITIES_UNHAPPY)
_PRIO_SPIKE_POP, _PRIO_SPIKE_CUM = _cum(_PRIORITIES_SPIKE)


def _default_start() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes a simulated history; the same config always yields the same events.

    Simulated day ``d`` covers ``[start + d days, start + d+1 days)``; use a UTC-midnight
    ``start`` so that simulated days are the service's UTC days.
    """

    seed: int = 7
    customers: int = 200                      # customers signing up over the period
    start: datetime = field(default_factory=_default_start)
    days: int = 90
    features: tuple[str, ...] = DEFAULT_FEATURES
    # Day offset at which each feature becomes available (missing features: day 0).
    feature_release_day: dict[str, int] = field(
        default_factory=lambda: dict(DEFAULT_FEATURE_RELEASE_DAY)
    )
    # Released features that (almost) nobody uses: ~2 % of customers, rarely.
    unadopted_features: tuple[str, ...] = ()
    churn_fraction: float = 0.12              # share of paying customers who cancel in the period
    reactivation_fraction: float = 0.2        # share of churners who later subscribe again
    bad_fraction: float = 0.0                 # extra malformed events per valid event
    duplicate_fraction: float = 0.0           # valid events sent twice with the same event_id
    epoch_ts_fraction: float = 0.02           # valid events whose ts is epoch seconds
    track_fraction: float = 0.02              # usage/feature events in Segment `track` form
    segment_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SEGMENT_MIX))
    users_per_customer: dict[str, tuple[int, int]] = field(
        default_factory=lambda: dict(DEFAULT_USERS_PER_CUSTOMER)
    )
    signup_span: float = 0.8                  # signups happen in the first 80 % of the period
    currency: str | None = "USD"              # put on billing events; None leaves it out

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError("SimConfig.start must be timezone-aware")
        object.__setattr__(
            self, "start", self.start.astimezone(UTC).replace(microsecond=0)
        )
        if self.days < 1:
            raise ValueError("SimConfig.days must be >= 1")
        if self.customers < 0:
            raise ValueError("SimConfig.customers must be >= 0")
        for name in (
            "churn_fraction", "reactivation_fraction", "bad_fraction", "duplicate_fraction",
            "epoch_ts_fraction", "track_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SimConfig.{name} must be within [0, 1], got {value}")
        if not 0.0 < self.signup_span <= 1.0:
            raise ValueError("SimConfig.signup_span must be within (0, 1]")
        unknown = set(self.segment_mix) - set(SEGMENTS)
        if unknown:
            raise ValueError(f"SimConfig.segment_mix has unknown segments {sorted(unknown)}")
        if sum(self.segment_mix.values()) <= 0 or min(self.segment_mix.values()) < 0:
            raise ValueError("SimConfig.segment_mix weights must be >= 0 and not all 0")
        for segment, (low, high) in self.users_per_customer.items():
            if not 1 <= low <= high:
                raise ValueError(f"SimConfig.users_per_customer[{segment!r}] must be 1 <= lo <= hi")
        if not set(self.unadopted_features) <= set(self.features):
            raise ValueError("SimConfig.unadopted_features must be listed in features")


# --------------------------------------------------------------------------------------------
# time helpers


@lru_cache(maxsize=4096)
def _day_prefix(epoch_day: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=epoch_day)).strftime("%Y-%m-%dT")


_HH_MM = [f"{minute // 60:02d}:{minute % 60:02d}:" for minute in range(1440)]
_SS_Z = [f"{second:02d}Z" for second in range(60)]


def _rfc3339(epoch: int) -> str:
    """Format epoch seconds as RFC 3339 UTC with 'Z' (table lookups: this runs once per event)."""
    days, seconds = divmod(epoch, DAY)
    minutes, secs = divmod(seconds, MINUTE)
    return _day_prefix(days) + _HH_MM[minutes] + _SS_Z[secs]


def _add_months(anchor: date, months: int) -> date:
    """Same day of month ``months`` later, clamped to the month's end (billing anniversaries)."""
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    return date(year, month, min(anchor.day, calendar.monthrange(year, month)[1]))


def _clip(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


# --------------------------------------------------------------------------------------------
# per-customer plan and state


class _Customer:
    """One account: its plan (decided up front) and its running state (advanced day by day)."""

    __slots__ = (
        "index", "customer_id", "segment", "profile", "plan", "seats", "mrr", "cac", "channel",
        "signup_day", "signup_ts", "users", "user_join_day", "user_propensity", "user_hour",
        "user_left", "engagement", "aha_day", "aha_reached", "aha_action", "pay_day",
        "active_until_day", "cancel_day", "decline_start_day", "reactivate_day",
        "trouble_payment", "trouble_failures", "changes", "spike_day", "feature_adopt_day",
        "event_n", "ticket_n", "paying", "billing_anchor", "payment_k",
        "next_payment_day", "retry_day", "retries_failing", "retry_amount", "finished",
    )
    # Set once by the planner (see _Simulation); declared here for the type checker.
    index: int
    customer_id: str
    segment: str
    profile: SegmentProfile
    plan: str
    seats: int
    mrr: float
    cac: float
    channel: str
    signup_day: int
    signup_ts: int
    users: list[str]
    user_join_day: list[int]
    user_propensity: list[float]
    user_hour: list[float]
    engagement: float
    aha_day: int | None
    aha_action: str
    pay_day: int | None
    active_until_day: int | None
    feature_adopt_day: dict[str, int]


    def __init__(self) -> None:
        self.event_n = 0
        self.ticket_n = 0
        self.aha_reached = False
        self.paying = False
        self.billing_anchor: date | None = None
        self.payment_k = 0
        self.next_payment_day: int | None = None
        self.retry_day: int | None = None
        self.retries_failing = 0
        self.retry_amount = 0.0
        self.finished = False
        self.cancel_day: int | None = None
        self.decline_start_day: int | None = None
        self.reactivate_day: int | None = None
        self.trouble_payment: int | None = None
        self.trouble_failures = 0
        self.changes: list[tuple[int, str]] = []
        self.spike_day: int | None = None
        self.user_left: list[int | None] = []

    def unhappy(self, day: int) -> bool:
        """True while the customer is heading for churn or never found value."""
        declining = self.decline_start_day is not None and self.decline_start_day <= day
        return declining or self.aha_day is None


class _Simulation:
    """Plans all customers, then walks the days, releasing each finished day in time order."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        seed = cfg.seed
        # Separate streams: the valid history never depends on the extra-event knobs.
        self.plan_rng = random.Random(f"plan:{seed}")
        self.day_rng = random.Random(f"days:{seed}")
        self.variant_rng = random.Random(f"variant:{seed}")
        self.bad_rng = random.Random(f"bad:{seed}")
        self.dup_rng = random.Random(f"dup:{seed}")
        self.start_epoch = int(cfg.start.timestamp())
        self.start_date = cfg.start.date()
        self.end_epoch = self.start_epoch + cfg.days * DAY
        # Events of the day being simulated (sorted once when the day is done) and events
        # scheduled for later days (ticket closes, refunds, a session running past midnight).
        self.today: list[tuple[int, int, str, dict | bytes]] = []
        self.later: list[tuple[int, int, str, dict | bytes]] = []
        self.day_end = self.start_epoch
        self.seq = 0
        self.variant_random = self.variant_rng.random
        self.track_fraction = cfg.track_fraction
        self.epoch_ts_fraction = cfg.epoch_ts_fraction
        self.duplicate_fraction = cfg.duplicate_fraction
        self.bad_fraction = cfg.bad_fraction
        self.bad_n = 0
        self.release_day = {f: cfg.feature_release_day.get(f, 0) for f in cfg.features}
        self.popularity = {
            f: FEATURE_POPULARITY.get(f, UNKNOWN_FEATURE_POPULARITY)
            * (UNADOPTED_POPULARITY_FACTOR if f in cfg.unadopted_features else 1.0)
            for f in cfg.features
        }

    # ---------------------------------------------------------------- planning

    def plan_customers(self) -> list[_Customer]:
        """Decide every customer's story up front (small objects; the events come lazily)."""
        cfg, rng = self.cfg, self.plan_rng
        segments = [s for s in SEGMENTS if cfg.segment_mix.get(s, 0.0) > 0]
        seg_cum = list(accumulate(cfg.segment_mix[s] for s in segments))
        signup_last_day = max(1, int(cfg.days * cfg.signup_span))
        width = max(4, len(str(cfg.customers)))
        customers = []
        for index in range(cfg.customers):
            c = _Customer()
            c.index = index
            c.customer_id = f"c-{index + 1:0{width}d}"
            c.segment = rng.choices(segments, cum_weights=seg_cum)[0]
            profile = c.profile = SEGMENT_PROFILES[c.segment]
            # Front-loaded signups (more early on), leaving most customers months of history.
            c.signup_day = min(signup_last_day - 1, int(signup_last_day * rng.random() ** 1.3))
            c.signup_ts = (
                self.start_epoch + c.signup_day * DAY
                + int(_clip(rng.gauss(13 * HOUR, 3 * HOUR), 6 * HOUR, 22 * HOUR))
            )
            low, high = cfg.users_per_customer.get(c.segment, DEFAULT_USERS_PER_CUSTOMER[c.segment])
            n_users = rng.randint(low, high)
            c.seats = max(1, math.ceil(n_users * rng.uniform(*profile.seat_slack)))
            c.plan = rng.choice(profile.plans)
            price = rng.uniform(*profile.mrr)
            c.mrr = round(price, 0) if price >= 100 else round(price, 2)
            c.cac = round(c.mrr * rng.uniform(*profile.cac_months), 2)
            names, weights = zip(*profile.channels, strict=True)
            c.channel = rng.choices(names, weights=weights)[0]
            c.users = []
            c.user_join_day = []
            c.user_propensity = []
            c.user_hour = []
            for _ in range(n_users):
                self._add_user(c, c.signup_day if not c.users else
                               c.signup_day + rng.randint(0, profile.rollout_days), rng)
            c.engagement = rng.uniform(0.55, 1.35)
            aha_names, aha_weights = zip(*profile.aha_actions, strict=True)
            c.aha_action = rng.choices(aha_names, weights=aha_weights)[0]
            if rng.random() < profile.never_aha:
                c.aha_day = None
                c.engagement *= 0.6
            else:
                delay = rng.randint(*profile.aha_days)
                if c.segment in ("smb", "solo") and rng.random() < 0.05:
                    delay = rng.randint(31, 50)     # slow starters that trip ttv_exceeded
                c.aha_day = c.signup_day + delay
            pays = rng.random() < profile.pay_probability * (1.0 if c.aha_day is not None else 0.2)
            if pays:
                c.pay_day = c.signup_day + (
                    rng.randint(1, 14) if rng.random() < 0.78 else rng.randint(15, 40)
                )
                c.active_until_day = None
            else:
                c.pay_day = None
                c.active_until_day = c.signup_day + 14 + rng.randint(0, 7)
            c.spike_day = (
                c.signup_day + rng.randint(7, 80) if rng.random() < 0.06 else None
            )
            c.feature_adopt_day = self._plan_features(c, rng)
            customers.append(c)
        self._plan_churn(customers, rng)
        self._plan_billing(customers, rng)
        customers.sort(key=lambda c: (c.signup_ts, c.index))
        return customers

    def _add_user(self, c: _Customer, join_day: int, rng: random.Random) -> None:
        c.users.append(f"{c.customer_id}-u{len(c.users) + 1:02d}")
        c.user_join_day.append(join_day)
        # Power users and occasional users: activity propensity around 1 (0.3 .. 1.6).
        c.user_propensity.append(0.3 + 1.3 * rng.betavariate(2.0, 2.0))
        c.user_hour.append(_clip(rng.gauss(11.5, 2.5), 5.0, 20.0))
        c.user_left.append(None)

    def _plan_features(self, c: _Customer, rng: random.Random) -> dict[str, int]:
        """Day from which the customer uses each feature it will adopt (after aha and release)."""
        adopt: dict[str, int] = {}
        for feature in self.cfg.features:
            if feature in self.cfg.unadopted_features:
                chance = UNADOPTED_CUSTOMER_SHARE
            elif feature == "sso":
                chance = SSO_ADOPTION_BY_SEGMENT[c.segment]
            else:
                chance = FEATURE_ADOPTION.get(feature, UNKNOWN_FEATURE_ADOPTION)
            if rng.random() < chance and c.aha_day is not None:
                base = max(c.aha_day, self.release_day[feature])
                adopt[feature] = base + int(rng.expovariate(1 / 8.0))
        return adopt

    def _plan_churn(self, customers: list[_Customer], rng: random.Random) -> None:
        """Pick churners among payers with room for a decline; weaker accounts churn more."""
        cfg = self.cfg
        payers = [c for c in customers if c.pay_day is not None and c.pay_day < cfg.days]
        eligible = [c for c in payers if c.pay_day is not None and c.pay_day + 35 <= cfg.days - 1]
        n_churn = min(len(eligible), round(cfg.churn_fraction * len(payers)))
        if n_churn <= 0:
            return

        def weight(c: _Customer) -> float:
            return (3.0 if c.aha_day is None else 1.0) * max(0.2, 1.6 - c.engagement)

        # Weighted sampling without replacement (Efraimidis-Spirakis keys).
        keyed = sorted(eligible, key=lambda c: (-(rng.random() ** (1.0 / weight(c))), c.index))
        for c in keyed[:n_churn]:
            assert c.pay_day is not None            # eligible customers are payers
            c.cancel_day = rng.randint(c.pay_day + 35, cfg.days - 1)
            decline = rng.randint(14, 42)
            c.decline_start_day = max(c.pay_day + 7, c.cancel_day - decline)
            if rng.random() < cfg.reactivation_fraction:
                back = c.cancel_day + rng.randint(10, 45)
                c.reactivate_day = back if back < cfg.days else None

    def _plan_billing(self, customers: list[_Customer], rng: random.Random) -> None:
        """Expansions, contractions and payment trouble for payers."""
        for c in customers:
            if c.pay_day is None:
                continue
            profile = c.profile
            horizon = self.cfg.days if c.cancel_day is None else c.decline_start_day
            assert horizon is not None              # planned together with cancel_day
            span = horizon - (c.pay_day + 14)
            if span > 0:
                scale = min(2.0, span / 90.0)
                for _ in range(2):
                    if rng.random() < profile.expansion_probability * scale:
                        c.changes.append((c.pay_day + 14 + rng.randrange(span), "expansion"))
                if rng.random() < profile.contraction_probability * scale:
                    c.changes.append((c.pay_day + 14 + rng.randrange(span), "contraction"))
            if c.cancel_day is not None and rng.random() < 0.3:
                assert c.decline_start_day is not None  # planned together with cancel_day
                day = rng.randint(c.decline_start_day, c.cancel_day - 1)
                c.changes.append((day, "contraction"))
            c.changes.sort()
            if rng.random() < (0.2 if c.cancel_day is not None else 0.07):
                c.trouble_payment = rng.randint(1, 3)
                c.trouble_failures = rng.choice((1, 2, 2, 3, 3))

    # ---------------------------------------------------------------- emitting

    def emit(self, c: _Customer, ts: int, family: str, fields: dict) -> None:
        """Build one valid event, maybe in a variant form, and queue it (plus any extras)."""
        if ts >= self.end_epoch:
            return                                   # beyond the simulated period
        c.event_n += 1
        event_id = f"{c.customer_id}-{c.event_n}"
        event: dict
        if (
            self.track_fraction
            and (family == "usage" or family == "feature")
            and "quantity" not in fields
            and self.variant_random() < self.track_fraction
        ):
            event = {
                "type": "track",
                "event": fields["action"] if family == "usage" else fields["feature"],
                "userId": fields["user_id"],
                "timestamp": _rfc3339(ts),
                "messageId": event_id,
                "context": {"groupId": c.customer_id},
                "properties": {},
            }
        else:
            if self.epoch_ts_fraction and self.variant_random() < self.epoch_ts_fraction:
                ts_value: str | int = ts
            else:
                ts_value = _rfc3339(ts)
            event = {"event_id": event_id, "customer_id": c.customer_id, "ts": ts_value}
            event.update(fields)
        self.push(ts, family, event)
        if self.duplicate_fraction and self.dup_rng.random() < self.duplicate_fraction:
            # A producer retry: the identical message again, right behind the original.
            self.push(ts, family, _copy_event(event))
        if self.bad_fraction and self.bad_rng.random() < self.bad_fraction:
            bad_family, raw = self.malformed(family, c, ts, fields.get("user_id"))
            self.push(ts, bad_family, raw)

    def push(self, ts: int, family: str, value: dict | bytes) -> None:
        """Queue for release: today's events in a list sorted once, later ones in a heap."""
        entry = (ts, self.seq, family, value)
        self.seq += 1
        if ts < self.day_end:
            self.today.append(entry)
        else:
            heapq.heappush(self.later, entry)

    def malformed(
        self, family: str, c: _Customer, ts: int, user_id: str | None
    ) -> tuple[str, bytes]:
        """One broken message of a random BAD_KINDS class, as the raw bytes a producer sends."""
        rng = self.bad_rng
        self.bad_n += 1
        kind = rng.choice(BAD_KINDS)
        if kind == "missing_user_id":
            family = rng.choice(("usage", "feature"))
        elif kind == "unknown_type":
            family = rng.choice(("billing", "support"))
        elif kind == "unknown_segment":
            family = "signup"
        user = user_id or c.users[0]
        base = _template(family, f"bad-{self.bad_n:06d}", c.customer_id, _rfc3339(ts), user, c)
        if kind in ("not_json", "not_object"):
            return family, _unparseable(rng, kind, base, c)
        _break_field(rng, kind, family, base, ts)
        return family, orjson.dumps(base)

    # ---------------------------------------------------------------- the daily walk

    def run(self) -> Iterator[tuple[str, dict | bytes]]:
        customers = deque(self.plan_customers())
        live: list[_Customer] = []
        for day in range(self.cfg.days):
            day_start = self.start_epoch + day * DAY
            self.day_end = day_start + DAY
            later, today = self.later, self.today
            while later and later[0][0] < self.day_end:
                today.append(heapq.heappop(later))
            while customers and customers[0].signup_day == day:
                live.append(customers.popleft())
            weekend = (self.start_date + timedelta(days=day)).weekday() >= 5
            for c in live:
                self.customer_day(c, day, day_start, weekend)
            if any(c.finished for c in live):
                live = [c for c in live if not c.finished]
            today.sort()                             # (ts, seq) is unique: never compares values
            self.today = []
            for _, _, family, value in today:
                yield family, value
        # Anything still in `later` lies beyond the period (emit() never queues it anyway).

    def customer_day(self, c: _Customer, day: int, day_start: int, weekend: bool) -> None:
        """Everything one customer does on one simulated day."""
        rng = self.day_rng
        if day == c.signup_day:
            self.signup(c, rng)
        self.billing(c, day, day_start, rng)
        factor = self.activity_factor(c, day, weekend)
        if factor > 0.0:
            self.usage(c, day, day_start, factor, rng)
            self.support(c, day, day_start, weekend, rng)
        elif self.is_done(c, day):
            c.finished = True

    def is_done(self, c: _Customer, day: int) -> bool:
        """No more events will ever come from this customer (lets the walk skip it)."""
        if c.active_until_day is not None and day > c.active_until_day:
            return True
        return (
            c.cancel_day is not None and day >= c.cancel_day and c.reactivate_day is None
            and c.retry_day is None
        )

    def activity_factor(self, c: _Customer, day: int, weekend: bool) -> float:
        """Multiplier on usage and tickets: weekends, trial fade-out, churn decline, churned."""
        factor = c.profile.weekend_factor if weekend else 1.0
        if c.active_until_day is not None:               # trial that will not convert
            if day > c.active_until_day:
                return 0.0
            fade_from = c.signup_day + 7
            if day > fade_from:
                factor *= 1.0 - 0.8 * (day - fade_from) / max(1, c.active_until_day - fade_from)
        if c.cancel_day is not None:
            if c.reactivate_day is not None and day >= c.reactivate_day:
                return factor * 0.8
            if day >= c.cancel_day:
                return 0.0
            assert c.decline_start_day is not None  # planned together with cancel_day
            if day >= c.decline_start_day:
                span = c.cancel_day - c.decline_start_day
                factor *= 0.1 + 0.9 * (c.cancel_day - day) / span
        return factor

    def signup(self, c: _Customer, rng: random.Random) -> None:
        self.emit(c, c.signup_ts, "signup", {
            "segment": c.segment, "plan": c.plan, "seats": c.seats, "cac": c.cac,
            "channel": c.channel, "user_id": c.users[0],
        })
        owner = c.users[0]
        if rng.random() < 0.92:
            self.emit(c, c.signup_ts + rng.randint(60, 2 * HOUR), "usage",
                      {"user_id": owner, "action": "email_confirmed"})
        if rng.random() < 0.8:
            delay_hours = rng.uniform(0.2, 24.0 if c.segment in ("smb", "solo") else 96.0)
            self.emit(c, c.signup_ts + 2 * HOUR + int(delay_hours * HOUR), "usage",
                      {"user_id": owner, "action": "onboarding_completed"})

    def usage(self, c: _Customer, day: int, day_start: int, factor: float,
              rng: random.Random) -> None:
        """Sessions of the customer's active users: a login, a few actions, some features.

        The hot loop of the simulator, hence the local bindings and the inline draws
        (``lo + int(random() * n)`` instead of ``randint``, ``bisect`` instead of ``choices``).
        """
        random_ = rng.random
        emit = self.emit
        base = c.profile.daily_active * c.engagement * factor
        features = self.available_features(c, day)
        on_signup_day = day == c.signup_day
        sessions: list[tuple[int, int]] = []
        for k in range(len(c.users)):
            if c.user_join_day[k] > day:
                continue
            left = c.user_left[k]
            if left is not None and left <= day:
                continue
            if random_() >= min(0.97, base * c.user_propensity[k]):
                continue
            if on_signup_day:
                if k:
                    continue
                t = c.signup_ts + 5 * MINUTE + int(random_() * 3 * HOUR)
            else:
                hour = _clip(c.user_hour[k] + rng.gauss(0.0, 1.5), 0.0, 22.5)
                t = day_start + int(hour * HOUR)
            sessions.append((t, k))
        if not c.aha_reached:
            sessions.sort()                  # so that the aha is the day's first value action
        for t, k in sessions:
            user = c.users[k]
            emit(c, t, "usage", {"user_id": user, "action": "login"})
            n_actions = 1 + (random_() < 0.6) + (random_() < 0.3) + (random_() < 0.1)
            for _ in range(n_actions):
                t += 30 + int(random_() * 15 * MINUTE)
                if c.aha_reached:
                    action = _AFTER_AHA_POP[bisect(_AFTER_AHA_CUM, random_() * _AFTER_AHA_CUM[-1])]
                elif c.aha_day is not None and day >= c.aha_day:
                    action = c.aha_action                   # the customer's first value action
                    c.aha_reached = True
                else:
                    action = _BEFORE_AHA_POP[
                        bisect(_BEFORE_AHA_CUM, random_() * _BEFORE_AHA_CUM[-1])
                    ]
                fields: dict = {"user_id": user, "action": action}
                if (action == "message_sent" or action == "file_uploaded") and random_() < 0.3:
                    fields["quantity"] = 2 + int(random_() * 11)
                emit(c, t, "usage", fields)
            if c.aha_reached and features:
                names, cum = features
                roll = random_()
                for _ in range(2 if roll < 0.2 else 1 if roll < 0.6 else 0):
                    t += 20 + int(random_() * 10 * MINUTE)
                    feature = names[bisect(cum, random_() * cum[-1])]
                    emit(c, t, "feature", {"user_id": user, "feature": feature})

    def available_features(self, c: _Customer, day: int) -> tuple[list[str], list[float]] | None:
        names = [f for f, start in c.feature_adopt_day.items() if start <= day]
        if not names:
            return None
        return names, list(accumulate(self.popularity[f] for f in names))

    def billing(self, c: _Customer, day: int, day_start: int, rng: random.Random) -> None:
        """Subscription lifecycle and monthly payments on the billing anniversary."""
        at = day_start + int(_clip(rng.gauss(11 * HOUR, 3 * HOUR), HOUR, 22 * HOUR))
        if day == c.pay_day or (c.reactivate_day is not None and day == c.reactivate_day):
            if day == c.reactivate_day:
                c.mrr = round(c.mrr * rng.uniform(0.7, 1.0), 2)
            c.paying = True
            self.emit(c, at, "billing", self.money(
                {"type": "subscription_started", "mrr": c.mrr, "seats": c.seats, "plan": c.plan}))
            c.billing_anchor = self.start_date + timedelta(days=day)
            c.payment_k = 0
            c.next_payment_day = day
            c.retry_day = None
            at += 5
        while c.changes and c.changes[0][0] <= day:
            _, kind = c.changes.pop(0)
            if c.paying:
                self.change_subscription(c, kind, day, at, rng)
                at += 5
        if c.paying and c.cancel_day == day:
            c.paying = False
            c.next_payment_day = None
            c.retry_day = None
            self.emit(c, at, "billing", self.money({"type": "subscription_cancelled", "mrr": 0.0}))
            if rng.random() < 0.25:
                amount = round(c.mrr * rng.choice((0.25, 0.5, 1.0)), 2)
                self.emit(c, at + rng.randint(HOUR, 3 * DAY), "billing",
                          self.money({"type": "refund", "amount": amount}))
            return
        if c.paying and c.next_payment_day == day:
            c.payment_k += 1
            assert c.billing_anchor is not None     # set when the customer starts paying
            c.next_payment_day = (
                _add_months(c.billing_anchor, c.payment_k) - self.start_date
            ).days
            failures = 0
            if c.trouble_payment == c.payment_k:
                failures = c.trouble_failures
            elif rng.random() < 0.02:
                failures = 1
            if failures:
                self.emit(c, at, "billing", self.money({"type": "payment_failed", "amount": c.mrr}))
                c.retry_day, c.retries_failing, c.retry_amount = day + 3, failures - 1, c.mrr
            else:
                self.payment_succeeded(c, at, c.mrr, rng)
        elif c.paying and c.retry_day == day:
            if c.retries_failing > 0:
                self.emit(c, at, "billing",
                          self.money({"type": "payment_failed", "amount": c.retry_amount}))
                c.retries_failing -= 1
                c.retry_day = day + 3
            else:
                c.retry_day = None
                self.payment_succeeded(c, at, c.retry_amount, rng)

    def payment_succeeded(self, c: _Customer, at: int, amount: float, rng: random.Random) -> None:
        self.emit(c, at, "billing", self.money({"type": "payment_succeeded", "amount": amount}))
        if rng.random() < 0.02:
            refund = round(amount * rng.choice((0.25, 0.5, 1.0)), 2)
            self.emit(c, at + rng.randint(DAY, 10 * DAY), "billing",
                      self.money({"type": "refund", "amount": refund}))

    def change_subscription(self, c: _Customer, kind: str, day: int, at: int,
                            rng: random.Random) -> None:
        """Seats (or, for one-seat accounts, the plan) go up or down, and MRR with them."""
        if kind == "expansion":
            if c.seats > 1:
                added = max(1, round(c.seats * rng.uniform(0.1, 0.4)))
                new_mrr = round(c.mrr * (c.seats + added) / c.seats, 2)
                c.seats += added
                for _ in range(max(1, int(added * 0.8))):
                    self._add_user(c, day + rng.randint(0, 10), rng)
            else:
                new_mrr = round(c.mrr * rng.uniform(1.5, 2.5), 2)
                c.plan = "pro" if c.segment == "solo" else c.plan
        else:
            if c.seats > 1:
                removed = min(c.seats - 1, max(1, round(c.seats * rng.uniform(0.1, 0.3))))
                new_mrr = round(c.mrr * (c.seats - removed) / c.seats, 2)
                c.seats -= removed
                active = [k for k, left in enumerate(c.user_left) if left is None]
                for k in active[c.seats:]:
                    c.user_left[k] = day
            else:
                new_mrr = round(c.mrr * 0.6, 2)
        c.mrr = max(0.01, new_mrr)
        self.emit(c, at, "billing", self.money(
            {"type": "subscription_changed", "mrr": c.mrr, "seats": c.seats, "plan": c.plan}))

    def money(self, fields: dict) -> dict:
        if self.cfg.currency is not None:
            fields["currency"] = self.cfg.currency
        return fields

    def support(self, c: _Customer, day: int, day_start: int, weekend: bool,
                rng: random.Random) -> None:
        """Tickets (more when unhappy, bursts on a spike day), CSAT after closes, NPS at times."""
        if day == c.signup_day:
            return
        unhappy = c.unhappy(day)
        rate = c.profile.ticket_rate * (0.3 if weekend else 1.0)
        if day - c.signup_day < 14:
            rate *= 1.5                                  # onboarding questions
        if unhappy:
            rate *= 3.0
        n = 1 if rng.random() < rate else 0
        if rate > 1.0:
            n += int(rate)
        for _ in range(n):
            pop, cum = (_PRIO_UNHAPPY_POP, _PRIO_UNHAPPY_CUM) if unhappy else (_PRIO_POP, _PRIO_CUM)
            priority = rng.choices(pop, cum_weights=cum)[0]
            t = day_start + int(_clip(rng.gauss(13 * HOUR, 3.5 * HOUR), 0, 23 * HOUR))
            self.ticket(c, t, priority, unhappy, rng)
        if c.spike_day == day:
            t = day_start + int(rng.uniform(8, 14) * HOUR)
            for _ in range(rng.randint(6, 15)):
                t += rng.randint(2 * MINUTE, 25 * MINUTE)
                priority = rng.choices(_PRIO_SPIKE_POP, cum_weights=_PRIO_SPIKE_CUM)[0]
                self.ticket(c, t, priority, True, rng)
        if day - c.signup_day >= 14 and rng.random() < 1 / 60:
            weights = _NPS_UNHAPPY if unhappy else _NPS_HAPPY
            score = rng.choices(range(11), weights=weights)[0]
            self.emit(c, day_start + int(rng.uniform(8, 20) * HOUR), "support",
                      {"type": "nps", "score": score, "user_id": rng.choice(c.users)})

    def ticket(self, c: _Customer, t: int, priority: str, unhappy: bool,
               rng: random.Random) -> None:
        c.ticket_n += 1
        ticket_id = f"{c.customer_id}-t{c.ticket_n:03d}"
        user = rng.choice(c.users)
        self.emit(c, t, "support",
                  {"type": "ticket_opened", "ticket_id": ticket_id, "priority": priority,
                   "user_id": user})
        closed = t + int(rng.uniform(*_CLOSE_HOURS[priority]) * HOUR)
        self.emit(c, closed, "support",
                  {"type": "ticket_closed", "ticket_id": ticket_id, "priority": priority,
                   "user_id": user})
        if rng.random() < 0.35:
            score = rng.choices(range(1, 6), weights=_CSAT_UNHAPPY if unhappy else _CSAT_HAPPY)[0]
            self.emit(c, closed + rng.randint(10 * MINUTE, DAY), "support",
                      {"type": "csat", "score": score, "ticket_id": ticket_id, "user_id": user})


# --------------------------------------------------------------------------------------------
# malformed-event helpers


def _template(family: str, event_id: str, customer_id: str, ts: str, user: str,
              c: _Customer) -> dict:
    """A valid-looking event of ``family``, the starting point for one malformation."""
    base: dict = {"event_id": event_id, "customer_id": customer_id, "ts": ts}
    if family == "signup":
        base.update(segment=c.segment, plan=c.plan, seats=c.seats, cac=c.cac)
    elif family == "usage":
        base.update(user_id=user, action="login")
    elif family == "feature":
        base.update(user_id=user, feature="reports")
    elif family == "billing":
        base.update(type="subscription_changed", mrr=c.mrr, seats=c.seats)
    else:
        base.update(type="csat", score=4, user_id=user)
    return base


_FAMILY_REQUIRED = {
    "signup": lambda base: ["segment"],
    "usage": lambda base: ["action", "user_id"],
    "feature": lambda base: ["feature", "user_id"],
    "billing": lambda base: ["type", "mrr"],
    "support": lambda base: ["type", "score"],
}


def _ill_typed_options(family: str, base: dict) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [("event_id", 12345), ("ts", [2026, 3, 1])]
    by_family: dict[str, list[tuple[str, object]]] = {
        "signup": [("seats", "ten"), ("cac", "800"), ("segment", 3)],
        "usage": [("quantity", "3"), ("user_id", 42), ("action", ["login"])],
        "feature": [("feature", 7), ("user_id", {"id": "u1"})],
        "billing": [("mrr", f"{base.get('mrr', 499.0):.2f}"), ("seats", "many")],
        "support": [("score", "5"), ("user_id", 7)],
    }
    options += by_family[family]
    return options


def _out_of_range_options(family: str, base: dict) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [("event_id", ""), ("event_id", "x" * 200)]
    by_family: dict[str, list[tuple[str, object]]] = {
        "signup": [("seats", 0), ("cac", -100.0)],
        "usage": [("quantity", -1)],
        "feature": [],
        "billing": [("mrr", -50.0)],
        "support": [("score", 0), ("score", 6)],
    }
    options += by_family[family]
    return options


def _copy_event(event: dict) -> dict:
    """Independent copy, so a consumer mutating one delivery cannot alter the other."""
    copy = dict(event)
    for key, value in copy.items():
        if isinstance(value, dict):
            copy[key] = dict(value)
    return copy


def _unparseable(rng: random.Random, kind: str, base: dict[str, Any], c: _Customer) -> bytes:
    """Bytes that are no JSON object: truncated JSON, HTML, a form, a repr, or another value."""
    if kind == "not_object":
        return rng.choice((orjson.dumps([base]), orjson.dumps(base["event_id"]), b"null", b"42"))
    choice = rng.randrange(4)
    if choice == 0:
        text = orjson.dumps(base)
        return text[: len(text) - rng.randint(1, min(12, len(text) - 1))]
    if choice == 1:
        return b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    if choice == 2:
        return f"event_id={base['event_id']}&customer_id={c.customer_id}".encode()
    return repr(base).encode()          # Python repr: single quotes


def _break_field(rng: random.Random, kind: str, family: str, base: dict[str, Any],
                 ts: int) -> None:
    """Break one field of a well-formed event the way `kind` names."""
    if kind == "missing_event_id":
        del base["event_id"]
    elif kind == "missing_field":
        required = ["customer_id", "ts", *_FAMILY_REQUIRED[family](base)]
        del base[rng.choice(required)]
    elif kind == "missing_user_id":
        del base["user_id"]
    elif kind == "unknown_type":
        base["type"] = rng.choice(
            ("subscription_paused", "invoice_created", "trial_extended")
            if family == "billing" else ("ticket_escalated", "survey_sent", "chat_started")
        )
    elif kind == "unknown_segment":
        base["segment"] = rng.choice(("government", "startup", "nonprofit", "unknown"))
    elif kind == "bad_ts":
        base["ts"] = rng.choice(
            ("2026-13-45T99:00:00Z", "not a timestamp", "", "03/01/2026 12:00", "yesterday")
        )
    elif kind == "ill_typed":
        field_name, value = rng.choice(_ill_typed_options(family, base))
        base[field_name] = value
    elif kind == "out_of_range":
        field_name, value = rng.choice(_out_of_range_options(family, base))
        base[field_name] = value
    elif kind == "future_ts":
        base["ts"] = _rfc3339(ts + rng.randint(3, 60) * DAY)


# --------------------------------------------------------------------------------------------
# public API


def config_from_args(args: Any) -> SimConfig:
    """The config of the `simulate` and `demo` commands' options (an argparse Namespace)."""
    fields: dict[str, Any] = {"seed": args.seed, "customers": args.customers, "days": args.days,
                              "bad_fraction": args.bad_fraction,
                              "duplicate_fraction": args.duplicate_fraction}
    if args.start:
        fields["start"] = datetime.fromisoformat(args.start).astimezone(UTC)
    return SimConfig(**fields)


def generate(cfg: SimConfig) -> Iterator[tuple[str, dict | bytes]]:
    """Yield (family, event) in non-decreasing event time.

    family is one of signup/usage/feature/billing/support.

    Valid events are dicts shaped as in CONTRACT.md section 1; malformed events (when
    ``bad_fraction > 0``) are yielded as ``(family, bytes)``, the raw value to send as is.
    Lazy: a simulated year of thousands of customers streams in bounded memory.
    """
    return _Simulation(cfg).run()


def to_jsonl_line(family: str, event: dict | bytes) -> bytes:
    """One JSONL line (with trailing newline) for a replay file; see the module docstring."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    if isinstance(event, dict):
        return orjson.dumps({"family": family, **event}) + b"\n"
    try:
        record = {"family": family, "raw": event.decode("utf-8")}
    except UnicodeDecodeError:
        record = {"family": family, "raw_base64": base64.b64encode(event).decode("ascii")}
    return orjson.dumps(record) + b"\n"


def from_jsonl_line(line: bytes | str) -> tuple[str, dict | bytes]:
    """Inverse of ``to_jsonl_line``: (family, event dict) or (family, raw bytes to send as is)."""
    record = orjson.loads(line)
    if not isinstance(record, dict) or not isinstance(record.get("family"), str):
        raise ValueError("a simulator JSONL line is an object with a string 'family'")
    family = record.pop("family")
    if set(record) == {"raw"} and isinstance(record["raw"], str):
        return family, record["raw"].encode("utf-8")
    if set(record) == {"raw_base64"} and isinstance(record["raw_base64"], str):
        return family, base64.b64decode(record["raw_base64"])
    return family, record
