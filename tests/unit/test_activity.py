"""Per-customer activity (METRICS.md "Activity"): every figure by hand, window edges, prune, state."""

from __future__ import annotations

import orjson
import pytest

from models.activity import (
    DAY_SECONDS,
    ActivityFigures,
    ActivityWindow,
    day_of,
    is_close,
    last_day,
    stickiness,
    window_days,
)

D = 20513  # 2026-03-01, the as-of day


def window_with(days: dict[int, list[str]]) -> ActivityWindow:
    w = ActivityWindow()
    for day, users in days.items():
        for user in users:
            w.record(day, user)
    return w


# ---- helpers -----------------------------------------------------------------------------------


def test_day_of() -> None:
    assert day_of(0) == 0
    assert day_of(D * DAY_SECONDS) == D                 # midnight belongs to the new day
    assert day_of(D * DAY_SECONDS - 0.001) == D - 1     # the instant before, to the old one
    assert day_of(D * DAY_SECONDS + 86399.9) == D


def test_window_days() -> None:
    assert window_days(D, None) == 30            # unknown start: the full window
    assert window_days(D, D) == 1                # signup day: D - D + 1
    assert window_days(D, D - 4) == 5            # 5 days old
    assert window_days(D, D - 29) == 30          # exactly 30 days
    assert window_days(D, D - 100) == 30         # capped at the window
    assert window_days(D, D + 3) == 30           # start after as-of: the full window
    assert window_days(D, D - 9, window=7) == 7  # other window sizes


def test_stickiness_formula() -> None:
    assert stickiness(6, 30, 5) == pytest.approx((6 / 30) / 5)  # 0.04
    assert stickiness(0, 30, 0) == 0.0  # nobody active
    assert stickiness(5, 0, 2) == 0.0   # degenerate n


# ---- figures -----------------------------------------------------------------------------------


def test_figures_full_window_with_edges() -> None:
    w = window_with({
        D: ["a", "b"],
        D - 1: ["a"],
        D - 6: ["c"],    # last day inside the week (D-6 … D)
        D - 7: ["d"],    # first day outside the week, inside the month
        D - 29: ["e"],   # last day inside the month (D-29 … D)
        D - 30: ["f"],   # outside the window
        D + 1: ["g"],    # after as-of: not counted
    })
    fig = w.figures(D, first_day=D - 100)
    # dau = |{a, b}| = 2
    # wau = |{a, b} ∪ {a} ∪ {c}| = 3 (d on D-7 is out)
    # mau = |{a, b, c, d, e}| = 5 (f on D-30 and g on D+1 are out)
    # active days = D, D-1, D-6, D-7, D-29 = 5
    # n = 30; Σ DAU = 2 + 1 + 1 + 1 + 1 = 6; stickiness = (6 / 30) / 5 = 0.04
    assert fig == ActivityFigures(dau=2, wau=3, mau=5, active_days_30d=5,
                                  stickiness=pytest.approx(0.04))


def test_figures_unknown_first_day_uses_full_window() -> None:
    w = window_with({D: ["a"], D - 2: ["a"]})
    fig = w.figures(D, first_day=None)
    # n = 30; Σ DAU = 2; mau = 1 → (2/30)/1 = 0.0667
    assert fig.stickiness == pytest.approx(2 / 30)


def test_figures_young_customer() -> None:
    # signed up on D-4: n = min(30, D - (D-4) + 1) = 5
    w = window_with({D - 4: ["a", "b"], D - 2: ["a"], D: ["a", "b", "c"]})
    fig = w.figures(D, first_day=D - 4)
    # dau 3, wau 3, mau 3, active days 3
    # Σ DAU = 2 + 1 + 3 = 6 over n = 5 → 1.2 a day; ÷ mau 3 = 0.4
    assert fig == ActivityFigures(dau=3, wau=3, mau=3, active_days_30d=3,
                                  stickiness=pytest.approx(0.4))
    # the same activity judged over the full 30 days would give (6/30)/3 = 0.0667
    assert w.figures(D, first_day=None).stickiness == pytest.approx(6 / 30 / 3)


def test_figures_signup_day() -> None:
    w = window_with({D: ["a", "b"]})
    fig = w.figures(D, first_day=D)
    # n = 1, Σ DAU = 2, mau = 2 → (2/1)/2 = 1.0
    assert fig == ActivityFigures(2, 2, 2, 1, 1.0)


