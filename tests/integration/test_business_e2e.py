"""`vitals.business` revenue figures against a plain batch computation of the same history.

The batch side (`tests/integration/batch_revenue.py`) knows nothing of the service: it builds
every customer's MRR timeline from the sorted subscription events and reads the month
boundaries off it. The streaming side is the service itself, first in process (customer stage
and business stage driven by plain calls, no broker), then end to end through the embedded
broker with a worker of its own.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import pytest

from streams.simulator import SimConfig, generate
from tests.inprocess import valid_events
from tests.integration import batch_revenue as batch
from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import In, Out, group_lag

FAMILIES = ("signup", "usage", "feature", "billing", "support")
LATENESS = 2 * 86400.0  # default time.lateness_days
Records = dict[tuple[str, str], dict[str, Any]]
History = list[tuple[str, dict[str, Any]]]

# The business stage's as_of is the oldest watermark among the customer partitions that have
# *reported* to the scope so far (BusinessAggregator.as_of); a partition that has not reported
# yet does not hold it back. When the customer stage works through one partition's backlog
# ahead of the others (a replay, a start or a rebalance with a backlog), as_of jumps ahead,
# months are opened, declared final and - more than OPEN_MONTHS_KEPT months back - closed before
# the other partitions' movements for them arrive. Those movements are then only carried into
# the open months: a closed month's record keeps missing them, and a month older than a scope's
# first book (opened at the jumped as_of) gets no record at all. And when a late partition
# reports, as_of goes back down: a month republished then says `final: false`, and stays so
# (state.final keeps it from being published as final again before it is closed).


# -- helpers ----------------------------------------------------------------------------------


def _by_scope_and_period(latest: Iterable[tuple[str, Mapping[str, Any]]]) -> Records:
    out: Records = {}
    for key, record in latest:
        assert key == f"{record['scope']}|{record['period']}", (key, record)
        out[(record["scope"], record["period"])] = dict(record)
    return out


def _trail(history: History, key: str, fields: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """The given fields of every record published under `key`, in order."""
    return [tuple(r.get(f) for f in fields) for k, r in history if k == key]


def _assert_batch_and_final(expected, actual, history) -> None:
    """Both checks, reported together: a wrong month usually breaks both."""
    problems = []
    for check in (lambda: _assert_matches_batch(expected, actual, history),
                  lambda: _assert_final(actual, history)):
        try:
            check()
        except AssertionError as exc:
            problems.append(str(exc)[:3000])
    assert not problems, "\n".join(problems)


def _assert_identity(actual: Records) -> None:
    broken = {}
    for key, rec in actual.items():
        scale = max(1.0, *(abs(rec[f]) for f in ("mrr_start", "mrr_end", *batch.MOVEMENTS)))
        if batch.identity_error(rec) > 1e-6 * scale:
            broken[key] = {f: rec[f] for f in ("mrr_start", "mrr_end", *batch.MOVEMENTS)}
    assert not broken, f"mrr_end != bridge for {len(broken)} records: {broken}"


def _assert_matches_batch(expected: Records, actual: Records, history: History) -> None:
    """Same (scope, month) set and the same revenue figures.

    The service may open a scope's books before its first movement (its months roll from the
    first watermark report that reaches the scope); such months must be empty and earlier than
    the scope's first movement month. Every month of the batch computation must be there.
    """
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"no streaming record for {missing}"
    first: dict[str, str] = {}
    for scope, month in expected:
        first[scope] = min(month, first.get(scope, month))
    for scope, month in sorted(set(actual) - set(expected)):
        rec = actual[(scope, month)]
        assert scope in first and month < first[scope], (scope, month, rec)
        assert all(rec[f] == 0 for f in ("mrr_start", "mrr_end", *batch.MOVEMENTS,
                                         "customers_start", "customers_end")), (scope, month, rec)
    diffs = {key: d for key in sorted(expected)
             if (d := batch.differences(expected[key], actual[key]))}
    trail = {f"{s}|{m}": _trail(history, f"{s}|{m}", ("as_of", "final", "mrr_end", "new",
                                                       "customers_end"))
             for s, m in list(diffs)[:3]}
    assert not diffs, (f"{len(diffs)} of {len(expected)} (scope, month) records differ "
                       f"(field: (batch, streaming)): {diffs}; (as_of, final, mrr_end, new, "
                       f"customers_end) of the records published for them, in order: {trail}")


def _month_end(month: str) -> float:
    return batch.month_bounds(month)[1]


def _assert_final(actual: Records, history: History) -> None:
    """A month is final once the scope's as_of (its slowest partition's watermark) is past the
    month's end plus the allowed lateness. The simulated years end on Dec 31: every month but
    the last two is final, the last one is not, and the one before it is final exactly when the
    last record's as_of is 2 days or more into the last month."""
    wrong = {}
    for scope in sorted({s for s, _ in actual}):
        months = sorted(m for s, m in actual if s == scope)
        as_of = batch.parse_ts(actual[(scope, months[-1])]["as_of"])
        assert as_of is not None, (scope, months[-1])
        want = {m: True for m in months[:-2]}
        want[months[-2]] = as_of >= _month_end(months[-2]) + LATENESS
        want[months[-1]] = False
        for m, final in want.items():
            if actual[(scope, m)]["final"] is not final:
                wrong[f"{scope}|{m}"] = _trail(history, f"{scope}|{m}", ("as_of", "final"))
    assert not wrong, ("wrong `final` flag; (as_of, final) of the records published for "
                       f"them, in order: {wrong}")


