"""The business stage's Prometheus gauges (streams/business.py `gauges()`): per-segment families
sum to scope all, company-wide ratios in their own families, finished-month NRR/GRR, and only
the scopes a worker owns."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streams.business import BusinessAggregator, empty_summary
from streams.settings import load_settings


def ts(y: int, m: int, d: int, h: int = 12) -> float:
    return datetime(y, m, d, h, tzinfo=UTC).timestamp()


def settings():
    return load_settings(env={"VITALS_APP__PARTITIONS": "1"})


def mv(scope: str, cid: str, n: int, kind: str, amount: float, when: float, old: float,
       new: float, month_start: float) -> dict[str, Any]:
    month = datetime.fromtimestamp(when, UTC).strftime("%Y-%m")
    return {"t": "mv", "scope": scope, "cid": cid, "mv": {
        "kind": kind, "amount": amount, "ts": when, "old_mrr": old, "new_mrr": new,
        "month": month, "event_id": f"{cid}-{n}", "month_start_mrr": month_start}}


def movements(cid: str, segment: str, history: list[tuple[str, float, float, float, float,
                                                           float]]) -> list[dict[str, Any]]:
    """A customer's movements, to scope all and to its segment (as the customer stage sends)."""
    out = []
    for n, (kind, amount, when, old, new, start) in enumerate(history):
        for scope in ("all", f"segment:{segment}"):
            out.append(mv(scope, cid, n, kind, amount, when, old, new, start))
    return out


def part(scope: str, wm: float) -> dict[str, Any]:
    return {"t": "part", "scope": scope, "p": 0, "wm": wm, "sum": empty_summary()}


SCOPES = ("all", "segment:smb", "segment:enterprise")
# smb: c1 100 from January, churns in February. enterprise: c2 500 from January, contracts to
# 400 in February, nothing in March. Scope all: February NRR 400/600, March so far 400/400.
HISTORY = [
    *movements("c1", "smb", [("new", 100.0, ts(2026, 1, 5), 0.0, 100.0, 0.0),
                             ("churn", 100.0, ts(2026, 2, 10), 100.0, 0.0, 100.0)]),
    *movements("c2", "enterprise", [("new", 500.0, ts(2026, 1, 7), 0.0, 500.0, 0.0),
                                    ("contraction", 100.0, ts(2026, 2, 12), 500.0, 400.0, 500.0)]),
    *movements("c3", "smb", [("new", 50.0, ts(2026, 3, 2), 0.0, 50.0, 0.0)]),
]


