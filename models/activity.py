"""Per-customer activity over event-time UTC days: DAU, WAU, MAU, active days, stickiness.

Users are interned to small integers and each day holds a bit mask of the users active on it:
DAU is a popcount, WAU/MAU the popcount of an OR, so 30 days of exact distinct users cost a few
hundred bytes instead of a set of strings per day.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DAY_SECONDS = 86400


def day_of(ts: float) -> int:
    """UTC day number (days since the Unix epoch)."""
    return int(ts // DAY_SECONDS)


def is_close(as_of: float) -> bool:
    """Whether as_of is a day close (a UTC midnight): a record of the complete day before it."""
    return as_of % DAY_SECONDS == 0


def last_day(as_of: float) -> int:
    """The last day D of every window of a record as of `as_of` ("last 30 days" = D-29 … D).

    A day close is stamped D+1 00:00 and covers the complete days ending with D: the day D+1
    has no events yet and is in no window. A record stamped inside a day (an in-day update at
    the watermark, an HTTP request) covers the days ending with that day itself, so far: its
    figures include the events of the current day up to as_of, and they meet the close's
    figures at the next midnight (the close of D is the in-day record of D at its end).
    """
    d = day_of(as_of)
    return d - 1 if is_close(as_of) else d


def window_days(as_of_day: int, first_day: int | None, window: int = 30) -> int:
    """n = min(window, D - first_day + 1): young customers are averaged over the days they had."""
    if first_day is None or first_day > as_of_day:
        return window
    return max(1, min(window, as_of_day - first_day + 1))


def stickiness(dau_sum: int, n: int, mau: int) -> float:
    """(mean DAU over the last n days) / MAU; 0 when nobody was active."""
    if mau == 0 or n <= 0:
        return 0.0
    return (dau_sum / n) / mau


@dataclass(frozen=True)
class ActivityFigures:
    dau: int
    wau: int
    mau: int
    active_days_30d: int
    stickiness: float

    def as_record(self) -> dict[str, Any]:
        return {"dau": self.dau, "wau": self.wau, "mau": self.mau,
                "active_days_30d": self.active_days_30d,
                "stickiness": round(self.stickiness, 6)}


def intern(users: list[str], index: dict[str, int], user_id: str) -> int:
    """The bit of user_id in day masks: its position in `users`, added on first sight."""
    i = index.get(user_id)
    if i is None:
        i = index[user_id] = len(users)
        users.append(user_id)
    return i


class ActivityWindow:
    """Users active per day for a sliding window of event-time days."""

    __slots__ = ("users", "masks", "_index")

    def __init__(self) -> None:
        self.users: list[str] = []
        self.masks: dict[int, int] = {}
        self._index: dict[str, int] = {}

    def record(self, day: int, user_id: str) -> bool:
        """Mark user active on day; True when that changed anything."""
        bit = 1 << intern(self.users, self._index, user_id)
        mask = self.masks.get(day, 0)
        if mask & bit:
            return False
        self.masks[day] = mask | bit
        return True

    def prune(self, oldest_day: int) -> None:
        """Forget days before oldest_day and the users only they referenced."""
        stale = [d for d in self.masks if d < oldest_day]
        if not stale:
            return
        for d in stale:
            del self.masks[d]
        union = 0
        for mask in self.masks.values():
            union |= mask
        if union.bit_count() == len(self.users):
            return
        remap: dict[int, int] = {}
        users: list[str] = []
        for old, user in enumerate(self.users):
            if union >> old & 1:
                remap[old] = len(users)
                users.append(user)
        for d, mask in self.masks.items():
            new = 0
            for old, new_index in remap.items():
                if mask >> old & 1:
                    new |= 1 << new_index
            self.masks[d] = new
        self.users = users
        self._index = {u: i for i, u in enumerate(users)}

    def figures(self, as_of_day: int, first_day: int | None, window: int = 30) -> ActivityFigures:
        """Figures as of day D over D-window+1 .. D (METRICS.md "Activity")."""
        lo_month = as_of_day - window + 1
        lo_week = as_of_day - 6
        n = window_days(as_of_day, first_day, window)
        lo_n = as_of_day - n + 1
        month = week = 0
        active_days = dau_sum = 0
        for d, mask in self.masks.items():
            if d > as_of_day or d < lo_month or not mask:
                continue
            month |= mask
            active_days += 1
            if d >= lo_week:
                week |= mask
            if d >= lo_n:
                dau_sum += mask.bit_count()
        mau = month.bit_count()
        return ActivityFigures(
            dau=self.masks.get(as_of_day, 0).bit_count(),
            wau=week.bit_count(),
            mau=mau,
            active_days_30d=active_days,
            stickiness=stickiness(dau_sum, n, mau),
        )

    def last_active_day(self) -> int | None:
        return max((d for d, m in self.masks.items() if m), default=None)

    def to_dict(self) -> dict[str, Any]:
        # Masks as hex: JSON integers stop at 64 bits, customers can have more users.
        return {"u": self.users, "m": [[d, format(m, "x")] for d, m in sorted(self.masks.items())]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActivityWindow:
        window = cls()
        window.users = list(data.get("u", ()))
        window._index = {u: i for i, u in enumerate(window.users)}
        window.masks = {int(d): int(m, 16) for d, m in data.get("m", ())}
        return window