def test_everyone_every_day_is_stickiness_one() -> None:
    w = window_with({D - k: ["a", "b", "c"] for k in range(30)})
    fig = w.figures(D, first_day=D - 200)
    # Σ DAU = 30 · 3 = 90; (90 / 30) / 3 = 1.0
    assert fig == ActivityFigures(3, 3, 3, 30, 1.0)


def test_day_outside_the_window_only() -> None:
    w = window_with({D - 30: ["a"], D - 45: ["b"]})
    assert w.figures(D, first_day=D - 60) == ActivityFigures(0, 0, 0, 0, 0.0)
    # one day earlier, D-30 is the D-29 edge of the as-of day D-1
    assert w.figures(D - 1, first_day=D - 60) == ActivityFigures(
        dau=0, wau=0, mau=1, active_days_30d=1, stickiness=pytest.approx((1 / 30) / 1))


def test_week_edge_moves_with_as_of() -> None:
    w = window_with({D - 6: ["a"], D - 7: ["b"]})
    assert w.figures(D, D - 50).wau == 1        # only a (D-6)
    assert w.figures(D - 1, D - 50).wau == 2    # a and b: D-7 is now D'-6
    assert w.figures(D + 1, D - 50).wau == 0    # both more than 6 days back


def test_figures_sliding_after_activity_stops() -> None:
    w = window_with({D: ["a", "b"]})
    fig = w.figures(D + 1, first_day=D - 100)
    # the next day: dau 0; wau and mau still see D; stickiness (2/30)/2
    assert fig == ActivityFigures(0, 2, 2, 1, pytest.approx(1 / 30))
    assert w.figures(D + 29, D - 100).mau == 2   # D is D'-29
    assert w.figures(D + 30, D - 100) == ActivityFigures(0, 0, 0, 0, 0.0)


def test_custom_window() -> None:
    w = window_with({D: ["a"], D - 6: ["b"], D - 7: ["c"]})
    fig = w.figures(D, first_day=D - 50, window=7)
    # month = D-6 … D: {a, b}; active days 2; n = 7; Σ DAU = 2 → (2/7)/2
    assert fig == ActivityFigures(1, 2, 2, 2, pytest.approx(1 / 7))


def test_as_record_rounds_stickiness() -> None:
    fig = ActivityFigures(1, 2, 3, 4, 1 / 3)
    assert fig.as_record() == {"dau": 1, "wau": 2, "mau": 3, "active_days_30d": 4,
                               "stickiness": 0.333333}


# ---- bit masks ---------------------------------------------------------------------------------


def test_record_sets_one_bit_per_user() -> None:
    w = ActivityWindow()
    assert w.record(D, "a") is True
    assert w.masks == {D: 0b1}
    assert w.record(D, "b") is True
    assert w.masks == {D: 0b11}
    assert w.record(D, "a") is False          # already active that day: nothing changed
    assert w.record(D - 1, "b") is True       # b keeps index 1 on another day
    assert w.masks == {D: 0b11, D - 1: 0b10}
    assert w.users == ["a", "b"]
    assert w.last_active_day() == D


def test_last_active_day() -> None:
    assert ActivityWindow().last_active_day() is None
    w = window_with({D - 3: ["a"], D - 9: ["b"]})
    assert w.last_active_day() == D - 3
    w.masks[D] = 0  # an empty mask is not activity
    assert w.last_active_day() == D - 3


# ---- prune -------------------------------------------------------------------------------------


def test_prune_reindexes_users_and_keeps_figures() -> None:
    w = window_with({
        D - 40: ["u0", "u1"],
        D - 35: ["u2"],
        D - 10: ["u1", "u3"],
        D: ["u4", "u3"],
    })
    assert w.users == ["u0", "u1", "u2", "u3", "u4"]
    # figures as of days whose whole window (d-29 … d) survives the prune: D and later
    before = {d: w.figures(d, D - 60) for d in (D, D + 1, D + 15)}
    # at D: dau {u4, u3} = 2; wau 2; mau {u1, u3, u4} = 3; active days 2; Σ DAU 4 → (4/30)/3
    assert before[D] == ActivityFigures(2, 2, 3, 2, pytest.approx(4 / 30 / 3))

    w.prune(D - 29)

    assert sorted(w.masks) == [D - 10, D]
    assert w.users == ["u1", "u3", "u4"]          # u0, u2 only on pruned days
    # u1 → 0, u3 → 1, u4 → 2
    assert w.masks[D - 10] == 0b011               # u1, u3
    assert w.masks[D] == 0b110                    # u3, u4
    for d, fig in before.items():
        assert w.figures(d, D - 60) == fig
    # the index follows: a known user keeps its new bit, a forgotten one gets a fresh bit
    assert w.record(D, "u1") is True
    assert w.masks[D] == 0b111
    assert w.record(D, "u0") is True
    assert w.users == ["u1", "u3", "u4", "u0"]
    assert w.masks[D] == 0b1111


