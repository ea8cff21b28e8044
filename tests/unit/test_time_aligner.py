"""The ingest's TimeAligner: event-time order across input partitions, robust to bad clocks."""
from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ingest import TimeAligner

DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01


def feed(aligner: TimeAligner, tp: str, times: list[float], start: int = 0) -> None:
    for i, ts in enumerate(times):
        aligner.add(tp, ts, start + i, (tp, ts))


def test_merges_partitions_in_event_time_order() -> None:
    aligner = TimeAligner(max_skew=DAY)
    feed(aligner, "a", [T0 + h * 3600 for h in (1, 3, 5, 7)])
    feed(aligner, "b", [T0 + h * 3600 for h in (2, 4, 6, 8)])
    out = aligner.release(["a", "b"], empty_at=lambda tp: math.inf)
    assert [ts for _, ts in out] == sorted(ts for _, ts in out) and len(out) == 8


def test_nothing_leaves_past_what_a_partition_still_reading_has_reached() -> None:
    aligner = TimeAligner(max_skew=DAY)
    feed(aligner, "a", [T0 + h * 3600 for h in (1, 2, 3, 4, 5, 6)])
    feed(aligner, "b", [T0 + h * 3600 for h in (1.5, 2.5)])   # b has more to read
    out = aligner.release(["a", "b"], empty_at=lambda tp: math.inf if tp == "a" else None)
    assert max(ts for _, ts in out) <= T0 + 1.5 * 3600
    assert aligner.committable()["a"] == 1 and aligner.committable()["b"] == 1


def test_a_bad_clock_neither_holds_its_partition_back_nor_lets_others_run_ahead() -> None:
    """One event dated weeks ahead in partition a: it leaves at once (the customer stage holds
    it), a's later events keep their place, and b, still being read, bounds everything."""
    aligner = TimeAligner(max_skew=DAY)
    a = [T0 + h * 3600 for h in range(10)]
    a[3] = T0 + 40 * DAY
    ahead = [aligner.add("a", ts, i, ("a", ts)) for i, ts in enumerate(a)]
    assert ahead == [i == 3 for i in range(10)]   # told apart: the customer stage holds it
    feed(aligner, "b", [T0 + h * 3600 + 1 for h in range(6)])
    out = aligner.release(["a", "b"], empty_at=lambda tp: math.inf if tp == "a" else None)
    released_a = [ts for tp, ts in out if tp == "a"]
    assert released_a == a[:5]                 # the bad clock among them, in offset order
    assert aligner.read_to["a"] == a[8]        # the bad clock is not a's time
    rest = aligner.release(["a", "b"], empty_at=lambda tp: math.inf)
    assert [ts for tp, ts in rest if tp == "a"] == a[5:]


def test_a_real_jump_is_followed() -> None:
    """A quiet gap: every event after it is ahead, so two in a row move the partition's time."""
    aligner = TimeAligner(max_skew=DAY)
    feed(aligner, "a", [T0, T0 + 3600, T0 + 10 * DAY, T0 + 10 * DAY + 60, T0 + 10 * DAY + 120])
    assert aligner.read_to["a"] == T0 + 10 * DAY + 60


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(0, 30 * DAY), min_size=1, max_size=30), min_size=1,
                max_size=5), st.randoms())
def test_every_item_leaves_once_and_each_partition_in_offset_order(
        parts: list[list[float]], rnd: random.Random) -> None:
    aligner = TimeAligner(max_skew=DAY)
    names = [f"p{i}" for i in range(len(parts))]
    pos = dict.fromkeys(names, 0)
    out: list[tuple[str, int]] = []
    while any(pos[n] < len(p) for n, p in zip(names, parts, strict=True)):
        n = rnd.choice([n for n, p in zip(names, parts, strict=True) if pos[n] < len(p)])
        p = parts[names.index(n)]
        aligner.add(n, T0 + p[pos[n]], pos[n], (n, pos[n]))
        pos[n] += 1
        out += aligner.release(names, empty_at=lambda tp: math.inf if pos[tp] >= len(parts[names.index(tp)]) else None)
    out += aligner.release(names, empty_at=lambda tp: math.inf)
    assert sorted(out) == sorted((n, i) for n, p in zip(names, parts, strict=True)
                                 for i in range(len(p)))
    for n in names:
        assert [i for m, i in out if m == n] == sorted(i for m, i in out if m == n)
    assert not math.isnan(sum(aligner.read_to.values()))