def run(aggregator: BusinessAggregator, messages: list[dict[str, Any]]
        ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    aggregator.apply(messages)
    out = aggregator.flush()
    return ({k: orjson.loads(v) for k, v in out.records},
            [orjson.loads(v) for _, v in out.alerts])


def samples(families: list[Any], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    (family,) = [f for f in families if f.name == name]
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


@pytest.fixture()
def fed() -> tuple[BusinessAggregator, dict[str, dict[str, Any]], list[dict[str, Any]]]:
    aggregator = BusinessAggregator(settings(), {})
    records, alerts = run(aggregator, HISTORY + [part(s, ts(2026, 3, 4)) for s in SCOPES])
    return aggregator, records, alerts


def test_segment_mrr_sums_to_scope_all(fed) -> None:
    aggregator, records, _ = fed
    families = aggregator.gauges()
    mrr = samples(families, "vitals_mrr")
    assert set(mrr) == {(("segment", "smb"),), (("segment", "enterprise"),)}, "no segment=all"
    assert sum(mrr.values()) == pytest.approx(records["all|2026-03"]["mrr_end"])
    assert sum(mrr.values()) == pytest.approx(450.0)
    moves = samples(families, "vitals_mrr_movement")
    assert all(dict(k)["segment"] != "all" for k in moves)
    assert sum(v for k, v in moves.items() if dict(k)["movement"] == "new") == pytest.approx(
        records["all|2026-03"]["new"])
    for name in ("vitals_nrr_ratio", "vitals_grr_ratio", "vitals_logo_retention_ratio"):
        assert all(dict(k)["segment"] != "all" for k in samples(families, name)), name


def test_company_ratios_have_their_own_family(fed) -> None:
    aggregator, records, _ = fed
    families = aggregator.gauges()
    now = records["all|2026-03"]
    assert samples(families, "vitals_company_nrr_ratio") == {(): pytest.approx(now["nrr"])}
    assert samples(families, "vitals_company_grr_ratio") == {(): pytest.approx(now["grr"])}
    assert samples(families, "vitals_company_logo_retention_ratio") == {
        (): pytest.approx(now["logo_retention"])}
    assert samples(families, "vitals_nrr_ratio")[(("segment", "enterprise"),)] == pytest.approx(
        records["segment:enterprise|2026-03"]["nrr"])


def test_final_month_figures_are_the_last_finished_month(fed) -> None:
    aggregator, records, _ = fed
    families = aggregator.gauges()
    february = records["all|2026-02"]
    assert february["final"] and not records["all|2026-03"]["final"]
    # The month-to-date figure (March, 3 days in) and the finished month's differ here.
    assert february["nrr"] == round(400 / 600, 4)           # published to 4 decimals
    assert samples(families, "vitals_company_nrr_ratio")[()] == pytest.approx(1.0)
    assert samples(families, "vitals_company_nrr_final_ratio") == {
        (): pytest.approx(february["nrr"])}
    assert samples(families, "vitals_company_grr_final_ratio") == {
        (): pytest.approx(february["grr"])}
    final = samples(families, "vitals_nrr_final_ratio")
    assert final == {(("segment", "smb"),): pytest.approx(records["segment:smb|2026-02"]["nrr"]),
                     (("segment", "enterprise"),): pytest.approx(
                         records["segment:enterprise|2026-02"]["nrr"])}
    assert final[(("segment", "smb"),)] == 0.0


def test_no_final_month_no_final_series() -> None:
    aggregator = BusinessAggregator(settings(), {})
    january = [m for m in HISTORY if m["mv"]["month"] == "2026-01"]
    run(aggregator, january + [part(s, ts(2026, 1, 20)) for s in SCOPES])
    families = aggregator.gauges()
    assert samples(families, "vitals_company_nrr_final_ratio") == {}
    assert samples(families, "vitals_nrr_final_ratio") == {}
    assert sum(samples(families, "vitals_mrr").values()) == pytest.approx(600.0)


def test_a_worker_exports_only_the_scopes_it_owns() -> None:
    """Two workers, scopes split between them: the sum over both is scope all's mrr_end, and a
    scope held in a store without being owned (standby, handed over) is not exported."""
    s = settings()
    store_a: dict[str, Any] = {}
    a, b = BusinessAggregator(s, store_a), BusinessAggregator(s, {})
    ticks = [part(sc, ts(2026, 3, 4)) for sc in SCOPES]
    rec_a, _ = run(a, [m for m in HISTORY + ticks if m["scope"] in ("all", "segment:smb")])
    run(b, [m for m in HISTORY + ticks if m["scope"] == "segment:enterprise"])
    total = sum(samples(a.gauges(), "vitals_mrr").values()) + sum(
        samples(b.gauges(), "vitals_mrr").values())
    assert total == pytest.approx(rec_a["all|2026-03"]["mrr_end"])
    # A copy of the enterprise scope in A's store (a standby replica) changes nothing.
    store_a["segment:enterprise"] = b.store["segment:enterprise"]
    assert set(samples(a.gauges(), "vitals_mrr")) == {(("segment", "smb"),)}
    # Revoked: gone from the gauges, whatever the store still holds.
    a.revoke({"all"})
    assert samples(a.gauges(), "vitals_company_nrr_ratio") == {}
    assert samples(a.gauges(), "vitals_company_nrr_final_ratio") == {}


def test_every_documented_metric_is_exported() -> None:
    """docs/metrics-prometheus.md lists metrics beyond CONTRACT.md §3 that rules and dashboards
    may use: each is exported by a stage of the worker."""
    import re
    from pathlib import Path

    from streams.exporters.metrics import Metrics
    from streams.features import FeatureAggregator
    from streams.processor import CustomerProcessor

    doc = Path(__file__).resolve().parents[2] / "docs" / "metrics-prometheus.md"
    documented = set(re.findall(r"^\|\s*`(vitals_\w+)`\s*\|", doc.read_text(encoding="utf-8"), re.M))
    assert len(documented) >= 15
    s = settings()
    business = BusinessAggregator(s, {})
    processor = CustomerProcessor(s, {}, {}, Metrics(), partition_of=lambda c: 0)
    from streams.churn import ChurnLearner

    learner = ChurnLearner(s.churn)
    families = [*business.gauges(), *FeatureAggregator(s, {}).gauges(), *processor.gauges(),
                *learner.gauges()]
    # A counter family is named without _total; its sample (and the documented series) has it.
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert documented <= exported, documented - exported
    # The company families exist for every per-segment ratio, and hold no segment label.
    for f in business.gauges():
        if f.name.startswith("vitals_company_"):
            assert f.name in documented and all("segment" not in x.labels for x in f.samples)


def test_simulated_history_through_the_customer_and_business_stages() -> None:
    """The real pipeline (customer stage -> business stage, two customer partitions, two
    workers' worth of scopes): at every flush, sum(vitals_mrr) over the segments is the
    current month's mrr_end of scope all, and no series carries segment="all"."""
    from streams.exporters.metrics import Metrics
    from streams.processor import CustomerProcessor
    from streams.simulator import SimConfig, generate
    from streams.topics import Partitioner
    from tests.inprocess import valid_events

    s = load_settings(env={"VITALS_APP__PARTITIONS": "2", "VITALS_TIME__MAX_SKEW_DAYS": "36500"})
    partition_of = Partitioner(2)
    processor = CustomerProcessor(s, {}, {}, Metrics(), partition_of=partition_of,
                                  wall_clock=None)
    workers = [BusinessAggregator(s, {}), BusinessAggregator(s, {})]
    latest: dict[str, dict[str, Any]] = {}
    events = list(valid_events(generate(SimConfig(seed=3, customers=30, days=100)), s))
    checked = 0
    for i in range(0, len(events), 1000):
        for event in events[i:i + 1000]:
            assert not processor.apply(partition_of(event["customer_id"]), [event])
        out = processor.flush()
        for w, worker in enumerate(workers):  # scopes split between two workers
            worker.apply([orjson.loads(v) for k, v in out.business if partition_of(k) == w])
            for key, value in worker.flush().records:
                latest[key] = orjson.loads(value)
        months = sorted(k.split("|")[1] for k in latest if k.startswith("all|"))
        if not months:
            continue
        mrr: dict[tuple[tuple[str, str], ...], float] = {}
        for worker in workers:
            for k, v in samples(worker.gauges(), "vitals_mrr").items():
                assert k not in mrr, f"{k} exported by two workers"
                mrr[k] = v
        assert all(dict(k)["segment"] != "all" for k in mrr)
        assert sum(mrr.values()) == pytest.approx(latest[f"all|{months[-1]}"]["mrr_end"])
        checked += 1
    assert checked >= 5 and sum(mrr.values()) > 0
    assert len(mrr) >= 3   # several segments
