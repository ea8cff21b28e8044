"""SIGKILL mid-stream and restart: same final figures as an uninterrupted run.

Two worker groups read the same input topics: `clean` runs undisturbed, `crash` is killed with
SIGKILL while it is busy and started again. Their figures are compared through the HTTP API,
which evaluates every customer as of its partition's final watermark (the same in both runs).
"""
from __future__ import annotations

import time

import orjson
import pytest

from streams.simulator import SimConfig, generate
from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import In, Out, group_lag

FAMILIES = ("signup", "usage", "feature", "billing", "support")


def _env(run: str) -> dict[str, str]:
    env = {f"VITALS_TOPICS__{f.upper()}": f"rs.events.{f}" for f in FAMILIES}
    env.update({
        "VITALS_APP__ID": f"rs-{run}",
        "VITALS_TOPICS__CUSTOMER": f"rs.customer.{run}",
        "VITALS_TOPICS__REPARTITION": f"rs.internal.{run}",
        "VITALS_TOPICS__DEADLETTER": f"rs.deadletter.{run}",
        "VITALS_TOPICS__FEATURE_OUT": f"rs.feature.{run}",
        "VITALS_TOPICS__BUSINESS": f"rs.business.{run}",
        "VITALS_TOPICS__ALERTS": f"rs.alerts.{run}",
    })
    return env


def _caught_up(bootstrap: str, run: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ingest = group_lag(bootstrap, f"rs-{run}-ingest", [f"rs.events.{f}" for f in FAMILIES])
        stage = group_lag(bootstrap, f"rs-{run}", [f"rs.internal.{run}"])
        if ingest == 0 and stage == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"{run} did not catch up (ingest lag {ingest}, stage lag {stage})")


def _figures(worker: WorkerProcess, customers: list[str]) -> dict[str, dict]:
    out = {}
    for cid in customers:
        status, body = worker.get(f"/customers/{cid}")
        assert status == 200, (cid, status, body)
        out[cid] = orjson.loads(body)
    return out


@pytest.mark.timeout(300)
def test_sigkill_and_restart_gives_the_same_figures(broker, tmp_path):
    events = list(generate(SimConfig(seed=11, customers=80, days=60, duplicate_fraction=0.02,
                                     start=SimConfig().start.replace(year=2027))))
    producer = In(broker.address)
    customers_seen = set()
    for family, event in events:
        cid = event.get("customer_id") or event.get("context", {}).get("groupId")
        customers_seen.add(cid)
        producer.send(f"rs.events.{family}", event, key=cid)
    producer.flush()
    customers = sorted(customers_seen)

    clean = WorkerProcess(broker.url, tmp_path / "clean.log", **_env("clean")).start()
    crash = WorkerProcess(broker.url, tmp_path / "crash.log", **_env("crash")).start()
    out = Out(broker.address, "rs.customer.crash")
    try:
        # Kill it while it is busy: once a part, not all, of the events were processed.
        deadline = time.monotonic() + 60
        while (done := crash.metric("vitals_events_total")) < len(events) * 0.3:
            assert time.monotonic() < deadline, "crash worker made no progress"
            time.sleep(0.02)
        crash.kill()
        assert done < len(events), "killed too late to test anything"
        crash.start()
        _caught_up(broker.address, "clean")
        _caught_up(broker.address, "crash")
        time.sleep(1.5)  # a few flush intervals for the last records
        expected = _figures(clean, customers)
        actual = _figures(crash, customers)
        # `churn` follows the model version each worker held when it scored the customer:
        # versions reach workers asynchronously, so it is compared nowhere (docs/chaos.md).
        diffs = {c: {k: (expected[c][k], actual[c][k]) for k in expected[c]
                     if expected[c][k] != actual[c][k] and k != "churn"}
                 for c in customers}
        diffs = {c: d for c, d in diffs.items() if d}
        assert not diffs, diffs
        # Nothing lost on the output topic either: every customer was published.
        out.wait_for(lambda o: set(customers) <= set(o.latest), timeout=30)
        assert len(events) > 10_000
    finally:
        out.close()
        clean.stop()
        crash.stop()