def test_an_idle_partition_holds_back_only_what_was_written_after_its_empty_fetch() -> None:
    """b was read to its end by a fetch at wall time 100. An item of a written at 99.5 may have
    a companion still on its way to b (producers of two topics are not in step): it waits for
    a later empty fetch. An item written at 98, before the fetch minus the grace, leaves."""
    aligner = TimeAligner(max_skew=DAY, order_grace=1.0)
    aligner.add("b", T0, 0, ("b", T0), written=90.0)
    aligner.add("a", T0 + 3600, 0, ("a", T0 + 3600), written=98.0)
    aligner.add("a", T0 + 7200, 1, ("a", T0 + 7200), written=99.5)
    fetched = {"a": 100.0, "b": 100.0}
    out = aligner.release(["a", "b"], empty_at=fetched.get)
    assert out == [("b", T0), ("a", T0 + 3600)]
    fetched["b"] = 100.6       # b found empty again, later: nothing more came before a's item
    assert aligner.release(["a", "b"], empty_at=fetched.get) == [("a", T0 + 7200)]


def test_an_idle_partition_never_holds_back_what_is_within_its_own_time() -> None:
    aligner = TimeAligner(max_skew=DAY, order_grace=5.0)
    aligner.add("b", T0 + 3600, 0, ("b", T0 + 3600), written=100.0)
    aligner.add("a", T0 + 60, 0, ("a", T0 + 60), written=100.0)
    out = aligner.release(["a", "b"], empty_at=lambda tp: 100.0)
    # a's item is older than b's level: it leaves; b's own item is not held by b itself,
    # but a (idle, level T0 + 60) holds it until it is older than a's empty fetch minus 5 s.
    assert out == [("a", T0 + 60)]
    assert aligner.release(["a", "b"], empty_at=lambda tp: 106.0) == [("b", T0 + 3600)]


def test_a_late_companion_on_an_idle_partition_is_released_in_event_time_order() -> None:
    """The burst case: a's usage at 23:59 and b's billing at 23:58 written together; the fetch
    saw a's record first. Without the grace the usage would leave first and the billing would
    reach the customer stage after a later event of its own partition had closed the day."""
    aligner = TimeAligner(max_skew=DAY, order_grace=1.0)
    aligner.add("a", T0 + DAY - 60, 0, "usage 23:59", written=50.0)
    aligner.add("a", T0 + DAY + 60, 1, "usage 00:01", written=50.1)
    assert aligner.release(["a", "b"], empty_at=lambda tp: 50.2) == []
    aligner.add("b", T0 + DAY - 120, 0, "billing 23:58", written=50.0)
    out = aligner.release(["a", "b"], empty_at=lambda tp: 51.5)
    assert out == ["billing 23:58", "usage 23:59", "usage 00:01"]


@st.composite
def late_partitions(draw: st.DrawFn) -> dict[str, list[float]]:
    """Two to four partitions in event-time order, apart from late events (up to 20 h behind
    the partition) and ties across partitions (times on a 10-minute grid)."""
    parts = {}
    for name in "abcd"[:draw(st.integers(2, 4))]:
        t = T0 + draw(st.integers(0, 6)) * 600
        times = []
        for _ in range(draw(st.integers(1, 25))):
            t += draw(st.integers(0, 12)) * 600
            late = draw(st.booleans()) and draw(st.integers(0, 9)) == 0
            times.append(t - draw(st.integers(1, 120)) * 600 if late else t)
        parts[name] = times
    return parts


