"""Feature analytics (METRICS.md "Features"): every figure by hand, per-customer state, merge."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.activity import DAY_SECONDS, day_of
from models.features import (
    CustomerFeatures,
    FeatureBook,
    FeatureContribution,
    PaidHistory,
    ReleaseInputs,
    adopt_bucket,
    adoption_30d_after_release,
    adoption_rate,
    after_release_day,
    after_release_fix_day,
    customer_adoption_rate,
    days_to_adopt,
    feature_record,
    median_days_to_adopt,
    median_from_histogram,
    merge_all,
    retention_impact,
    stickiness,
    stickiness_days,
)

D = 20513  # 2026-03-01, the as-of day (day close of D: as of D+1 00:00)
T = (D + 1) * DAY_SECONDS
F = "reports"


def at(day: int, hour: float = 12.0) -> float:
    return day * DAY_SECONDS + hour * 3600


def use_of(events: list[tuple[int, str]], feature: str = F) -> CustomerFeatures:
    use = CustomerFeatures()
    for day, user in events:
        use.record(feature, at(day), user)
    return use


# ---- ratios ------------------------------------------------------------------------------------


def test_adoption_rate_by_hand() -> None:
    assert adoption_rate(312, 830) == pytest.approx(0.375904, abs=1e-6)
    assert adoption_rate(0, 5) == 0.0
    assert adoption_rate(0, 0) is None             # no active users: undefined, not 0


def test_customer_adoption_rate_by_hand() -> None:
    assert customer_adoption_rate(13, 25) == 0.52
    assert customer_adoption_rate(0, 0) is None


def test_stickiness_formula() -> None:
    assert stickiness(6, 30, 4) == pytest.approx((6 / 30) / 4)   # 0.05
    assert stickiness(5, 10, 4) == pytest.approx(0.125)
    assert stickiness(0, 30, 0) is None                          # nobody used f


def test_stickiness_days_since_release() -> None:
    assert stickiness_days(D, None) == 30                  # release unknown: the full window
    assert stickiness_days(D, at(D - 9, 0)) == 10          # released 10 days ago
    assert stickiness_days(D, at(D, 15)) == 1              # released today
    assert stickiness_days(D, at(D - 200)) == 30           # old feature: the full window
    assert stickiness_days(D, at(D + 2)) == 30             # release after as_of (beta use)


# ---- per-customer state: adoption and stickiness from events ---------------------------------


def two_customers() -> tuple[CustomerFeatures, CustomerFeatures]:
    a = use_of([(D, "a1"), (D, "a2"), (D, "a1"), (D - 1, "a1"), (D - 10, "a3"),
                (D - 30, "a4"),                 # a day before the window: not counted
                (D + 1, "a5")])                 # the next day (already seen at close): not yet
    b = use_of([(D - 5, "b1"), (D - 4, "b1")])
    return a, b


def test_window_counts_by_hand() -> None:
    a, b = two_customers()
    assert a.window(F, D) == (3, 4)            # a1 a2 a3; DAU 2 (D) + 1 (D-1) + 1 (D-10)
    assert b.window(F, D) == (1, 2)
    assert a.window(F, D, since_day=D - 9) == (3, 3)   # DAU sum since release: D and D-1 only
    assert a.window("other", D) == (0, 0)


def test_contribution_adoption_and_stickiness_by_hand() -> None:
    a, b = two_customers()
    part = FeatureContribution(F, D)
    part.add_customer(a, mau=6, released_at=None, signup_ts=None, paid=None)
    part.add_customer(b, mau=2, released_at=None, signup_ts=None, paid=None)
    part.add_customer(None, mau=2, released_at=None, signup_ts=None, paid=None)  # never used f
    part.add_customer(None, mau=0, released_at=None, signup_ts=None, paid=None)  # inactive
    assert (part.active_users, part.feature_users, part.dau_sum) == (10, 4, 6)
    assert (part.active_customers, part.feature_customers) == (3, 2)
    assert adoption_rate(part.feature_users, part.active_users) == pytest.approx(0.4)
    assert customer_adoption_rate(part.feature_customers, part.active_customers) == \
        pytest.approx(2 / 3)
    # (6 DAU over 30 days / 30) / 4 users
    assert stickiness(part.dau_sum, stickiness_days(D, None), part.feature_users) == \
        pytest.approx(0.05)


def test_stickiness_of_a_feature_released_within_the_window() -> None:
    a, b = two_customers()
    released = at(D - 9, 0)                      # 10 days of the window since release
    part = FeatureContribution(F, D)
    for use in (a, b):
        part.add_customer(use, mau=5, released_at=released, signup_ts=None, paid=None)
    # DAU since release: a 2 + 1, b 1 + 1 = 5 over 10 days; 4 distinct users (a3 used a beta)
    assert part.dau_sum == 5 and part.feature_users == 4
    assert stickiness(part.dau_sum, stickiness_days(D, released), part.feature_users) == \
        pytest.approx((5 / 10) / 4)


def test_record_reports_changes_only() -> None:
    use = CustomerFeatures()
    assert use.record(F, at(D), "u1") is True
    assert use.record(F, at(D, 18), "u1") is False       # same user, same day
    assert use.record(F, at(D, 6), "u1") is True         # same day, but an earlier first use
    assert use.record(F, at(D - 1), "u1") is True        # another day
    assert use.first_use(F) == at(D - 1)
    assert use.first_use("other") is None


def test_prune_drops_old_days_and_unreferenced_users_and_keeps_first_use() -> None:
    use = use_of([(D - 40, "old"), (D - 3, "x"), (D, "y"), (D, "x")])
    use.record("dashboards", at(D - 35), "gone")
    use.prune(D - 29)
    assert use.users == ["x", "y"]
    assert "dashboards" not in use.masks
    assert use.window(F, D) == (2, 3)
    assert use.first_use(F) == at(D - 40) and use.first_use("dashboards") == at(D - 35)
    use.record(F, at(D), "z")                            # interning still right after remap
    assert use.window(F, D) == (3, 4)


def test_customer_features_state_round_trip() -> None:
    use = use_of([(D - 2, f"u{i}") for i in range(70)])  # masks wider than 64 bits
    use.record("sso", at(D), "u3")
    back = CustomerFeatures.from_dict(orjson.loads(orjson.dumps(use.to_dict())))
    assert back.to_dict() == use.to_dict()
    assert back.window(F, D) == (70, 70)
    back.record(F, at(D), "u69")
    assert back.window(F, D) == (70, 71)                 # the index survived the round trip


# ---- adoption in the 30 days after release ------------------------------------------------------


def test_after_release_day() -> None:
    assert after_release_day(at(D, 0)) == D + 29         # window D .. D+29 = [R, R+30d)
    assert after_release_day(at(D, 13)) == D + 29


def test_adoption_after_release_null_until_r_plus_30d() -> None:
    r = at(D, 0)
    assert adoption_30d_after_release(30, 100, r + 30 * DAY_SECONDS - 1, r) is None
    assert adoption_30d_after_release(30, 100, r + 30 * DAY_SECONDS, r) == pytest.approx(0.3)
    assert adoption_30d_after_release(30, 100, r + 90 * DAY_SECONDS, None) is None
    assert adoption_30d_after_release(None, None, r + 90 * DAY_SECONDS, r) is None
    assert adoption_30d_after_release(0, 0, r + 90 * DAY_SECONDS, r) is None


def book_part(day: int, users: int, active: int, feature: str = F) -> FeatureContribution:
    return FeatureContribution(feature, day, active_users=active, feature_users=users)


def test_book_after_release_counts_from_every_partition() -> None:
    r = at(D, 0)
    book = FeatureBook(F)
    book.update(0, book_part(D + 28, 9, 90))
    book.update(1, book_part(D + 28, 4, 40))
    assert book.after_release_counts(r) is None          # D+29 not closed yet
    book.update(0, book_part(D + 29, 10, 100))
    assert book.after_release_counts(r) is None          # partition 1 has not closed D+29
    book.update(1, book_part(D + 29, 5, 50))
    book.update(0, book_part(D + 30, 11, 100))
    book.update(1, book_part(D + 30, 6, 50))
    assert book.after_release_counts(r) == (15, 150)     # the D+29 counts, not the latest
    wm = at(D + 30, 0)                                   # day close of D+29 = R + 30d
    assert adoption_30d_after_release(15, 150, wm, r) == pytest.approx(0.1)
    # kept once taken: later history loss does not lose it
    for day in range(D + 31, D + 31 + 60):
        book.update(0, book_part(day, 1, 1))
        book.update(1, book_part(day, 1, 1))
    assert book.after_release_counts(r) == (15, 150)


def test_book_after_release_waits_for_a_lagging_partition() -> None:
    r = at(D, 0)
    book = FeatureBook(F)
    book.update(0, book_part(D + 29, 10, 100))
    book.update(1, book_part(D + 27, 5, 50))             # partition 1 has not closed D+29
    assert book.after_release_counts(r) is None
    book.update(1, book_part(D + 29, 5, 50))
    assert book.after_release_counts(r) == (15, 150)


def test_book_after_release_needs_every_expected_partition() -> None:
    r = at(D, 0)
    book = FeatureBook(F)
    book.update(0, book_part(D + 29, 10, 100))           # partition 1 has sent nothing yet
    assert book.after_release_counts(r, partitions=2) is None
    assert book.after_release is None                    # nothing incomplete was kept
    book.update(1, book_part(D + 29, 5, 50))
    assert book.after_release_counts(r, partitions=2) == (15, 150)


def test_book_counts_a_partition_that_learnt_of_the_feature_late() -> None:
    # Partition 1 ran ahead: it closed D+29 before it knew f (first seen on partition 0 at D),
    # so its first contribution is for D+40. Its active users of the earlier days come with it.
    r = at(D, 0)
    book = FeatureBook(F)
    book.update(0, book_part(D + 29, 10, 100))
    base = [[day, 40 + day - D] for day in range(D + 20, D + 40)]
    book.update(1, book_part(D + 40, 3, 80), base)
    # D+29: partition 1 had no user of f (it would have known f), 69 active users
    assert book.after_release_counts(r, partitions=2) == (10, 169)
    assert book.by_days == (0, 1)                        # neither sent exact counts
    assert FeatureBook.from_state(book.to_state()).by_days == (0, 1)


def test_book_base_never_replaces_counts_the_partition_sent() -> None:
    r = at(D, 0)
    book = FeatureBook(F)
    book.update(1, book_part(D + 29, 5, 50))
    book.update(1, book_part(D + 30, 6, 51), [[D + 28, 1], [D + 29, 2], [D + 30, 3]])
    assert book.history[1] == {D + 28: (0, 1), D + 29: (5, 50), D + 30: (6, 51)}
    assert book.after_release_counts(r, partitions=2) is None      # partition 0 still missing
    book.update(0, book_part(D + 29, 1, 10))
    assert book.after_release_counts(r, partitions=2) == (6, 60)
    # once the figure is known, a late base fills nothing more
    book.update(1, book_part(D + 31, 6, 51), [[D + 1, 7]])
    assert D + 1 not in book.history[1]


R_1413 = at(D, 14 + 13 / 60 + 57 / 3600)                 # released D 14:13:57


def exact_window_customer() -> CustomerFeatures:
    """Users around [R, R+30d) = [D 14:13:57, D+30 14:13:57):
    u1 usage D 10:00 (before R: out)         u2 usage D 15:00 (in), f D 14:00 (beta: not f)
    u3 f D+10 12:00 (in, f)                   u4 usage D+30 14:00 (in), f D+30 14:13:56 (in, f)
    u5 f D+30 14:13:57 (= R+30d: out)         u6 usage D 14:13:57 (= R: in)
    u7 usage D+30 10:00 (in)
    """
    use = CustomerFeatures()

    def act(user: str, ts: float, feature: bool = False) -> None:
        use.on_activity(ts, user)
        if feature:
            use.record(F, ts, user)

    act("u1", at(D, 10))
    act("u2", at(D, 15))
    act("u2", at(D, 14), feature=True)
    act("u3", at(D + 10), feature=True)
    act("u4", at(D + 30, 14))
    act("u4", R_1413 + 30 * DAY_SECONDS - 1, feature=True)
    act("u5", R_1413 + 30 * DAY_SECONDS, feature=True)
    act("u6", R_1413)
    act("u7", at(D + 30, 10))
    return use


def test_after_release_counts_the_exact_window_of_a_release_at_14_13_57() -> None:
    use = exact_window_customer()
    # f users u3, u4; active u2, u3, u4, u6, u7 → 2/5 = 0.4 (the UTC days D … D+29 would
    # give f users u2, u3 of active u1, u2, u3, u6: 2/4)
    assert use.after_release(F, R_1413) == (2, 5)
    assert use.window(F, D + 29)[0] == 2                     # u2 and u3 over the UTC days
    # fixed at the close of D+32 (as of D+33 00:00 ≥ R + 30 d + 2 d lateness = D+32 14:13:57)
    assert after_release_fix_day(R_1413, 2) == D + 32
    assert after_release_fix_day(at(D, 0), 2) == D + 31     # a midnight release: D+32 00:00
    end = R_1413 + 32 * DAY_SECONDS
    assert adoption_30d_after_release(2, 5, end - 1, R_1413, 2) is None
    assert adoption_30d_after_release(2, 5, end, R_1413, 2) == pytest.approx(0.4)
    # the event times survive the changelog
    back = CustomerFeatures.from_dict(orjson.loads(orjson.dumps(use.to_dict())))
    assert back.after_release(F, R_1413) == (2, 5) and back.to_dict() == use.to_dict()


def test_a_late_event_inside_the_lateness_after_r_plus_30d_still_counts() -> None:
    """Partition 0 closes D+31 (watermark past R + 30d, not past R + 30d + lateness): its exact
    counts (2, 5) do not fix the figure. Then u8's usage of D+30 13:00 (before R+30d) arrives
    late, 20 h behind a watermark of D+31 09:00 (within the 2-day lateness), and u9's of D+30
    20:00 (after R+30d, out). The close of D+32 counts u8: 2/6; partition 1 adds 1 of 4."""
    use = exact_window_customer()
    book = FeatureBook(F)

    def close(p: int, day: int, users: int, active: int) -> None:
        part = FeatureContribution(F, day, active_users=99, feature_users=9)
        part.set_after_release(R_1413, users, active)
        book.update(p, part)

    close(0, D + 31, *use.after_release(F, R_1413))
    close(1, D + 32, 1, 4)
    assert book.after_release_counts(R_1413, partitions=2, lateness_days=2) is None
    use.on_activity(at(D + 30, 13), "u8")
    use.on_activity(at(D + 30, 20), "u9")
    assert use.after_release(F, R_1413) == (2, 6)
    close(0, D + 32, *use.after_release(F, R_1413))
    assert book.after_release_counts(R_1413, partitions=2, lateness_days=2) == (3, 10)
    assert book.by_days == ()                                # every partition counted exactly
    close(0, D + 33, 0, 100)                                 # fixed: later counts are ignored
    assert book.after_release_counts(R_1413, partitions=2, lateness_days=2) == (3, 10)
    back = FeatureBook.from_state(orjson.loads(orjson.dumps(book.to_state())))
    assert back.after_release_counts(R_1413, partitions=2, lateness_days=2) == (3, 10)


def test_after_release_is_unknown_once_day_r_was_pruned() -> None:
    use = exact_window_customer()
    use.prune(D + 2, keep_from=D)                            # masks from D+2, times from D
    assert use.after_release(F, R_1413) == (2, 5)
    assert D + 1 not in use.masks[F] and D in use.active
    use.prune(D + 3, keep_from=D + 1)                        # the events of day(R) are gone
    assert use.after_release(F, R_1413) is None
    assert use.after_release(F, at(D + 1, 0)) is not None


# ---- days to adopt -----------------------------------------------------------------------------


def test_days_to_adopt() -> None:
    r = at(D, 0)
    assert days_to_adopt(r + 3.5 * DAY_SECONDS, r, r - 10 * DAY_SECONDS) == 3.5   # from release
    assert days_to_adopt(r + 9 * DAY_SECONDS, r, r + 2 * DAY_SECONDS) == 7.0      # from signup
    assert days_to_adopt(r - DAY_SECONDS, r, None) == 0.0       # beta use before the release
    assert days_to_adopt(r + DAY_SECONDS, None, r) == 1.0       # release unknown
    assert days_to_adopt(r, None, None) == 0.0


def test_adopt_bucket_resolution() -> None:
    assert adopt_bucket(0) == 0 and adopt_bucket(-2) == 0
    assert adopt_bucket(2.34) == 23 and adopt_bucket(2.36) == 24      # 0.1 day below 30 days
    assert adopt_bucket(29.93) == 299 and adopt_bucket(29.97) == 300
    assert adopt_bucket(45.4) == 450 and adopt_bucket(45.6) == 460    # whole days above


def test_median_from_histogram_odd_and_even() -> None:
    assert median_from_histogram({10: 1, 25: 1, 60: 1}) == 2.5                 # 1.0 2.5 6.0
    assert median_from_histogram({10: 1, 20: 1, 40: 1, 80: 1}) == 3.0          # (2 + 4) / 2
    assert median_from_histogram({0: 2, 50: 1}) == 0.0                         # 0 0 5
    assert median_from_histogram({0: 2, 50: 2}) == 2.5                         # 0 0 5 5
    assert median_from_histogram({70: 3, 10: 1, 20: 0}) == 7.0                 # unsorted keys
    assert median_from_histogram({}) is None
    assert median_from_histogram({5: 0}) is None


def test_median_days_to_adopt_from_values() -> None:
    assert median_days_to_adopt([6.0, 1.2, 3.44]) == pytest.approx(3.4)
    assert median_days_to_adopt([6.0, 1.2, 3.44, 100.2]) == pytest.approx((3.4 + 6.0) / 2)
    assert median_days_to_adopt([]) is None


def test_median_days_to_adopt_merged_across_partitions() -> None:
    r = at(D - 60, 0)
    p0, p1 = FeatureContribution(F, D), FeatureContribution(F, D)
    # partition 0: signed up before release, adopted 2 and 8 days after it
    for days in (2, 8):
        use = CustomerFeatures()
        use.record(F, r + days * DAY_SECONDS, "u")
        p0.add_customer(use, mau=1, released_at=r, signup_ts=r - 5 * DAY_SECONDS, paid=None)
    # partition 1: signed up 10 days after release, adopted 1.5 and 4 days after signup
    for days in (1.5, 4):
        use = CustomerFeatures()
        use.record(F, r + (10 + days) * DAY_SECONDS, "u")
        p1.add_customer(use, mau=1, released_at=r, signup_ts=r + 10 * DAY_SECONDS, paid=None)
    p1.add_customer(None, mau=1, released_at=r, signup_ts=None, paid=None)  # never used f
    assert p0.adopt_hist == {20: 1, 80: 1} and p1.adopt_hist == {15: 1, 40: 1}
    merged = p0.merge(p1)
    assert median_from_histogram(merged.adopt_hist) == 3.0          # 1.5 2 | 4 8 -> (2 + 4) / 2
    assert merged.first_seen == r + 2 * DAY_SECONDS


def test_first_use_outside_the_window_still_counts_for_days_to_adopt() -> None:
    r = at(D - 200, 0)
    use = CustomerFeatures()
    use.record(F, r + 3 * DAY_SECONDS, "u")
    use.prune(D - 29)                                    # the use itself left the window
    part = FeatureContribution(F, D)
    part.add_customer(use, mau=1, released_at=r, signup_ts=None, paid=None)
    assert part.feature_users == 0 and part.feature_customers == 0
    assert part.adopt_hist == {30: 1}


# ---- retention impact ----------------------------------------------------------------------------


def test_retention_impact_by_hand() -> None:
    with_rate, without_rate, impact = retention_impact(11, 12, 8, 10, min_group=10)
    assert with_rate == pytest.approx(11 / 12)
    assert without_rate == pytest.approx(0.8)
    assert impact == pytest.approx(11 / 12 - 0.8)       # 0.1167
    # each group on its own: the one under min_group is null, the other is still published
    assert retention_impact(9, 9, 8, 10, min_group=10) == (None, 0.8, None)    # 9 < 10
    assert retention_impact(9, 10, 5, 9, min_group=10) == (0.9, None, None)
    assert retention_impact(0, 0, 0, 0, min_group=0) == (None, None, None)     # empty groups


def test_retention_without_with_an_empty_with_group() -> None:
    # Nobody used f before D − W: "with" is empty (null), "without" has 95 customers of whom
    # 71 still pay: 71/95 = 0.7474 is published; the impact needs both groups.
    assert retention_impact(0, 0, 71, 95, min_group=10) == (None, 71 / 95, None)
    record = feature_record(F, "2026-03-02T00:00:00Z", None,
                            FeatureContribution(F, D, without_total=95, without_kept=71),
                            n_days=30, after_release=None)
    assert (record["retention_with"], record["retention_without"],
            record["retention_impact"]) == (None, 0.7474, None)
    # a "without" group under min_group is null in turn, the "with" group stays
    record = feature_record(F, "2026-03-02T00:00:00Z", None,
                            FeatureContribution(F, D, with_total=12, with_kept=9,
                                                without_total=9, without_kept=9),
                            n_days=30, after_release=None)
    assert (record["retention_with"], record["retention_without"],
            record["retention_impact"]) == (0.75, None, None)


def paying(since: float, until: float | None = None) -> PaidHistory:
    history = PaidHistory()
    history.on_mrr(since, 100.0)
    if until is not None:
        history.on_mrr(until, 0.0)
    return history


def test_retention_split_from_customers() -> None:
    anchor = T - 90 * DAY_SECONDS
    part = FeatureContribution(F, D)

    def add(first_use: float | None, paid: PaidHistory) -> None:
        use = None
        if first_use is not None:
            use = CustomerFeatures()
            use.record(F, first_use, "u")
        part.add_customer(use, mau=1, released_at=None, signup_ts=None, paid=paid)

    # with f before D - W: 10 customers paying at D - W, 9 still paying at T
    for i in range(10):
        add(anchor - 5 * DAY_SECONDS, paying(anchor - 100 * DAY_SECONDS,
                                            None if i else anchor + DAY_SECONDS))
    # without: 12 customers paying at D - W (4 never used f, 8 adopted after D - W); 6 kept
    for i in range(12):
        first = None if i < 4 else anchor + DAY_SECONDS
        add(first, paying(anchor - DAY_SECONDS, None if i % 2 else T - 1))
    # not in either group: started paying after D - W; paying until exactly D - W
    add(anchor - 5 * DAY_SECONDS, paying(anchor + 1))
    add(None, paying(anchor - 10 * DAY_SECONDS, anchor))
    add(None, PaidHistory())                             # never paid
    assert (part.with_kept, part.with_total) == (9, 10)
    assert (part.without_kept, part.without_total) == (6, 12)
    with_rate, without_rate, impact = retention_impact(
        part.with_kept, part.with_total, part.without_kept, part.without_total, min_group=10)
    assert (with_rate, without_rate) == (pytest.approx(0.9), pytest.approx(0.5))
    assert impact == pytest.approx(0.4)
    assert retention_impact(part.with_kept, part.with_total, part.without_kept,
                            part.without_total, min_group=11) == (None, 0.5, None)  # 10 < 11


def test_paid_history() -> None:
    h = PaidHistory()
    assert h.paying_at(T) is False
    h.on_mrr(at(D - 100), 50.0)
    h.on_mrr(at(D - 90), 80.0)                           # expansion: no transition
    h.on_mrr(at(D - 50), 0.0)
    h.on_mrr(at(D - 20), 30.0)
    assert h.changes == [(at(D - 100), True), (at(D - 50), False), (at(D - 20), True)]
    assert h.paying_at(at(D - 100) - 1) is False
    assert h.paying_at(at(D - 100)) is True              # a change at exactly t counts
    assert h.paying_at(at(D - 30)) is False and h.paying_at(T) is True
    h.prune(at(D - 40))                                  # D-50 still decides the state at D-40
    assert h.changes == [(at(D - 50), False), (at(D - 20), True)]
    assert h.paying_at(at(D - 40)) is False
    back = PaidHistory.from_list(orjson.loads(orjson.dumps(h.to_list())))
    assert back.changes == h.changes
    with pytest.raises(ValueError):
        h.on_mrr(at(D - 60), 10.0)                       # out of time order


# ---- merge ---------------------------------------------------------------------------------------


def sample_parts() -> list[FeatureContribution]:
    return [
        FeatureContribution(F, D, first_seen=at(D - 50), active_users=10, feature_users=4,
                            dau_sum=20, active_customers=3, feature_customers=2,
                            adopt_hist={10: 1, 25: 1}, with_total=2, with_kept=2,
                            without_total=1, without_kept=0),
        FeatureContribution(F, D, first_seen=None, active_users=7, feature_users=0,
                            dau_sum=0, active_customers=2, feature_customers=0,
                            adopt_hist={}, with_total=0, with_kept=0,
                            without_total=3, without_kept=2),
        FeatureContribution(F, D - 1, first_seen=at(D - 70), active_users=5, feature_users=5,
                            dau_sum=31, active_customers=1, feature_customers=1,
                            adopt_hist={25: 2, 300: 1}, with_total=1, with_kept=0,
                            without_total=0, without_kept=0),
    ]


def test_merge_sums_by_hand() -> None:
    a, b, c = sample_parts()
    m = a.merge(b).merge(c)
    assert (m.active_users, m.feature_users, m.dau_sum) == (22, 9, 51)
    assert (m.active_customers, m.feature_customers) == (6, 3)
    assert m.adopt_hist == {10: 1, 25: 3, 300: 1}
    assert (m.with_kept, m.with_total, m.without_kept, m.without_total) == (2, 3, 2, 4)
    assert m.first_seen == at(D - 70) and m.day == D - 1      # as of the oldest part
    assert a.adopt_hist == {10: 1, 25: 1}                      # the parts are unchanged


def test_merge_is_commutative_and_associative() -> None:
    parts = sample_parts()
    results = {orjson.dumps(merge_all(order).to_state())    # type: ignore[union-attr]
               for order in itertools.permutations(parts)}
    assert len(results) == 1
    a, b, c = parts
    assert a.merge(b.merge(c)) == a.merge(b).merge(c)
    assert merge_all([]) is None


def test_merge_refuses_another_feature() -> None:
    with pytest.raises(ValueError):
        sample_parts()[0].merge(FeatureContribution("sso", D))


def test_contribution_state_round_trip() -> None:
    for part in sample_parts():
        raw = orjson.dumps(part.to_state())                   # plain JSON types only
        assert FeatureContribution.from_state(orjson.loads(raw)) == part


# ---- feature stage ---------------------------------------------------------------------------------


def test_book_keeps_the_latest_contribution_per_partition() -> None:
    a, b, c = sample_parts()
    book = FeatureBook(F)
    assert book.update(0, a) and book.update(1, b)
    assert book.update(0, a) is True                       # a resend replaces, never adds
    assert book.update(1, replace_day(b, D - 3)) is False  # older than the one held
    merged = book.merged()
    assert merged is not None and merged == a.merge(b)
    assert book.released_at(None) == at(D - 50)
    assert book.released_at(at(D - 10)) == at(D - 10)       # configured wins
    back = FeatureBook.from_state(orjson.loads(orjson.dumps(book.to_state())))
    assert back.merged() == merged and back.history == book.history
    with pytest.raises(ValueError):
        book.update(2, FeatureContribution("sso", D))


def replace_day(part: FeatureContribution, day: int) -> FeatureContribution:
    return FeatureContribution.from_state({**part.to_state(), "d": day})


def test_book_history_is_bounded_once_the_after_release_figure_is_known() -> None:
    released = D * DAY_SECONDS
    book = FeatureBook(F)
    for day in range(D, D + 200):
        book.update(0, book_part(day, 1, 2))
        known = book.after_release_counts(released, partitions=1)   # as each flush asks
        assert (known is not None) == (day >= after_release_day(released))
    assert len(book.history[0]) == 40


# ---- record ----------------------------------------------------------------------------------------

CONTRACT_KEYS = {"feature", "as_of", "released_at", "active_users_30d", "feature_users_30d",
                 "adoption_rate", "customer_adoption_rate", "stickiness",
                 "adoption_30d_after_release", "median_days_to_adopt", "retention_with",
                 "retention_without", "retention_impact"}


def test_feature_record_by_hand() -> None:
    merged = FeatureContribution(F, D, active_users=830, feature_users=312, dau_sum=2901,
                                 active_customers=25, feature_customers=13,
                                 adopt_hist={60: 3, 10: 1, 90: 2},
                                 with_total=50, with_kept=47, without_total=100,
                                 without_kept=81)
    record = feature_record(F, "2026-03-02T00:00:00Z", "2025-11-01T00:00:00Z", merged,
                            n_days=30, after_release=0.2912345)
    assert set(record) == CONTRACT_KEYS
    assert record == {
        "feature": F, "as_of": "2026-03-02T00:00:00Z", "released_at": "2025-11-01T00:00:00Z",
        "active_users_30d": 830, "feature_users_30d": 312,
        "adoption_rate": 0.3759,                        # 312 / 830
        "customer_adoption_rate": 0.52,                 # 13 / 25
        "stickiness": 0.309936,                         # (2901 / 30) / 312 to 6 places
        "adoption_30d_after_release": 0.2912,
        "median_days_to_adopt": 6.0,                    # 1 6 6 6 9 9 -> (6 + 6) / 2
        "retention_with": 0.94, "retention_without": 0.81, "retention_impact": 0.13,
    }


def test_feature_record_nulls() -> None:
    merged = FeatureContribution(F, D, with_total=9, with_kept=9, without_total=4,
                                 without_kept=3)
    record = feature_record(F, "2026-03-02T00:00:00Z", None, merged, n_days=30,
                            after_release=None)
    assert set(record) == CONTRACT_KEYS
    for key in ("adoption_rate", "customer_adoption_rate", "stickiness",
                "adoption_30d_after_release", "median_days_to_adopt", "retention_with",
                "retention_without", "retention_impact"):
        assert record[key] is None, key
    assert record["active_users_30d"] == 0 and record["feature_users_30d"] == 0


def test_set_base_equals_adding_every_customer() -> None:
    """Adding only the users of f plus the base counts gives the full contribution."""
    anchor = T - 90 * DAY_SECONDS
    customers = [  # (first use or None, mau, paid from, paid until)
        (anchor - 5 * DAY_SECONDS, 3, anchor - 10 * DAY_SECONDS, None),
        (at(D - 2), 2, anchor - 10 * DAY_SECONDS, T - 1),
        (None, 4, anchor - 10 * DAY_SECONDS, None),
        (None, 0, anchor - 3 * DAY_SECONDS, anchor + DAY_SECONDS),
        (at(D - 40), 1, None, None),
        (None, 2, None, None),
    ]
    full, fast = FeatureContribution(F, D), FeatureContribution(F, D)
    active_users = active_customers = paying_n = kept_n = 0
    for first, mau, start, end in customers:
        use = None
        if first is not None:
            use = CustomerFeatures()
            use.record(F, first, "u1")
        paid = PaidHistory() if start is None else paying(start, end)
        full.add_customer(use, mau=mau, released_at=None, signup_ts=None, paid=paid)
        if use is not None:
            fast.add_customer(use, mau=0, released_at=None, signup_ts=None, paid=paid)
        active_users += mau
        active_customers += mau > 0
        if paid.paying_at(anchor):
            paying_n += 1
            kept_n += paid.paying_at(T)
    fast.set_base(active_users, active_customers, paying_n, kept_n)
    assert fast == full
    assert (full.with_total, full.without_total, full.without_kept) == (1, 3, 1)


def test_book_keeps_every_day_until_the_after_release_figure_is_known() -> None:
    """Partition 0 closes 100 days before partition 1 reports day(R) + 29."""
    released = D * DAY_SECONDS                                   # at midnight
    book = FeatureBook(F)
    target = after_release_day(released)
    for day in range(D, D + 130):
        book.update(0, book_part(day, 3 if day == target else 1, 10))
        assert book.after_release_counts(released, partitions=2) is None
    assert len(book.history[0]) == 130
    for day in range(D, target + 1):
        book.update(1, book_part(day, 5 if day == target else 1, 20))
    assert book.after_release_counts(released, partitions=2) == (8, 30)
    book.update(0, book_part(D + 130, 1, 10))
    assert len(book.history[0]) == 40                            # pruned once known


def test_a_figure_fixed_by_day_counts_in_an_older_record_is_kept() -> None:
    # Records written before exact windows held (day, users, active) and no "ax".
    r = at(D, 13)
    book = FeatureBook.from_state({"f": F, "p": [[0, book_part(D + 40, 1, 1).to_state()]],
                                   "h": [], "ar": [D + 29, 8, 40]})
    assert book.after_release_counts(r, partitions=1, lateness_days=2) == (8, 40)
    assert book.after_release == (r, 8, 40)
    other = FeatureBook.from_state({"f": F, "p": [], "h": [], "ar": [D + 29, 8, 40]})
    assert other.after_release_counts(at(D + 3), partitions=1) is None   # another release day


def test_on_event_is_on_activity_then_record() -> None:
    """The customer stage's one-call path leaves the same state as the two calls it replaces."""
    import random

    from models.activity import day_of
    from models.features import CustomerFeatures

    rng = random.Random(7)
    one, two = CustomerFeatures(), CustomerFeatures()
    for _ in range(2000):
        ts = 1_767_225_600.0 + rng.uniform(0, 40 * DAY_SECONDS)
        user = f"u{rng.randrange(12)}"
        feature = rng.choice([None, "reports", "exports"])
        one.on_event(ts, day_of(ts), user, feature)
        two.on_activity(ts, user)
        if feature is not None:
            two.record(feature, ts, user)
    assert one.to_dict() == two.to_dict()


