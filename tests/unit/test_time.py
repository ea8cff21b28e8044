"""Event time (METRICS.md "Time"): classify boundaries, watermark, day close, RFC 3339."""

from __future__ import annotations

import orjson
import pytest

from streams.time import (
    AHEAD,
    FUTURE,
    LATE,
    OK,
    TOO_LATE,
    PartitionClock,
    TimePolicy,
    rfc3339,
)

DAY = 86400.0
H = 3600.0
D = 20513                      # 2026-03-01
W = D * DAY + 12 * H           # watermark: 2026-03-01T12:00:00Z
POLICY = TimePolicy.from_days(2, 3, 1)  # lateness 2 d, dedup horizon 3 d, skew 1 d


def test_policy_from_days() -> None:
    assert POLICY == TimePolicy(lateness=2 * DAY, dedup_horizon=3 * DAY, max_skew=1 * DAY)
    assert TimePolicy.from_days(0.5, 1, 0.25).max_skew == 6 * H


def test_no_watermark_accepts_anything() -> None:
    clock = PartitionClock()
    for ts in (0.0, W, W + 1000 * DAY):
        assert clock.classify(ts, True, POLICY) == OK
        assert clock.classify(ts, False, POLICY) == OK


@pytest.mark.parametrize("windowed", [True, False])
@pytest.mark.parametrize("ts, expected", [
    (W, OK),
    (W + 1 * DAY, OK),               # exactly the skew ahead: still accepted
    (W + 1 * DAY + 1, AHEAD),        # a second beyond the skew: held until corroborated
    (W + 30 * DAY, AHEAD),
    (W - 1, OK),
    (W - 2 * DAY, OK),               # exactly the lateness behind: on time
    (W - 2 * DAY - 1, LATE),         # a second later than the lateness
    (W - 3 * DAY, LATE),             # exactly the dedup horizon behind: still checkable
])
def test_classify_common_boundaries(ts: float, expected: str, windowed: bool) -> None:
    assert PartitionClock(W).classify(ts, windowed, POLICY) == expected


def test_classify_too_late_only_for_windowed_families() -> None:
    clock = PartitionClock(W)
    beyond = W - 3 * DAY - 1                 # a second beyond the dedup horizon
    assert clock.classify(beyond, True, POLICY) == TOO_LATE   # usage / feature
    assert clock.classify(beyond, False, POLICY) == LATE      # ids kept for life: checkable
    assert clock.classify(W - 400 * DAY, True, POLICY) == TOO_LATE
    assert clock.classify(W - 400 * DAY, False, POLICY) == LATE


def test_classify_zero_lateness() -> None:
    policy = TimePolicy.from_days(0, 3, 1)
    clock = PartitionClock(W)
    assert clock.classify(W, True, policy) == OK
    assert clock.classify(W - 1, True, policy) == LATE


def test_classify_returns_the_module_constants() -> None:
    # the processor compares with `is`
    clock = PartitionClock(W)
    assert clock.classify(W + 2 * DAY, True, POLICY) is AHEAD
    assert clock.classify(W + 2 * DAY, True, POLICY, now=W + 0.5 * DAY) is FUTURE
    assert clock.classify(W - 4 * DAY, True, POLICY) is TOO_LATE
    assert clock.classify(W - 2.5 * DAY, True, POLICY) is LATE
    assert clock.classify(W, True, POLICY) is OK
    assert (OK, LATE, FUTURE, TOO_LATE) == ("accepted", "late", "future", "too_late")


# ---- advance / start / close_day ---------------------------------------------------------------


def test_advance_on_fresh_clock() -> None:
    clock = PartitionClock()
    assert clock.advance(W) is False       # nothing closed yet: no day to close
    assert clock.watermark == W
    assert clock.closed_day is None
    clock.start()
    assert clock.closed_day == D           # the first event's day is the open day


def test_advance_only_moves_forward() -> None:
    clock = PartitionClock(W, D)
    assert clock.advance(W - H) is False
    assert clock.watermark == W
    assert clock.advance(W) is False       # equal: not a move
    assert clock.advance(W + H) is False   # later the same day
    assert clock.watermark == W + H


