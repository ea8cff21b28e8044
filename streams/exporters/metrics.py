"""Every Prometheus object of the service, in one registry (CONTRACT.md §3).

Counters are incremented on the hot path; gauges about customers are computed at scrape time
from aggregates the processor keeps up to date, so no label ever carries a customer id and the
cost of a scrape does not grow with the number of events.
"""
from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.delay import DELAY_BUCKETS
from streams.events import ERROR_CODES, FAMILIES, PROCESSING_ERROR

# `*_created` series double the exposition and no dashboard of ours reads them.
disable_created_metrics()

HEALTH_BUCKETS = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0)
TTV_BUCKETS = (1.0, 3.0, 7.0, 14.0, 30.0, 60.0, 90.0, 180.0, 365.0)
OUTCOMES = ("accepted", "duplicate", "late", "rejected")
INTERNAL = "internal"   # the `family` of messages between stages
CONTENT_TYPE = "text/plain; version=0.0.4"


class Metrics:
    """Counters of this worker plus a collector for gauges computed from processor state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter("vitals_events", "Input events by family and outcome",
                              ["family", "outcome"], registry=self.registry)
        self.deadletters = Counter("vitals_deadletter", "Events sent to the dead-letter topic",
                                   ["family", "error"], registry=self.registry)
        # Pre-create the bounded label sets so that rate() sees zeros before the first event.
        self._events = {(f, o): self.events.labels(f, o) for f in FAMILIES for o in OUTCOMES}
        self._deadletters = {(f, e): self.deadletters.labels(f, e)
                             for f in FAMILIES for e in ERROR_CODES}
        # Internal messages between stages that made a stage raise (streams/quarantine.py).
        self._deadletters[(INTERNAL, PROCESSING_ERROR)] = self.deadletters.labels(
            INTERNAL, PROCESSING_ERROR)
        # Not registered on its own: the business and feature stages count their rules' alerts
        # in the same family, which the gauge collector merges (one family per name).
        self.alerts = Counter("vitals_alerts", ALERTS_HELP, ["rule", "status"], registry=None)
        self.health_score = Histogram(
            "vitals_health_score", "Customer health scores, observed at every day close",
            ["segment"], buckets=HEALTH_BUCKETS, registry=self.registry)
        self.ttv = Histogram(
            "vitals_time_to_value_days", "Time to value, observed when a customer reaches aha",
            ["segment"], buckets=TTV_BUCKETS, registry=self.registry)
        # Arrival at the broker -> the customer record delivered (streams/delay.py).
        self.processing_delay = Histogram(
            "vitals_processing_delay_seconds",
            "Wall time from an input event's arrival at the broker (its Kafka record timestamp) "
            "to the delivery of the customer record that reflects it; the oldest event of each "
            "customer partition per flush", buckets=DELAY_BUCKETS, registry=self.registry)
        # Keyed input records that sit in another partition than their customer's (a producer
        # with another partitioner, e.g. librdkafka's default CRC32): see docs/contract.md.
        self.not_copartitioned = Counter(
            "vitals_input_not_copartitioned",
            "Input events whose topic partition is not their customer's partition (the input "
            "is not keyed by customer_id with Kafka's default murmur2 partitioner)",
            ["family"], registry=self.registry)
        self._not_copartitioned = {f: self.not_copartitioned.labels(f) for f in FAMILIES}
        self._gauges = _GaugeCollector()
        self._gauges.sources.append(self.alerts.collect)
        self.registry.register(self._gauges)
        version, commit = build_info()
        self.build_info = Gauge("vitals_build_info", "Always 1: the version and commit running",
                                ["version", "commit"], registry=self.registry)
        self.build_info.labels(version, commit).set(1)
        # The standard process_* (CPU, memory, open files) and python_info series.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def count(self, family: str, outcome: str, n: int = 1) -> None:
        self._events[(family, outcome)].inc(n)

    def not_copartitioned_event(self, family: str) -> None:
        self._not_copartitioned[family].inc()

    def deadletter(self, family: str, error: str) -> None:
        self._events[(family, "rejected")].inc()
        self._deadletters[(family, error)].inc()

    def quarantined(self, family: str) -> None:
        """A record that made a stage raise; input events also count as rejected."""
        if family in FAMILIES:
            self._events[(family, "rejected")].inc()
        self._deadletters[(family if family in FAMILIES else INTERNAL, PROCESSING_ERROR)].inc()

    def alert(self, rule: str, status: str) -> None:
        self.alerts.labels(rule, status).inc()

    def add_gauge_source(self, source: GaugeSource) -> None:
        self._gauges.sources.append(source)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


GaugeSource = Callable[[], Iterable[Metric]]
PACKAGE = "customer-vitals"
UNKNOWN = "unknown"


@functools.lru_cache(maxsize=1)
def build_info() -> tuple[str, str]:
    """(version, commit) of the running code.

    The version is the installed package's. The commit is VITALS_COMMIT when set (an image
    bakes it in at build time, where there is no git), else the checkout's HEAD when the code
    runs from a git checkout, else "unknown".
    """
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = UNKNOWN
    commit = os.environ.get("VITALS_COMMIT", "").strip() or _git_commit() or UNKNOWN
    return version, commit


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # an installed package: an enclosing repo is not ours
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class _GaugeCollector(Collector):
    def __init__(self) -> None:
        self.sources: list[GaugeSource] = []

    def collect(self) -> Iterable[Metric]:
        """Families of the same name from several sources (e.g. vitals_alerts_firing of the
        customer, business and feature stages) become one; equal label sets are added up."""
        merged: dict[str, tuple[Metric, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
        for source in self.sources:
            for family in source():
                if family.name not in merged:
                    merged[family.name] = (family, {})
                first, values = merged[family.name]
                if first.type != family.type:
                    raise ValueError(f"{family.name}: exported as {first.type} and {family.type}")
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    values[key] = values.get(key, 0.0) + sample.value
        for first, values in merged.values():
            out = Metric(first.name, first.documentation, first.type, first.unit)
            for (name, labels), value in values.items():
                out.add_sample(name, dict(labels), value)
            yield out

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


def gauge(name: str, doc: str, labels: tuple[str, ...],
          values: Mapping[tuple[str, ...], float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


ALERTS_HELP = "Alert transitions by rule and status"


def alert_counter(counts: Mapping[tuple[str, str], int], rules: Iterable[str]
                  ) -> CounterMetricFamily:
    """A stage's alert transitions as vitals_alerts_total; its rules start at 0 (for rate())."""
    family = CounterMetricFamily("vitals_alerts", ALERTS_HELP, labels=["rule", "status"])
    values = {(rule, status): 0 for rule in rules for status in ("firing", "resolved")}
    values.update(counts)
    for (rule, status), n in sorted(values.items()):
        family.add_metric([rule, status], n)
    return family


def watermark_gauges(watermark: float | None, now: Callable[[], float] = time.time
                     ) -> list[GaugeMetricFamily]:
    wm = GaugeMetricFamily("vitals_watermark_timestamp_seconds",
                           "Oldest partition watermark (event time) of this worker")
    lag = GaugeMetricFamily("vitals_event_lag_seconds",
                            "Wall clock minus the oldest partition watermark of this worker")
    if watermark is not None:
        wm.add_metric([], watermark)
        lag.add_metric([], now() - watermark)
    return [wm, lag]