# -- in process -------------------------------------------------------------------------------


def _stream_in_process(events: list[tuple[str, Any]], partitions: int = 1,
                       head_start_days: float = 0.0) -> tuple[Records, History]:
    """The customer stage and the business stage fed by plain calls, a flush every ~2000 events.

    With several customer partitions (murmur2 on customer_id, as the worker routes them),
    partition 0's events of the first `head_start_days` are applied before any other, as a
    worker may when it reads one partition's backlog ahead of the others.
    """
    from streams.business import BusinessAggregator
    from streams.exporters.metrics import Metrics
    from streams.processor import CustomerProcessor
    from streams.settings import load_settings
    from streams.topics import Partitioner

    # app.partitions = the number of customer partitions the business stage hears from. One
    # partition: otherwise the default settings (max skew 1 day). Several: a partition on its
    # own can be quiet for more than a day early on, so the skew is the suite's (test.toml).
    env = {"VITALS_APP__PARTITIONS": str(partitions)}
    if partitions > 1:
        env["VITALS_TIME__MAX_SKEW_DAYS"] = "36500"
    settings = load_settings(env=env)
    partition_of = (lambda c: 0) if partitions == 1 else Partitioner(partitions)
    processor = CustomerProcessor(settings, {}, {}, Metrics(), partition_of=partition_of,
                                  wall_clock=time.time)  # as the service: skew vs wall clock too
    aggregator = BusinessAggregator(settings, {})
    history: History = []

    def run(chunk: list[dict[str, Any]]) -> None:
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for event in chunk:
            by_partition.setdefault(partition_of(event["customer_id"]), []).append(event)
        for p, batch_ in sorted(by_partition.items()):
            assert not processor.apply(p, batch_)  # in time order: nothing dead-lettered
        out = processor.flush()
        aggregator.apply([orjson.loads(v) for _, v in out.business])
        for key, value in aggregator.flush().records:
            history.append((key, orjson.loads(value)))

    valid = list(valid_events(events, settings))
    ahead: list[dict[str, Any]] = []
    if head_start_days:
        split = valid[0]["ts"] + head_start_days * 86400.0
        ahead = [e for e in valid if e["ts"] < split and partition_of(e["customer_id"]) == 0]
        valid = [e for e in valid if not (e["ts"] < split
                                          and partition_of(e["customer_id"]) == 0)]
    for stream in (ahead, valid):
        for i in range(0, len(stream), 2000):
            run(stream[i:i + 2000])
    return _by_scope_and_period(dict(history).items()), history


