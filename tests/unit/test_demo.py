"""`vitals demo`: the history ends now, is sent at full speed with its pauses, then live."""
from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from typing import Any

import aiokafka
import pytest

from streams import demo

NOW = datetime(2026, 12, 3, 13, 30, tzinfo=UTC).timestamp()
DAY = 86400.0


def args(**kw: Any) -> argparse.Namespace:
    base = {"seed": 7, "customers": 20, "days": 120, "start": None, "bad_fraction": 0.0,
            "duplicate_fraction": 0.0}
    return argparse.Namespace(**{**base, **kw})


def test_the_history_ends_now_and_starts_at_utc_midnight() -> None:
    cfg = demo.demo_config(args(), NOW)
    assert cfg.start == datetime(2026, 8, 5, tzinfo=UTC)          # 120 days before today
    assert cfg.days == 121 + demo.LIVE_DAYS                       # today is the 121st day
    given = demo.demo_config(args(start="2026-11-01T00:00:00Z"), NOW)
    assert given.start == datetime(2026, 11, 1, tzinfo=UTC) and given.days == 33 + demo.LIVE_DAYS


def test_progress_bar_follows_the_watermark_then_says_live() -> None:
    start, end = NOW - 100 * DAY, NOW
    history: dict[str, Any] = {"start": start, "end": end, "sent_until": start + 60 * DAY}
    (line,) = demo.progress_lines(start + 25 * DAY, history)
    assert "[" + "#" * 7 + "." * 23 + "]" in line and "25% of 100 days" in line
    assert "produced to 2026-10-24" in line
    history["waiting"] = "the first churn model"
    assert "waiting for the first churn model" in demo.progress_lines(start, history)[0]
    history["waiting"] = None
    # Everything sent, but records still unconsumed: not done.
    history["sent_until"] = end + 60
    assert "%" in demo.progress_lines(end - 3600, history, backlog=1200)[0]
    (done,) = demo.progress_lines(end - 3600, history, backlog=0)
    assert "100 days worked off; live since 13:30:00 UTC" in done
    assert demo.progress_lines(None, {}) == []


def test_ingest_backlog_sums_the_ingest_group_only() -> None:
    metrics = {"vitals_consumer_lag_records": [
        ({"group": "vitals-ingest", "topic": "events.usage"}, 40.0),
        ({"group": "vitals-ingest", "topic": "events.billing"}, 2.0),
        ({"group": "vitals", "topic": "vitals.internal.events"}, 500.0)]}
    assert demo.ingest_backlog(metrics) == 42.0
    assert demo.ingest_backlog({}) is None


class StubProducer:
    log: list[Any] = []

    def __init__(self, **kwargs: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.log.append(("send", topic, key))

    async def flush(self) -> None:
        self.log.append(("flush",))


def event(cid: str, ts: float) -> dict[str, Any]:
    return {"event_id": f"{cid}-{ts}", "customer_id": cid, "user_id": "u", "action": "login",
            "ts": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_history_at_full_speed_with_its_pauses_then_each_live_event_at_its_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    StubProducer.log = []
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", StubProducer)
    clock = {"now": NOW}
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:  # the wall clock moves only when the demo waits
        if seconds:
            StubProducer.log.append(("sleep", round(seconds, 3)))
            clock["now"] += seconds
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)

    async def pause() -> None:
        StubProducer.log.append(("pause",))

    items = [("usage", event("a", NOW - 50 * DAY)), ("usage", event("b", NOW - 20 * DAY)),
             ("usage", b"not json"), ("usage", event("c", NOW - 10)),
             ("usage", event("d", NOW + 30)), ("usage", event("e", NOW + 90))]
    state: dict[str, Any] = {"sent": 0, "sent_until": None}
    sent = asyncio.run(demo.send_events("b:9", {"usage": "events.usage"}, items, NOW, 1.0,
                                        state, clock=lambda: clock["now"],
                                        pauses=[(NOW - 30 * DAY, pause)]))
    assert sent == 6 and state["sent"] == 6 and state["sent_until"] == NOW + 90
    assert StubProducer.log == [
        ("send", "events.usage", b"a"),
        ("flush",), ("pause",),                  # what came before is delivered, then it waits
        ("send", "events.usage", b"b"), ("send", "events.usage", None),
        ("send", "events.usage", b"c"),          # the past: at once
        ("flush",), ("sleep", 30.0), ("send", "events.usage", b"d"),   # live: at its time
        ("flush",), ("sleep", 60.0), ("send", "events.usage", b"e"),
        ("flush",)]


def test_freshness_line() -> None:
    metrics: demo.Scraped = {
        "vitals_consumer_lag_records": [({"group": "x-ingest", "topic": "t"}, 1500.0)],
               "vitals_processing_delay_seconds_count": [({}, 4.0)],
               "vitals_processing_delay_seconds_sum": [({}, 10.0)]}
    assert demo.freshness_line(metrics) == ("  freshness     input lag 1,500 records, mean "
                                            "processing delay 2.5 s")
    assert demo.freshness_line({}) == "  freshness     input lag -, mean processing delay -"
