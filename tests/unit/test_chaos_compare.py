"""The chaos matrix's comparison: a counter that differs is a difference, named by its labels."""
from __future__ import annotations

from tests.chaos.harness import Outputs, compare

LABELS = (("family", "usage"), ("outcome", "late"))


def outputs(counters: dict | None) -> Outputs:
    return Outputs({"customer": {}, "business": {}, "feature_out": {}}, {}, 0, set(), 0, {},
                   counters)


def test_counters_that_differ_are_listed_by_labels() -> None:
    result = compare(outputs({LABELS: 33.0}), outputs({LABELS: 31.0}))
    assert result.differences == ['vitals_events_total{family="usage",outcome="late"}: 33 != 31']
    assert result.counters == 1 and not result.ok


def test_counters_lost_with_a_worker_are_not_compared() -> None:
    result = compare(outputs({LABELS: 33.0}), outputs(None))
    assert result.ok and result.counters == 0
