"""Seen event ids of one customer, stored in the customer's own record.

Keeping them beside the state they protect means one changelog write covers both: after a
crash, the restored record knows exactly which events it already contains, so replayed events
are recognised as duplicates and nothing is counted twice.
"""
from __future__ import annotations

import base64
import sys
from array import array
from bisect import bisect_left
from typing import Any

_LITTLE = sys.byteorder == "little"


def _contains(ids: array, h: int) -> bool:
    i = bisect_left(ids, h)
    return i < len(ids) and ids[i] == h


def _insert(ids: array, h: int) -> None:
    ids.insert(bisect_left(ids, h), h)


def _pack(ids: array) -> str:
    if not _LITTLE:  # pragma: no cover - stored little-endian whatever the host
        ids = array("Q", ids)
        ids.byteswap()
    return base64.b64encode(ids.tobytes()).decode()


def _unpack(text: str) -> array:
    ids = array("Q")
    ids.frombytes(base64.b64decode(text))
    if not _LITTLE:  # pragma: no cover
        ids.byteswap()
    return ids


class SeenIds:
    """64-bit id hashes: per event-time day for high-volume families, for life for the rest.

    Each group is a sorted array('Q'): 8 bytes an id instead of ~60 for a Python int in a set.
    """

    __slots__ = ("by_day", "lifetime")

    def __init__(self) -> None:
        self.by_day: dict[int, array] = {}
        self.lifetime: array = array("Q")

    def seen(self, h: int) -> bool:
        if _contains(self.lifetime, h):
            return True
        for ids in self.by_day.values():
            if _contains(ids, h):
                return True
        return False

    def add_windowed(self, h: int, day: int) -> None:
        ids = self.by_day.get(day)
        if ids is None:
            ids = self.by_day[day] = array("Q")
        _insert(ids, h)

    def add_lifetime(self, h: int) -> None:
        _insert(self.lifetime, h)

    def prune(self, oldest_day: int) -> None:
        """Forget windowed ids of days before oldest_day (beyond the dedup horizon)."""
        for day in [d for d in self.by_day if d < oldest_day]:
            del self.by_day[day]

    def __len__(self) -> int:
        return len(self.lifetime) + sum(len(ids) for ids in self.by_day.values())

    def to_dict(self) -> dict[str, Any]:
        return {"l": _pack(self.lifetime),
                "d": [[d, _pack(ids)] for d, ids in sorted(self.by_day.items())]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeenIds:
        seen = cls()
        seen.lifetime = _unpack(data.get("l", ""))
        seen.by_day = {int(d): _unpack(text) for d, text in data.get("d", ())}
        return seen
