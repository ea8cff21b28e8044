"""The customer agent in Faust's in-memory test context (no broker): batches in, state applied,
and acknowledged only by the flush."""
from __future__ import annotations

import orjson
from faust.types import TP

from streams.app import build_app
from streams.events import EventValidator, event_hash
from streams.settings import load_settings

DAY = 86400.0
T0 = 20513 * DAY  # 2026-03-01


def _batch(*events: dict) -> bytes:
    validator = EventValidator("USD", {"USD": 1.0})
    out = []
    for family, obj in events:
        ev = validator.validate(family, obj)
        ev["h"] = event_hash(ev["event_id"])
        out.append(ev)
    return orjson.dumps(out)


def _usage(cid: str, user: str, ts: float, eid: str) -> tuple[str, dict]:
    return ("usage", {"event_id": eid, "customer_id": cid, "user_id": user, "ts": ts,
                      "action": "report_created"})


async def test_customer_agent_applies_batches_and_dedups():
    service = build_app(load_settings(env={}), "kafka://127.0.0.1:9")  # never connected
    service.processor.wall_clock = None
    agent = service.app.agents["apply_customer_events"]
    topic = service.settings.topics.repartition
    service.owned = {TP(topic, 0)}   # as the rebalance handler leaves it
    async with agent.test_context() as test_agent:
        await test_agent.put(value=_batch(
            ("signup", {"event_id": "s1", "customer_id": "c-1", "ts": T0, "segment": "smb"}),
            _usage("c-1", "u1", T0 + 10, "e1"), _usage("c-1", "u2", T0 + 20, "e2")))
        await test_agent.put(value=_batch(_usage("c-1", "u1", T0 + 10, "e1")))  # a resend
        # After a revocation, an event still in the stream's buffer is neither applied nor
        # acknowledged: its partition's next owner reads it again.
        service.owned = set()
        await test_agent.put(value=_batch(_usage("c-2", "v1", T0 + 30, "x1")))
    assert "c-2" not in service.processor.live and service.strays == 1
    state = service.processor.live["c-1"]
    assert state.segment == "smb" and state.events == 3
    assert state.onboarding.aha == T0 + 10  # report_created is a value action
    assert len(service.pending) == 2          # not acknowledged before the flush
    dup = service.metrics.registry.get_sample_value(
        "vitals_events_total", {"family": "usage", "outcome": "duplicate"})
    assert dup == 1
    out = service.processor.flush()
    record = orjson.loads(dict(out.records)["c-1"])
    assert record["activity"]["dau"] == 2 and record["onboarding"]["stage"] == "aha"
    assert [cid for _, cid, _ in out.changelog] == ["c-1"]


async def test_a_business_message_that_raises_is_quarantined_and_acknowledged():
    service = build_app(load_settings(env={}), "kafka://127.0.0.1:9")  # never connected
    agent = service.app.agents["aggregate_business"]
    topic = service.settings.topics.business_internal
    service.owned = {TP(topic, 0)}
    async with agent.test_context() as test_agent:
        await test_agent.put(value=orjson.dumps({"t": "mv", "scope": "all", "cid": "c-1",
                                                 "mv": {"not": "a movement"}}))
        await test_agent.put(value=orjson.dumps(
            {"t": "part", "scope": "all", "p": 0, "wm": T0, "sum": {"n": 1}}))
    assert len(service.business_pending) == 2   # both acknowledged with the next flush
    [(key, value)] = service.deadletters
    dl = orjson.loads(value)
    assert dl["error"] == "processing_error" and dl["source_topic"] == topic
    assert dl["detail"].startswith("KeyError")
    assert service.metrics.registry.get_sample_value(
        "vitals_deadletter_total", {"family": "internal", "error": "processing_error"}) == 1
    assert "all" in service.aggregator.live      # the next message was applied