def test_prune_without_stale_days_changes_nothing() -> None:
    w = window_with({D: ["a"], D - 5: ["b"]})
    w.prune(D - 29)
    assert w.users == ["a", "b"] and w.masks == {D: 1, D - 5: 2}


def test_prune_keeps_index_when_every_user_survives() -> None:
    w = window_with({D - 40: ["a"], D: ["b", "a"]})
    w.prune(D - 29)
    assert w.masks == {D: 0b11} and w.users == ["a", "b"]


def test_prune_is_day_exact() -> None:
    w = window_with({D - 29: ["a"], D - 30: ["b"]})
    w.prune(D - 29)                   # days before D-29 go, D-29 stays
    assert list(w.masks) == [D - 29]
    assert w.users == ["a"]


def test_prune_everything() -> None:
    w = window_with({D - 40: ["a", "b"]})
    w.prune(D)
    assert w.masks == {} and w.users == []
    assert w.figures(D, D - 60) == ActivityFigures(0, 0, 0, 0, 0.0)


# ---- state -------------------------------------------------------------------------------------


def test_round_trip_with_more_than_64_users() -> None:
    # 100 users; user i is active on day D - (i mod 30)
    w = ActivityWindow()
    for i in range(100):
        w.record(D - i % 30, f"user-{i}")
    data = orjson.loads(orjson.dumps(w.to_dict()))   # through JSON, as the changelog stores it
    assert data["u"] == [f"user-{i}" for i in range(100)]
    assert all(isinstance(m, str) for _, m in data["m"])  # hex: JSON ints stop at 64 bits
    assert [d for d, _ in data["m"]] == sorted(D - k for k in range(30))
    back = ActivityWindow.from_dict(data)
    assert back.masks == w.masks and back.users == w.users
    assert back.masks[D] == (1 << 0) | (1 << 30) | (1 << 60) | (1 << 90)  # above bit 63
    fig = back.figures(D, first_day=D - 100)
    # dau: i ≡ 0 (mod 30) → 0, 30, 60, 90 = 4
    # wau: residues 0…6, each 4 times (r, r+30, r+60, r+90 < 100) = 28
    # mau 100; active days 30; Σ DAU = 100 → (100/30)/100 = 1/30
    assert fig == ActivityFigures(4, 28, 100, 30, pytest.approx(1 / 30))
    assert fig == w.figures(D, first_day=D - 100)
    # the index is rebuilt: a known user is not added again
    assert back.record(D, "user-1") is True
    assert len(back.users) == 100
    assert back.record(D, "user-1") is False


def test_from_empty_dict() -> None:
    w = ActivityWindow.from_dict({})
    assert w.users == [] and w.masks == {}
    assert ActivityWindow().to_dict() == {"u": [], "m": []}


# ---- which days a record covers ----------------------------------------------------------------


def test_a_close_covers_the_days_before_it_an_in_day_record_its_own_day() -> None:
    close = (D + 1) * DAY_SECONDS                          # the close of D, stamped D+1 00:00
    assert is_close(close) and last_day(close) == D
    assert not is_close(close + 1) and last_day(close + 1) == D + 1     # in-day, D+1 so far
    assert last_day(close - 1) == D                        # D's last in-day second meets its close
    assert last_day(close + 0.5) == D + 1


def test_day_close_figures_over_d_minus_29_to_d() -> None:
    # u1 on each of D-29 … D: the close of D (as of D+1 00:00) sees 30 active days, dau 1 and
    # stickiness (30/30)/1 = 1; the empty day D+1 (and D-30, left out) would each cost a day.
    w = window_with({d: ["u1"] for d in range(D - 30, D + 1)})
    close = last_day((D + 1) * DAY_SECONDS)
    assert w.figures(close, D - 40) == ActivityFigures(dau=1, wau=1, mau=1, active_days_30d=30,
                                                       stickiness=1.0)
    assert w.figures(D + 1, D - 40) == ActivityFigures(dau=0, wau=1, mau=1, active_days_30d=29,
                                                       stickiness=29 / 30)