@functools.cache
def _year() -> tuple[list[tuple[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
    """The in-process tests' simulated year and its batch figures (read-only; ~20 s to make)."""
    # 2025: all of it in the past, as history is (the wall clock bounds the future).
    events = list(generate(SimConfig(seed=5, customers=200, days=365,
                                     start=SimConfig().start.replace(year=2025))))
    return events, batch.compute(events)


@pytest.mark.timeout(300)
def test_identity_holds_for_every_scope_and_month_of_a_simulated_year():
    events, expected = _year()
    actual, history = _stream_in_process(events)

    # A year, every scope: all + the four segments, 12 months each, and a bridge that moves.
    assert {s for s, _ in expected} == {"all", "segment:enterprise", "segment:mid_market",
                                        "segment:smb", "segment:solo"}
    assert len(expected) >= 55
    for kind, months in (("new", 40), ("expansion", 20), ("contraction", 10), ("churn", 10),
                         ("reactivation", 1)):
        assert sum(r[kind] > 0 for r in expected.values()) >= months, kind
    _assert_identity(actual)
    _assert_identity(expected)
    _assert_matches_batch(expected, actual, history)


@pytest.mark.timeout(300)
def test_business_records_do_not_depend_on_which_customer_partition_is_read_first():
    """Deterministic form of what the replay below runs into: 4 customer partitions, partition
    0's first 120 days applied before the other partitions start."""
    events, expected = _year()
    actual, history = _stream_in_process(events, partitions=4, head_start_days=120)
    _assert_identity(actual)
    _assert_batch_and_final(expected, actual, history)


# -- end to end -------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {f"VITALS_TOPICS__{f.upper()}": f"bz.events.{f}" for f in FAMILIES}
    env.update({
        "VITALS_APP__ID": "bz",
        "VITALS_TOPICS__CUSTOMER": "bz.customer",
        "VITALS_TOPICS__FEATURE_OUT": "bz.feature",
        "VITALS_TOPICS__BUSINESS": "bz.business",
        "VITALS_TOPICS__ALERTS": "bz.alerts",
        "VITALS_TOPICS__DEADLETTER": "bz.deadletter",
        "VITALS_TOPICS__REPARTITION": "bz.internal.events",
        "VITALS_TOPICS__BUSINESS_INTERNAL": "bz.internal.business",
    })
    return env


def _settle(bootstrap: str, out: Out, timeout: float = 240.0, quiet: float = 3.0) -> None:
    """Caught up: no lag in the ingest group nor in the stage group, then no new business
    record for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    ingest = stage = -1
    while time.monotonic() < deadline:
        ingest = group_lag(bootstrap, "bz-ingest", [f"bz.events.{f}" for f in FAMILIES])
        stage = group_lag(bootstrap, "bz", ["bz.internal.events", "bz.internal.business"])
        if ingest == 0 and stage == 0:
            seen = len(out.records)
            time.sleep(quiet)
            if len(out.records) == seen:
                return
        time.sleep(0.5)
    raise AssertionError(f"bz did not settle (ingest lag {ingest}, stage lag {stage}, "
                         f"{len(out.records)} business records)")


@pytest.mark.timeout(300)
def test_replay_of_a_simulated_year_matches_the_batch_computation(broker, tmp_path):
    # A producer retry now and then (duplicate_fraction): both sides must count them once.
    events = list(generate(SimConfig(seed=5, customers=50, days=365, duplicate_fraction=0.01)))
    expected = batch.compute(events)
    In(broker.address).send_events("bz", events)

    worker = WorkerProcess(broker.url, tmp_path / "worker.log", **_env()).start()
    out = Out(broker.address, "bz.business")
    try:
        _settle(broker.address, out)
        history = list(out.records)
    finally:
        out.close()
        worker.stop()
    actual = _by_scope_and_period(dict(history).items())

    assert len(events) > 150_000  # a year of 50 customers, about 190,000 events
    _assert_identity(actual)
    _assert_batch_and_final(expected, actual, history)