@settings(max_examples=300, deadline=None)
@given(parts=late_partitions(), data=st.data())
def test_the_release_order_depends_on_the_input_alone(parts: dict[str, list[float]],
                                                      data: st.DataObject) -> None:
    """Late events and ties included, the order items leave in is the same whatever the fetch
    sizes and whenever release runs: read whole then released, or fetched a few at a time
    with releases in between (what the customer stage's day closes see)."""
    whole = TimeAligner(max_skew=DAY)
    for tp, times in parts.items():
        feed(whole, tp, times)
    expected = whole.release(list(parts), empty_at=lambda tp: math.inf)

    aligner = TimeAligner(max_skew=DAY)
    read = dict.fromkeys(parts, 0)
    out = []
    while any(read[tp] < len(times) for tp, times in parts.items()):
        tp = data.draw(st.sampled_from([p for p in parts if read[p] < len(parts[p])]))
        n = data.draw(st.integers(1, 5))
        feed(aligner, tp, parts[tp][read[tp]:read[tp] + n], start=read[tp])
        read[tp] = min(len(parts[tp]), read[tp] + n)
        out += aligner.release(list(parts), empty_at=lambda p: math.inf
                               if read[p] == len(parts[p]) else None)
    out += aligner.release(list(parts), empty_at=lambda tp: math.inf)
    assert out == expected


@settings(max_examples=300, deadline=None)
@given(parts=late_partitions(), data=st.data())
def test_a_restart_from_the_committed_offsets_releases_the_rest_in_the_same_order(
        parts: dict[str, list[float]], data: st.DataObject) -> None:
    """Killed after releasing (and committing) any prefix, a new aligner reading every partition
    again from its committed offset, with no level yet, releases the rest as the first would
    have: a late event right after an offset keeps its place, although the levels start
    anew. (Ordering late events by their own time passed this too; it was fetch sizes, the
    test above, that moved them.)"""
    whole = TimeAligner(max_skew=DAY)
    for tp, times in parts.items():
        feed(whole, tp, times)
    expected = whole.release(list(parts), empty_at=lambda tp: math.inf)
    cut = data.draw(st.integers(0, len(expected)))
    offsets = {tp: sum(1 for p, _ in expected[:cut] if p == tp) for tp in parts}
    again = TimeAligner(max_skew=DAY)
    for tp, times in parts.items():
        feed(again, tp, times[offsets[tp]:], start=offsets[tp])
    assert again.release(list(parts), empty_at=lambda tp: math.inf) == expected[cut:]


def test_a_restart_reads_the_level_before_its_offset_so_a_bad_clock_there_changes_nothing() -> None:
    """The first record after a committed offset is a bad clock (40 days ahead). Read first
    with no level, it became the partition's level: the records after it were ordered at it
    and left after every other partition's, and it was not flagged as ahead of its input.
    The records before the offset, read again as context, give the level it had."""
    a = [T0 + 3600, T0 + 7200, T0 + 10800, T0 + 40 * DAY, T0 + 14400, T0 + 18000]
    b = [T0 + h * 3600 for h in (1.5, 2.5, 3.5, 4.5, 5.5)]
    whole = TimeAligner(max_skew=DAY)
    flagged = [whole.add("a", ts, i, ("a", ts)) for i, ts in enumerate(a)]
    feed(whole, "b", b)
    expected = whole.release(["a", "b"], empty_at=lambda tp: math.inf)
    cut = expected.index(("a", a[3]))
    assert cut == 5 and flagged[3]

    def restarted(context: bool) -> tuple[list[object], bool]:
        again = TimeAligner(max_skew=DAY)
        again.start_at("a", 3)
        again.start_at("b", 2)
        if context:
            for ts in a[:3]:
                again.context("a", ts)
        ahead = again.add("a", a[3], 3, ("a", a[3]))
        for i, ts in enumerate(a[4:], start=4):
            again.add("a", ts, i, ("a", ts))
        feed(again, "b", b[2:], start=2)
        return again.release(["a", "b"], empty_at=lambda tp: math.inf), ahead

    assert restarted(context=False) != (expected[cut:], True)     # what a restart did
    assert restarted(context=True) == (expected[cut:], True)
