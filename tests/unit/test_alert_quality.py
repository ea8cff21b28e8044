"""models/alert_quality.py on hand-computed cases: precision, recall, lead time, flaps."""
from __future__ import annotations

import pytest

from models.alert_quality import Episode, alert_quality, episodes

DAY = 86_400.0


def d(n: float) -> float:
    return n * DAY


def test_episodes_pair_firings_with_resolutions() -> None:
    got = episodes([("a", "resolved", d(1)),          # its firing is before the data: ignored
                    ("a", "firing", d(2)), ("b", "firing", d(3)), ("a", "firing", d(4)),
                    ("a", "resolved", d(5)), ("a", "firing", d(9))])
    assert got == {"a": [Episode(d(2), d(5)), Episode(d(9))], "b": [Episode(d(3))]}


def test_precision_recall_lead_time_by_hand() -> None:
    # Observed days 0..100 for all four.
    observed = {c: (d(0), d(100)) for c in ("a", "b", "c", "e")}
    churned = {"a": d(50), "b": d(80), "e": d(60)}
    by = {
        # a: fired on day 10 (40 days before churn: a miss), again on 35 (15 days before: hit)
        "a": [Episode(d(10), d(20)), Episode(d(35))],
        # b: fired on day 75 (5 days before churn: hit), and on day 85, after its churn: left out
        "b": [Episode(d(75), d(78)), Episode(d(85))],
        # c never churns: day 60 is judged (60 + 30 <= 100), day 90 is not (only 10 days left)
        "c": [Episode(d(60), d(62)), Episode(d(90))],
        # e churned on day 60 without a firing: a churner not caught
    }
    q = alert_quality(by, churned, observed, horizon_days=30)
    assert q.customers == 4 and q.flagged == 3
    assert q.firings == 5                      # a 2, b 1 (the post-churn one left out), c 2
    assert q.judged == 4                       # c's day-90 firing is not judged yet
    assert q.precision == pytest.approx(2 / 4)            # a@35, b@75 hit; a@10, c@60 miss
    assert q.customer_precision == pytest.approx(2 / 3)   # a, b of a, b, c
    assert q.churners == 3 and q.caught == 2
    assert q.recall == pytest.approx(2 / 3)
    assert q.lead_days_median == pytest.approx((15 + 5) / 2)
    assert q.flagged_share == pytest.approx(3 / 4)


def test_lead_time_is_from_the_earliest_firing_within_the_horizon() -> None:
    observed = {"a": (d(0), d(100))}
    by = {"a": [Episode(d(5), d(8)), Episode(d(22), d(24)), Episode(d(40))]}
    q = alert_quality(by, {"a": d(50)}, observed, horizon_days=30)
    # day 5 is 45 days out (miss); 22 (28 days) and 40 (10 days) hit: lead = 50 - 22
    assert q.lead_days_median == pytest.approx(28.0)
    assert q.precision == pytest.approx(2 / 3)


def test_flaps_count_refirings_after_a_resolution() -> None:
    observed = {"a": (d(0), d(182.625)), "b": (d(0), d(182.625)), "c": (d(0), d(182.625))}
    by = {
        # a: fire, resolve, fire, resolve, fire within a month (2 flaps), and one more on day 150
        "a": [Episode(d(1), d(3)), Episode(d(5), d(7)), Episode(d(10), d(12)),
              Episode(d(150), d(151))],
        # b: one long firing, never a flap
        "b": [Episode(d(20))],
    }
    q = alert_quality(by, {}, observed, horizon_days=30)
    assert q.flaps == 3
    # 3 flaps over 2 flagged customers x 2 quarters of observed time each
    assert q.flaps_per_quarter == pytest.approx(3 / 4)
    assert q.max_flaps_in_quarter == 2         # days 5 and 10; day 150 is in another quarter
    assert q.precision == pytest.approx(0.0) and q.recall is None


def test_observed_time_of_a_churner_ends_at_its_churn() -> None:
    observed = {"a": (d(0), d(200))}
    by = {"a": [Episode(d(10), d(20)), Episode(d(30))]}
    half_quarter = 365.25 / 8
    q = alert_quality(by, {"a": d(half_quarter)}, observed)
    # observed from day 0 to its churn (half a quarter), not to day 200: 1 flap = 2 a quarter
    assert q.flaps == 1
    assert q.flaps_per_quarter == pytest.approx(2.0)


def test_nothing_flagged() -> None:
    q = alert_quality({}, {"a": d(10)}, {"a": (d(0), d(50)), "b": (d(0), d(50))})
    assert (q.flagged, q.firings, q.precision, q.customer_precision) == (0, 0, None, None)
    assert q.recall == 0.0 and q.lead_days_median is None and q.flaps_per_quarter is None
    assert q.flagged_share == 0.0


def test_histogram_median_is_the_median_of_the_values_spelt_out() -> None:
    import random
    import statistics

    from models.alert_quality import histogram_median

    rng = random.Random(5)
    assert histogram_median({}) is None
    for _ in range(300):
        values = [rng.randint(0, 29) for _ in range(rng.randint(1, 12))]
        counts: dict[int, int] = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        assert histogram_median(counts) == statistics.median(values)


def test_rule_tally_precision_needs_the_minimum_and_survives_its_state() -> None:
    from models.alert_quality import RuleTally

    t = RuleTally()
    for churned in (True, False, False, True, False):
        t.judge(churned)
    t.caught(4)
    t.caught(10)
    t.caught(4)
    assert t.precision(min_judged=6) is None and t.precision(min_judged=5) == pytest.approx(0.4)
    assert t.to_record(min_judged=5) == {"firings": 5, "hits": 2, "precision": 0.4,
                                         "churners_caught": 3, "median_lead_days": 4.0}
    assert RuleTally.from_state(t.to_state()) == t
    assert RuleTally().to_record() == {"firings": 0, "hits": 0, "precision": None,
                                       "churners_caught": 0, "median_lead_days": None}
