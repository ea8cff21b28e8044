"""streams.churn: the raw figures of a day-close snapshot and the usage baseline."""
from __future__ import annotations

import orjson
import pytest

from models.activity import DAY_SECONDS
from models.churn import snapshot_vector
from streams.churn import BASELINE_DAYS, BASELINE_LAG, ChurnTrack, raw_figures
from streams.state import CustomerState

D = 20513  # as-of day of the day close (2026-03-01 00:00 UTC)


def customer(active: dict[int, int]) -> CustomerState:
    """A customer with `active[d]` users active on day d."""
    state = CustomerState("c-1")
    state.signup_ts = float((D - 100) * DAY_SECONDS)
    for d, n in active.items():
        for u in range(n):
            state.activity.record(d, f"u{u}")
    return state


def test_activity_windows_are_the_full_days_before_the_as_of_day() -> None:
    # 2 users a day over days D-28 .. D-8, 1 a day over the last 7 full days, and an early
    # event of day D itself (the day has only begun: not part of any window).
    active = {D - k: 2 for k in range(8, 29)} | {D - k: 1 for k in range(1, 8)} | {D: 3}
    raw = raw_figures(customer(active), {}, D)
    assert raw["active_days_7d"] == 7 and raw["active_days_prev_7d"] == 7
    assert raw["active_user_days_7d"] == 7
    assert raw["active_user_days_28d"] == 7 + 2 * 21
    assert raw["dau"] == 1  # yesterday's active users
    assert raw["days_since_activity"] == 0  # the event of day D
    vec = snapshot_vector(raw)
    assert vec["usage_7d_vs_28d"] == pytest.approx(1.0 / (49 / 28))


def test_usage_baseline_takes_each_lagged_day_once() -> None:
    active = {D - k: 4 for k in range(1, 30)}
    state = customer(active)
    track = ChurnTrack()
    assert track.baseline_mean() is None
    track.remember_usage(state, D - 10)   # day D-18: 4 users
    track.remember_usage(state, D - 10)   # the same day close again: nothing changes
    assert track.usage == [4.0, 1.0, float(D - 10 - BASELINE_LAG)]
    for day in range(D - 9, D + 1):
        track.remember_usage(state, day)
    assert track.baseline_mean() == 4.0 and track.usage[1] == 11.0
    # a quiet day pulls the mean down by 1/n while young, by 1/BASELINE_DAYS once old
    state.activity.masks[D + 1 - BASELINE_LAG] = 0
    track.remember_usage(state, D + 1)
    assert track.baseline_mean() == pytest.approx(4.0 - 4.0 / 12, abs=1e-4)  # kept to 4 decimals
    back = ChurnTrack.from_dict(orjson.loads(orjson.dumps(track.to_dict())))
    assert back.usage == track.usage
    assert ChurnTrack.from_dict({}).usage == [] and "u" not in ChurnTrack().to_dict()
    assert BASELINE_DAYS >= 30


def test_no_baseline_before_the_first_active_day() -> None:
    track = ChurnTrack()
    track.remember_usage(customer({}), D)
    assert track.baseline_mean() is None