def test_advance_into_new_day_and_close() -> None:
    clock = PartitionClock(W, D)
    midnight = (D + 1) * DAY
    assert clock.advance(midnight - 0.001) is False   # still day D
    assert clock.advance(midnight) is True            # 00:00 belongs to D+1
    assert clock.closed_day == D                      # advance does not close by itself
    assert clock.close_day() == D + 1                 # as-of day of the close
    assert clock.closed_day == D + 1
    assert clock.advance(midnight + H) is False       # same open day again


def test_advance_over_several_days_closes_once() -> None:
    clock = PartitionClock(W, D)
    assert clock.advance(W + 5 * DAY) is True
    assert clock.close_day() == D + 5
    assert clock.advance(W + 5 * DAY + H) is False


def test_start_is_a_noop_when_started_or_empty() -> None:
    clock = PartitionClock()
    clock.start()
    assert clock.closed_day is None
    clock = PartitionClock(W + 3 * DAY, D)
    clock.start()
    assert clock.closed_day == D


def test_close_day_needs_a_watermark() -> None:
    with pytest.raises(AssertionError):
        PartitionClock().close_day()


def test_clock_round_trip() -> None:
    clock = PartitionClock(W, D)
    assert clock.to_dict() == {"wm": W, "day": D, "features": {}, "base": {}}
    back = PartitionClock.from_dict(clock.to_dict())
    assert (back.watermark, back.closed_day) == (W, D)
    clock.base = {"*": {D - 1: 7, D: 9}}
    back = PartitionClock.from_dict(orjson.loads(orjson.dumps(clock.to_dict())))
    assert back.base == {"*": {D - 1: 7, D: 9}}
    empty = PartitionClock.from_dict({})
    assert (empty.watermark, empty.closed_day) == (None, None)


# ---- rfc3339 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ts, text", [
    (W, "2026-03-01T12:00:00Z"),
    (D * DAY, "2026-03-01T00:00:00Z"),
    (0.0, "1970-01-01T00:00:00Z"),
    (W + 0.25, "2026-03-01T12:00:00.250Z"),    # fraction: milliseconds
    (W + 0.5, "2026-03-01T12:00:00.500Z"),
    (1772323199, "2026-02-28T23:59:59Z"),      # int input, the second before D
    (951782400, "2000-02-29T00:00:00Z"),       # leap day
])
def test_rfc3339(ts: float, text: str) -> None:
    assert rfc3339(ts) == text


def test_the_wall_clock_only_bounds_the_future() -> None:
    clock = PartitionClock(W)
    assert clock.classify(W + 10 * DAY, True, POLICY, now=W + 30 * DAY) is AHEAD
    assert clock.classify(W + 31 * DAY + 1, True, POLICY, now=W + 30 * DAY) is FUTURE
    assert PartitionClock().classify(W + 31 * DAY + 1, True, POLICY, now=W + 30 * DAY) is FUTURE


def test_a_quorum_of_customers_in_one_run_ahead_moves_time() -> None:
    clock = PartitionClock(W, streak={"bad-clock": W + 60 * DAY}, run_events=4)
    assert clock.quorum_time(customers=5) is None          # one customer alone: not yet
    clock.streak["c-2"] = W + 10 * DAY
    assert clock.quorum_time(customers=5) == W + 10 * DAY  # two customers are past it
    clock.streak["c-3"] = W + 10 * DAY + 5
    assert clock.quorum_time(customers=5) == W + 10 * DAY + 5
    assert PartitionClock(W, streak={"only": W + 9 * DAY}, run_events=4
                          ).quorum_time(customers=1) == W + 9 * DAY
    # Two or three stray clocks side by side are not a run yet.
    short = PartitionClock(W, streak={"a": W + 10 * DAY, "b": W + 40 * DAY}, run_events=3)
    assert short.quorum_time(customers=5) is None
    # Held events alone (not in the current run) move nothing.
    assert PartitionClock(W, ahead={"a": W + 9 * DAY, "b": W + 9 * DAY}).quorum_time(5) is None
    restored = PartitionClock.from_dict(clock.to_dict())
    assert restored.streak == clock.streak and restored.run_events == clock.run_events