def test_a_contribution_rebased_on_an_earlier_release_is_the_one_counted_with_it() -> None:
    """A partition counts a close with the release it knows (its own first use of f) and
    learns an earlier one from another worker afterwards: days to adopt and Σ DAU since the
    release, recounted from what the close kept, equal a close that knew it all along."""
    customers = [  # (use of f, signup)
        (use_of([(D - 12, "u1"), (D - 3, "u2"), (D, "u1")]), at(D - 40)),
        (use_of([(D - 5, "u3"), (D - 5, "u4"), (D - 1, "u3")]), at(D - 8, 3)),
        (use_of([(D - 2, "u5")]), None),
        (use_of([(D + 3, "u6")]), at(D - 30)),          # after the close: not an adopter yet
    ]

    def counted(release: float) -> tuple[FeatureContribution, ReleaseInputs]:
        part, inputs = FeatureContribution(F, D), ReleaseInputs()
        for use, signup in customers:
            part.add_customer(use, mau=0, released_at=release, signup_ts=signup, paid=None)
            inputs.add(use, F, D, signup)
        return part, inputs

    early, late = at(D - 20, 7), at(D - 4, 9)
    part, inputs = counted(late)
    other = counted(early)[0]
    assert part.dau_sum != other.dau_sum and part.adopt_hist != other.adopt_hist
    inputs.rebase(part, early)
    assert part.to_state() == counted(early)[0].to_state()
    inputs.rebase(part, late)
    assert part.to_state() == counted(late)[0].to_state()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=1.0e9, max_value=4.0e9, allow_nan=False),
                          st.sampled_from(["u1", "u2", "u3"]),
                          st.sampled_from([None, F, "sso"])), min_size=1, max_size=30))
