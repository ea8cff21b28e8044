"""Two workers in one group give the same business records as one worker.

Both groups read the same input topics; the two-worker group rebalances while it works (its
second worker joins after the first has started), which exercises partition hand-over too.
The revenue fields must be equal, not close: money is summed in integer micro-units, so the
order in which movements reach the business stage does not matter. The customer aggregates
(avg health, at-risk, ...) are the partitions' latest summaries when a record was emitted and
are not compared.
"""
from __future__ import annotations

import time

import pytest

from streams.simulator import SimConfig, generate
from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import In, Out, group_lag

FAMILIES = ("signup", "usage", "feature", "billing", "support")
REVENUE_FIELDS = ("mrr_start", "mrr_end", "new", "expansion", "contraction", "churn",
                  "reactivation", "nrr", "grr", "expansion_rate", "customers_start",
                  "customers_end", "customers_churned", "logo_retention", "arpa", "final",
                  "clv", "churn_rate", "period", "scope")


def _env(run: str) -> dict[str, str]:
    env = {f"VITALS_TOPICS__{f.upper()}": f"tw.events.{f}" for f in FAMILIES}
    for name in ("customer", "deadletter", "alerts", "business", "feature_out"):
        env[f"VITALS_TOPICS__{name.upper()}"] = f"tw.{name}.{run}"
    env.update({"VITALS_APP__ID": f"tw-{run}", "VITALS_TOPICS__REPARTITION": f"tw.internal.{run}",
                "VITALS_TOPICS__BUSINESS_INTERNAL": f"tw.internal-business.{run}"})
    return env


def _settle(bootstrap: str, run: str, out: Out, timeout: float = 150.0) -> None:
    """Caught up: no lag in any group of the run, then no new record for a while."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lags = (group_lag(bootstrap, f"tw-{run}-ingest", [f"tw.events.{f}" for f in FAMILIES])
                + group_lag(bootstrap, f"tw-{run}", [f"tw.internal.{run}",
                                                      f"tw.internal-business.{run}"]))
        if lags == 0:
            seen = len(out.records)
            time.sleep(3.0)
            if len(out.records) == seen:
                return
        time.sleep(0.5)
    raise AssertionError(f"{run} did not settle")


@pytest.mark.full  # make test-full (a subset of make chaos; see the Makefile)
@pytest.mark.timeout(400)
def test_two_workers_give_the_same_business_records_as_one(broker, tmp_path):
    producer = In(broker.address)
    for family, event in generate(SimConfig(seed=21, customers=120, days=120)):
        cid = event.get("customer_id") or event.get("context", {}).get("groupId")
        producer.send(f"tw.events.{family}", event, key=cid)
    producer.flush()

    one = WorkerProcess(broker.url, tmp_path / "one.log", **_env("one")).start()
    first = WorkerProcess(broker.url, tmp_path / "a.log", **_env("two")).start()
    second = WorkerProcess(broker.url, tmp_path / "b.log", **_env("two")).start()
    out_one = Out(broker.address, "tw.business.one")
    out_two = Out(broker.address, "tw.business.two")
    try:
        _settle(broker.address, "one", out_one)
        _settle(broker.address, "two", out_two)
        a = {k: {f: v[f] for f in REVENUE_FIELDS} for k, v in out_one.latest.items()}
        b = {k: {f: v[f] for f in REVENUE_FIELDS} for k, v in out_two.latest.items()}
        assert len(a) >= 20, sorted(a)  # 5 scopes x 4 months
        only = sorted(set(a) ^ set(b))
        assert not only, [(k, r) for k, r in out_one.records + out_two.records if k in only][:6]
        diffs = {k: {f: (a[k][f], b[k][f]) for f in REVENUE_FIELDS if a[k][f] != b[k][f]}
                 for k in a if a[k] != b[k]}
        assert not diffs, diffs  # key -> field -> (one worker, two workers)
        # Both workers of the second group did work.
        assert first.metric("vitals_events_total") > 0 and second.metric("vitals_events_total") > 0
    finally:
        out_one.close()
        out_two.close()
        for w in (one, first, second):
            w.stop()
