"""The follower tells when the topics read first have been read to their end."""
from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from streams.follow import Follower

CATALOG = TopicPartition("catalog", 0)


class FakeConsumer:
    """Positions move by the batches handed out; end offsets can be reported short."""

    def __init__(self, batches: list[dict[TopicPartition, list[Any]]]) -> None:
        self.batches = batches
        self.positions = {CATALOG: 0}

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        batch = self.batches.pop(0) if self.batches else {}
        for tp, records in batch.items():
            self.positions[tp] += len(records)
        return batch

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


def read_until_set(follower: Follower, consumer: FakeConsumer, reported_end: int) -> list[int]:
    """The records handed over before `first_read` was set."""
    seen: list[int] = []
    follower.follow("catalog", 1, lambda records: seen.extend(records), read_first=True)
    follower.consumer = consumer  # type: ignore[assignment]
    follower._ends = {CATALOG: reported_end}

    async def run() -> list[int]:
        for _ in range(10):
            batches = await consumer.getmany()
            for tp, records in batches.items():
                follower.handlers[tp.topic](records)
            await follower._check_read(batches)
            if follower.first_read.is_set():
                return list(seen)
        raise AssertionError("never read to the end")
    return asyncio.run(run())


def test_the_catalog_counts_as_read_only_after_a_fetch_past_its_end_gives_nothing() -> None:
    # The broker reported 3 records at start; 5 were there (ListOffsets a batch short).
    consumer = FakeConsumer([{CATALOG: [1, 2, 3]}, {CATALOG: [4, 5]}, {}])
    assert read_until_set(Follower("x"), consumer, reported_end=3) == [1, 2, 3, 4, 5]


def test_an_empty_catalog_is_read_at_once() -> None:
    assert read_until_set(Follower("x"), FakeConsumer([]), reported_end=0) == []