def test_event_times_survive_the_state_round_trip_exactly(events: list[Any]) -> None:
    """Times are stored as seconds into their day, which must give back the very float: an
    after-release window edge compares them with the release time."""
    use = CustomerFeatures()
    for ts, user, feature in events:
        use.on_event(ts, day_of(ts), user, feature)
    back = CustomerFeatures.from_dict(orjson.loads(orjson.dumps(use.to_dict())))
    assert back.active == use.active and back.spans == use.spans and back.first == use.first


def test_a_record_with_times_into_the_day_is_still_read() -> None:
    """Changelog values written before the times became epoch seconds ("a", "s": seconds
    into the day) give the same spans."""
    use = CustomerFeatures()
    for k, ts in enumerate([at(D - 2, 9.5) + 0.735, at(D - 2, 17.25), at(D, 1.001)]):
        use.on_event(ts, day_of(ts), f"u{k % 2}", F if k else None)
    new = use.to_dict()

    def relative(rows: list[list[Any]]) -> list[list[Any]]:
        out = []
        for d, *flat in rows:
            base = d * DAY_SECONDS
            out.append([d, *[x if k % 3 == 0 else x - base for k, x in enumerate(flat)]])
        return out

    old = {k: v for k, v in new.items() if k not in ("A", "S")}
    old["a"] = relative(new["A"])
    old["s"] = {f: relative(rows) for f, rows in new["S"].items()}
    back = CustomerFeatures.from_dict(orjson.loads(orjson.dumps(old)))
    assert back.active == use.active and back.spans == use.spans and back.held_from is None


