"""The ingest's offset lag, per input topic, from the broker's end offsets and the aligner."""
from __future__ import annotations

import math

from aiokafka import TopicPartition

from streams.exporters.metrics import Metrics
from streams.ingest import IngestService
from streams.settings import load_settings
from streams.topics import Partitioner


class StubConsumer:
    def __init__(self, high: dict[TopicPartition, int | None]) -> None:
        self.high = high

    def assignment(self) -> set[TopicPartition]:
        return set(self.high)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high[tp]


def test_lag_is_end_offset_minus_released_per_topic() -> None:
    settings = load_settings(env={})
    service = IngestService(settings, "127.0.0.1:9", Metrics(), Partitioner(4))
    u0, u1 = TopicPartition("events.usage", 0), TopicPartition("events.usage", 1)
    b0, s0 = TopicPartition("events.billing", 0), TopicPartition("events.support", 0)
    service.consumer = StubConsumer({u0: 100, u1: 50, b0: 7, s0: None})  # type: ignore
    for tp, start in ((u0, 0), (u1, 10), (b0, 7), (s0, 0)):
        service.aligner.start_at(tp, start)
    service.aligner.add(u0, 1.0, 0, "e0")      # read but held back: not released yet
    service.aligner.add(u0, 2.0, 1, "e1")
    # u0: 100 - 0 (held from offset 0); u1: 50 - 10; billing: caught up; support: not fetched
    assert service.lag() == {"events.usage": 140, "events.billing": 0}
    service.aligner.release([u0], lambda tp: math.inf)
    assert service.lag() == {"events.usage": 138, "events.billing": 0}


class PositionConsumer(StubConsumer):
    async def position(self, tp: TopicPartition) -> int:
        return 0


async def test_a_member_with_no_partitions_is_ready_between_rebalances() -> None:
    """A worker beyond the partition count is a standby: ready once its join completed,
    with nothing assigned, and not ready from a revocation to the next join."""
    from streams.ingest import _Rebalance

    settings = load_settings(env={})
    service = IngestService(settings, "127.0.0.1:9", Metrics(), Partitioner(4))
    service.consumer = PositionConsumer({})  # type: ignore
    listener = _Rebalance(service)
    assert not service.ready
    await listener.on_partitions_assigned(set())
    assert service.ready
    await listener.on_partitions_revoked(set())
    assert not service.ready
    await listener.on_partitions_assigned({TopicPartition("events.usage", 0)})
    assert service.ready
