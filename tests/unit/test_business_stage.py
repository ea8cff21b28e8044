"""The business stage driven by plain calls: a month's customer aggregates are its month-end
figures once every partition has closed the month, whatever was reported after."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from streams.business import BusinessAggregator, decode_scope, empty_summary, encode_scope
from streams.settings import load_settings

SETTINGS = load_settings(env={"VITALS_APP__PARTITIONS": "2"})
DAY = 86400.0


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def summary(n: int, health: float) -> dict[str, Any]:
    return {**empty_summary(), "n": n, "health_n": n, "health_sum": health * n}


def movement(cid: str, at: str, mrr: float) -> dict[str, Any]:
    return {"t": "mv", "scope": "all", "cid": cid, "mv": {
        "kind": "new", "amount": mrr, "ts": ts(at), "old_mrr": 0.0, "new_mrr": mrr,
        "month": at[:7], "event_id": f"b-{cid}", "month_start_mrr": 0.0}}


def part(p: int, wm: str, n: int, health: float) -> dict[str, Any]:
    return {"t": "part", "scope": "all", "p": p, "wm": ts(wm), "sum": summary(n, health)}


def month_end(p: int, month: str, n: int, health: float) -> dict[str, Any]:
    return {"t": "me", "scope": "all", "p": p, "month": month, "sum": summary(n, health)}


def records(stage: BusinessAggregator) -> dict[str, dict[str, Any]]:
    return {k: orjson.loads(v) for k, v in stage.flush().records}


def test_a_months_aggregates_are_its_month_end_figures() -> None:
    stage = BusinessAggregator(SETTINGS, {})
    stage.apply([movement("c-1", "2026-03-02T10:00:00", 100.0),
                 part(0, "2026-03-20T00:00:00", 1, 50.0), part(1, "2026-03-20T00:00:00", 1, 70.0)])
    assert records(stage)["all|2026-03"]["avg_health"] == 60.0        # latest closes
    # both partitions close March: 40 and 80 as of 04-01 00:00
    stage.apply([month_end(0, "2026-03", 1, 40.0), month_end(1, "2026-03", 1, 80.0),
                 part(0, "2026-04-03T00:00:00", 1, 10.0), part(1, "2026-04-03T00:00:00", 1, 30.0)])
    out = records(stage)
    assert out["all|2026-03"]["avg_health"] == 60.0     # (40 + 80) / 2, not the April figures
    assert out["all|2026-04"]["avg_health"] == 20.0     # the open month: latest closes
    # later reports of April do not touch March, also after a restart from the changelog
    stage.store["all"] = decode_scope(encode_scope(stage.store["all"]))
    restored = BusinessAggregator(SETTINGS, stage.store)
    restored.apply([part(0, "2026-04-09T00:00:00", 1, 90.0)])
    restored._touch(restored._load("all"), "2026-03")
    out = records(restored)
    assert out["all|2026-03"]["avg_health"] == 60.0
    assert out["all|2026-04"]["avg_health"] == 60.0     # (90 + 30) / 2


def test_until_every_partition_closed_the_month_the_latest_figures_stand() -> None:
    stage = BusinessAggregator(SETTINGS, {})
    stage.apply([movement("c-1", "2026-03-02T10:00:00", 100.0),
                 part(0, "2026-04-01T05:00:00", 2, 50.0), part(1, "2026-03-31T05:00:00", 2, 70.0),
                 month_end(0, "2026-03", 2, 40.0)])
    assert records(stage)["all|2026-03"]["avg_health"] == 60.0
