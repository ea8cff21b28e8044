"""Every alert rule is counted in vitals_alerts_total and vitals_alerts_firing: customer rules
(processor), business rules (business stage) and feature rules (feature stage), merged into one
family per name in the worker's exposition."""
from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streams.business import BusinessAggregator
from streams.exporters.metrics import Metrics, gauge
from streams.features import FeatureAggregator
from tests.unit.test_business_gauges import HISTORY, SCOPES, part, run, settings, ts
from tests.unit.test_feature_stage import R, feed
from tests.unit.test_feature_stage import settings as feature_settings


def exposition(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = metrics.exposition().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"{family.name} exported twice"
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    for name in ("vitals_alerts_total", "vitals_alerts_firing"):
        assert text.count(f"# TYPE {name} ") == 1, name
    return out


def transitions(alerts: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for a in alerts:
        counts[(a["rule"], a["status"])] = counts.get((a["rule"], a["status"]), 0) + 1
    return counts


def test_business_rules_are_counted_when_they_fire_and_resolve() -> None:
    aggregator = BusinessAggregator(settings(), {})
    _, alerts = run(aggregator, HISTORY + [part(s, ts(2026, 3, 4)) for s in SCOPES])
    fired = transitions(alerts)
    assert fired[("nrr_below_100", "firing")] >= 1   # scope all's February: 0.67
    assert aggregator.alert_counts == fired
    firing = {(a["rule"], a["severity"]): 0 for a in alerts}
    for a in alerts:
        firing[(a["rule"], a["severity"])] += 1
    metrics = Metrics()
    metrics.add_gauge_source(aggregator.gauges)
    got = exposition(metrics)
    for (rule, status), n in fired.items():
        assert got["vitals_alerts_total"][(("rule", rule), ("status", status))] == n
    for (rule, severity), n in firing.items():
        assert got["vitals_alerts_firing"][(("rule", rule), ("severity", severity))] == n
    # Rules that never fired are there at 0, so rate() and increase() see the first firing.
    assert got["vitals_alerts_total"][(("rule", "success_rate_low"), ("status", "firing"))] == 0

    # April: every scope keeps its MRR through March and April becomes final in May. NRR of
    # the finished month is 1 again: the alerts resolve, counted, and stop firing.
    _, later = run(aggregator, [part(s, ts(2026, 5, 4)) for s in SCOPES])
    resolved = transitions(later)
    assert resolved.get(("nrr_below_100", "resolved"), 0) == fired[("nrr_below_100", "firing")]
    got = exposition(metrics)
    assert got["vitals_alerts_total"][(("rule", "nrr_below_100"), ("status", "resolved"))] == \
        resolved[("nrr_below_100", "resolved")]
    assert (("rule", "nrr_below_100"), ("severity", "critical")) not in got["vitals_alerts_firing"]


def test_feature_rules_are_counted_and_only_by_the_owner() -> None:
    stage = FeatureAggregator(feature_settings(), {})
    fired = []
    for day in range(R, R + 40):
        fired += feed(stage, "reports", day, (2, 3))["alerts"]   # adoption 5 %: fires once
    assert [(a["rule"], a["status"]) for a in fired] == [("feature_adoption_low", "firing")]
    metrics = Metrics()
    metrics.add_gauge_source(stage.gauges)
    got = exposition(metrics)
    assert got["vitals_alerts_total"][(("rule", "feature_adoption_low"), ("status", "firing"))] == 1
    assert got["vitals_alerts_firing"][(("rule", "feature_adoption_low"),
                                        ("severity", "warning"))] == 1
    stage.revoke({"reports"})  # another worker owns it now: its firing alert is exported there
    got = exposition(metrics)
    assert not got.get("vitals_alerts_firing")


def test_customer_business_and_feature_alerts_in_one_family() -> None:
    """The customer stage counts in Metrics.alerts, the stages in their own gauges; a scrape
    shows one family of each name, equal label sets added up."""
    metrics = Metrics()
    metrics.alert("health_red", "firing")
    metrics.alert("health_red", "firing")
    aggregator = BusinessAggregator(settings(), {})
    _, alerts = run(aggregator, HISTORY + [part(s, ts(2026, 3, 4)) for s in SCOPES])
    stage = FeatureAggregator(feature_settings(), {})
    for day in range(R, R + 40):
        feed(stage, "reports", day, (2, 3))
    metrics.add_gauge_source(aggregator.gauges)
    metrics.add_gauge_source(stage.gauges)
    # A customer-stage source of the same family (as processor.gauges() exports it).
    metrics.add_gauge_source(lambda: [gauge("vitals_alerts_firing", "Alerts currently firing",
                                            ("rule", "severity"),
                                            {("health_red", "critical"): 2.0,
                                             ("feature_adoption_low", "warning"): 1.0})])
    got = exposition(metrics)
    total = got["vitals_alerts_total"]
    assert total[(("rule", "health_red"), ("status", "firing"))] == 2
    assert total[(("rule", "feature_adoption_low"), ("status", "firing"))] == 1
    assert total[(("rule", "nrr_below_100"), ("status", "firing"))] == \
        transitions(alerts)[("nrr_below_100", "firing")]
    firing = got["vitals_alerts_firing"]
    assert firing[(("rule", "health_red"), ("severity", "critical"))] == 2
    assert firing[(("rule", "feature_adoption_low"), ("severity", "warning"))] == 2  # 1 + 1