def _two_partitions(r0: float, r1: float, last: int) -> FeatureBook:
    """Partition 0 knows the release r0, partition 1 only its own first use r1 (later),
    and counted exactly for r1 at its fix close."""
    book = FeatureBook("reports")
    for day in range(day_of(r0), last + 1):
        p0 = FeatureContribution("reports", day, first_seen=r0, feature_users=5, active_users=9)
        p1 = FeatureContribution("reports", day, first_seen=r1, feature_users=3, active_users=7)
        if day == after_release_fix_day(r0, 2.0):
            p0.set_after_release(r0, 4, 8)
        if day == after_release_fix_day(r1, 2.0):
            p1.set_after_release(r1, 2, 6)
        book.update(0, p0)
        book.update(1, p1)
    return book


def test_a_partition_counted_for_a_later_release_is_waited_for_not_counted_by_days() -> None:
    """Partition 1 counted exactly for its own (later) first use: for the earlier release
    the figure waits for its recount, whenever the word of r0 reaches it (make chaos, seed
    1, burst + SIGKILL: fixed by days first, the figure depended on the kill moments)."""
    r0, r1 = at(D - 40, 11.5), at(D - 38, 10.7)
    last = after_release_fix_day(r0, 2.0) + 9
    book = _two_partitions(r0, r1, last)
    assert book.after_release_counts(r0, partitions=2, lateness_days=2.0) is None
    again = FeatureContribution("reports", last, first_seen=r1, feature_users=3, active_users=7)
    again.set_after_release(r0, 2, 6)
    book.update(1, again)
    assert book.after_release_counts(r0, partitions=2, lateness_days=2.0) == (6, 14)
    assert book.by_days == ()


def test_a_partition_that_cannot_count_the_earlier_release_is_counted_by_days() -> None:
    """It dropped the events of day(r0) and says so: its UTC days count, and the book
    keeps that word through its state."""
    r0, r1 = at(D - 40, 11.5), at(D - 38, 10.7)
    last = after_release_fix_day(r0, 2.0) + 9
    book = FeatureBook.from_state(_two_partitions(r0, r1, last).to_state())
    again = FeatureContribution("reports", last, first_seen=r1, feature_users=3, active_users=7)
    again.cannot_count_after(r0)
    assert FeatureContribution.from_state(again.to_state()) == again
    book.update(1, FeatureContribution.from_state(again.to_state()))
    book = FeatureBook.from_state(book.to_state())
    counts = book.after_release_counts(r0, partitions=2, lateness_days=2.0)
    assert counts is not None and book.by_days == (1,)
    day_counts = book.history[1][after_release_day(r0)]
    assert counts == (4 + day_counts[0], 8 + day_counts[1])
