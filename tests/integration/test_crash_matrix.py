"""The determinism and crash matrices, small: what `make test` runs of `make chaos`.

One hostile dataset (late events within the lateness, bad clocks of 2099 and 1970, malformed
records and duplicates; `tests/chaos/matrix.py` `hostile`) and one reference: an
uninterrupted memory:// worker on pre-filled topics. Each test disturbs one run and compares
every output with the reference, field by field: the last record per key of every output
topic, every alert transition and every dead letter. The full matrix (1-5 workers, paced
arrival, joins and leaves, both stores, more kills) is `make chaos` (docs/chaos.md).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from streams.simulator import SimConfig, generate
from tests.chaos.harness import Outputs, Run, compare, fill, kill_moments, report
from tests.chaos.matrix import hostile
from tests.integration.kafka import In

SEED = 5
KILLS = 5
PREFIX = "cm"


@pytest.fixture(scope="module")
def reference(broker, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[list[tuple[str, Any]], Outputs, float, Path]:
    """The events, the reference's outputs, the seconds it took, a log folder."""
    logs = tmp_path_factory.mktemp("crash-matrix")
    events = hostile(list(generate(SimConfig(seed=SEED, customers=40, days=45,
                                             bad_fraction=0.005, duplicate_fraction=0.01))),
                     SEED)
    fill(broker.address, PREFIX, events)
    run = Run(broker.url, broker.address, PREFIX, "ref", 1, logs).start()
    try:
        span = run.wait_caught_up()
        return events, run.outputs(), span, logs
    finally:
        run.stop()


def _check(name: str, expected: Outputs, actual: Outputs) -> None:
    result = compare(expected, actual)
    assert result.keys > 40, "the reference produced too little to compare"
    # Every record of every output topic, alert transition and dead letter is the reference's.
    print(report(name, result))
    assert result.ok, report(name, result)
    if result.series:
        # Known gap (docs/chaos.md): a day closed again after a crash can differ from the
        # first close. Reported as not finished, not as passed.
        pytest.xfail(f"{name}: daily series {len(result.series)} differences: "
                     f"{result.series[:3]}")


@pytest.mark.timeout(600)
def test_sigkills_at_random_moments_change_no_output(broker, reference):
    _, expected, span, logs = reference
    # The production store: the record and the clock come back from RocksDB plus the
    # changelog tail, not from a full changelog read as with memory:// (the reference).
    crash = Run(broker.url, broker.address, PREFIX, "crash", 1, logs,
                store="rocksdb://").start()
    try:
        started = time.monotonic()
        for moment in kill_moments(SEED, KILLS, max(span, 8.0)):
            time.sleep(max(0.0, started + moment - time.monotonic()))
            crash.kill_and_restart(0)
        crash.wait_caught_up()
        actual = crash.outputs()
    finally:
        crash.stop()
    assert crash.kills == KILLS
    _check("sigkill x5, one worker, rocksdb://", expected, actual)


def _burst(broker, reference, name: str, kills: int) -> None:
    events, expected, span, logs = reference
    run = Run(broker.url, broker.address, PREFIX, name, 2, logs, store="rocksdb://",
              input_prefix=f"{PREFIX}-{name}").start()
    try:
        started = time.monotonic()
        In(broker.address).send_events(run.inputs, events)
        for i, moment in enumerate(kill_moments(SEED + 1, kills, max(span, 8.0)) if kills else ()):
            time.sleep(max(0.0, started + moment - time.monotonic()))
            run.kill_and_restart(i % 2)
        run.wait_caught_up()
        actual = run.outputs()
    finally:
        run.stop()
    assert run.kills == kills
    _check(f"burst into 2 running workers, sigkill x{kills}, rocksdb://", expected, actual)


@pytest.mark.full  # make test-full: one feature's days to adopt can differ (docs/chaos.md)
@pytest.mark.timeout(600)
def test_a_burst_into_two_running_workers_changes_no_output(broker, reference):
    """Arrival and worker count: two rocksdb:// workers are up before the events, which are
    produced as fast as possible into input topics of their own."""
    _burst(broker, reference, "burst", 0)


@pytest.mark.full  # make test-full: not yet exact (1 run of 2 differed in 4 fields)
@pytest.mark.timeout(600)
def test_a_burst_into_two_running_workers_with_sigkills_changes_no_output(broker, reference):
    """Arrival, worker count and crashes at once: the burst above, with workers killed at
    seeded random moments while they work it off."""
    _burst(broker, reference, "burstkill", 3)
