"""Event time per partition: the watermark, day close, lateness and skew (METRICS.md "Time").

Faust's windowed tables expire by wall clock, which breaks replays; this clock only moves with
event time (and, in live mode, with the wall clock on purpose).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.activity import DAY_SECONDS, day_of
from models.features import SentContribution

OK = "accepted"
LATE = "late"
FUTURE = "future"
AHEAD = "ahead"
AHEAD_QUORUM = 2   # customers whose events must agree before the watermark jumps ahead
AHEAD_RUN = 4      # events ahead, one after the other, before it does
TOO_LATE = "too_late"


def rfc3339(ts: float) -> str:
    """Epoch seconds -> RFC 3339 UTC with a Z, whole seconds unless there is a fraction."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    if dt.microsecond:
        return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TimePolicy:
    lateness: float        # seconds
    dedup_horizon: float   # seconds
    max_skew: float        # seconds

    @classmethod
    def from_days(cls, lateness_days: float, dedup_horizon_days: float,
                  max_skew_days: float) -> TimePolicy:
        return cls(lateness_days * DAY_SECONDS, dedup_horizon_days * DAY_SECONDS,
                   max_skew_days * DAY_SECONDS)


class PartitionClock:
    """Watermark of one partition: the largest event time seen on it."""

    __slots__ = ("watermark", "closed_day", "features", "base", "ahead", "streak", "run_events",
                 "last_base", "read", "sent", "after_tried", "applied")

    def __init__(self, watermark: float | None = None, closed_day: int | None = None,
                 features: dict[str, float] | None = None,
                 base: dict[str, dict[int, int]] | None = None,
                 ahead: dict[str, float] | None = None,
                 streak: dict[str, float] | None = None, run_events: int = 0,
                 last_base: tuple[int, dict[str, list[int]]] | None = None) -> None:
        self.watermark = watermark
        self.closed_day = closed_day
        self.features: dict[str, float] = features or {}  # first time each feature was seen
        # Eligible active users of each closed day, per eligibility group (models/features.py
        # FeatureBook.update): what a feature learnt late needs for its after-release figure.
        self.base: dict[str, dict[int, int]] = base or {}
        # Customers holding events too far ahead of the watermark: earliest held time of each.
        self.ahead: dict[str, float] = ahead or {}
        # Customers whose events came ahead since the last event that was not, in arrival order
        # (earliest such time of each): a quiet gap jumped by the whole partition gives an
        # unbroken run of them, stray bad clocks are broken up by the good events around them.
        self.streak: dict[str, float] = streak or {}
        self.run_events = run_events   # events in that run
        # The last closed day's feature-independent counts per eligibility group (active users,
        # active customers, paying at the anchor, still paying): a feature learnt only after
        # that close is sent for it with no user here (streams/processor.py).
        self.last_base = last_base
        # The last input offset applied per input partition (topic, partition): an event the
        # ingest forwards again after a crash before its commit is recognised by it.
        self.read: dict[tuple[str, int], int] = {}
        # Per feature first seen (release not configured) whose release may still move
        # earlier: the last contribution sent for it and what it was counted from. Kept here,
        # not in the worker's memory, so the worker that restores the partition (after a
        # crash or a hand-over) recounts it for an earlier release learnt later.
        self.sent: dict[str, SentContribution] = {}
        # Per feature: the release whose after-release counts were last sent.
        self.after_tried: dict[str, float] = {}
        # The internal-topic offset of the last message applied: the clock holds everything
        # up to it (streams/processor.py CustomerProcessor.apply).
        self.applied: int | None = None

    def read_up_to(self, src: Any) -> bool:
        """Note the input position (topic, partition, offset) of an event; False when the
        partition was already read past it."""
        key = (src[0], src[1])
        last = self.read.get(key)
        if last is not None and src[2] <= last:
            return False
        self.read[key] = src[2]
        return True

    def quorum_time(self, customers: int) -> float | None:
        """The time the watermark may jump to: AHEAD_QUORUM customers sent events past it in
        one unbroken run of at least AHEAD_RUN events (or the partition's only customer, at
        once: nobody else to poison).

        After a genuine gap every event is ahead, so the run grows; wrong device clocks are
        single events between good ones, and two or three of them side by side (the ingest
        passes them on at once) are not yet a run.
        """
        need = max(1, min(AHEAD_QUORUM, customers))
        if len(self.streak) < need or (need > 1 and self.run_events < AHEAD_RUN):
            return None
        return sorted(self.streak.values())[-need]   # `need` customers are at or past it

    def classify(self, ts: float, windowed: bool, policy: TimePolicy,
                 now: float | None = None) -> str:
        """Where an event stands against the watermark; windowed families cannot be too old.

        The wall clock only bounds the future: an event more than the skew ahead of it is a
        clock error (FUTURE). An event more than the skew ahead of the partition's watermark
        but in the past is AHEAD: a replay may jump a quiet gap, or one device's clock is
        wrong, and a single event must not tell which (see CustomerProcessor._hold).
        """
        if now is not None and ts > now + policy.max_skew:
            return FUTURE
        wm = self.watermark
        if wm is None:
            return OK
        if ts > wm + policy.max_skew:
            return AHEAD
        if windowed and ts < wm - policy.dedup_horizon:
            return TOO_LATE
        if ts < wm - policy.lateness:
            return LATE
        return OK

    def advance(self, ts: float) -> bool:
        """Move the watermark forward; True when it entered a day not yet closed."""
        if self.watermark is not None and ts <= self.watermark:
            return False
        self.watermark = ts
        return self.closed_day is not None and day_of(ts) > self.closed_day

    def close_day(self) -> int:
        """Mark the watermark's day as the open one; returns it (= as-of day of the close)."""
        assert self.watermark is not None
        self.closed_day = day_of(self.watermark)
        return self.closed_day

    def start(self) -> None:
        """First event on a fresh partition: its day is the open day, nothing to close yet."""
        if self.closed_day is None and self.watermark is not None:
            self.closed_day = day_of(self.watermark)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "wm": self.watermark, "day": self.closed_day, "features": self.features,
            "base": {g: sorted(days.items()) for g, days in self.base.items()}}
        if self.ahead:
            out["ahead"] = self.ahead
        if self.streak:
            out["streak"] = self.streak
            out["run"] = self.run_events
        if self.last_base is not None:
            out["lb"] = [self.last_base[0], self.last_base[1]]
        if self.read:
            out["read"] = [[t, p, o] for (t, p), o in self.read.items()]
        if self.sent:
            out["sent"] = {f: s.to_state() for f, s in self.sent.items()}
        if self.after_tried:
            out["at"] = self.after_tried
        if self.applied is not None:
            out["off"] = self.applied
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartitionClock:
        base = {g: {int(d): int(n) for d, n in days}
                for g, days in (data.get("base") or {}).items()}
        lb = data.get("lb")
        last_base = None if not lb else (int(lb[0]), {g: [int(n) for n in counts]
                                                      for g, counts in lb[1].items()})
        clock = cls(data.get("wm"), data.get("day"), dict(data.get("features") or {}), base,
                    dict(data.get("ahead") or {}), dict(data.get("streak") or {}),
                    int(data.get("run") or 0), last_base)
        clock.read = {(str(t), int(p)): int(o) for t, p, o in data.get("read") or ()}
        clock.sent = {str(f): SentContribution.from_state(s)
                      for f, s in (data.get("sent") or {}).items()}
        clock.after_tried = {str(f): float(r) for f, r in (data.get("at") or {}).items()}
        applied = data.get("off")
        clock.applied = None if applied is None else int(applied)
        return clock
