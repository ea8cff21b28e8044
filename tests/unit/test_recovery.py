"""streams.recovery: a changelog whose earliest offset the broker reports as unknown (-1) is read
from its first record instead of crashing the restarted worker (aiokafka refuses seek(-2))."""
from __future__ import annotations

import asyncio
from collections import Counter, namedtuple
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streams.recovery import SafeRecovery, SafeTableManager, recovery_start

TP = namedtuple("TP", "topic partition")


class RecordingConsumer:
    """Faust's consumer: `seek_wait` ends in aiokafka's `seek` for each partition."""

    def __init__(self) -> None:
        self.seeks: dict[Any, int] = {}

    async def seek_wait(self, offsets: dict[Any, int]) -> None:
        consumer = AIOKafkaConsumer()   # never started: seek checks its argument first
        for tp, offset in offsets.items():
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition), offset)
            except (AttributeError, AssertionError):
                pass   # past the argument check: a started consumer would seek
        self.seeks.update(offsets)


@pytest.mark.parametrize("given, expected", [(None, 0), (-2, 0), (-1, 0), (0, 0), (41, 41)])
def test_recovery_start(given: int | None, expected: int) -> None:
    assert recovery_start(given) == expected


def test_seek_below_zero_reads_from_the_first_record() -> None:
    async def run() -> dict[Any, int]:
        consumer = RecordingConsumer()
        tps = {TP("vitals-state-changelog", 0), TP("vitals-state-changelog", 1)}
        offsets: Counter[Any] = Counter({TP("vitals-state-changelog", 0): -2,
                                         TP("vitals-state-changelog", 1): 17})
        await SafeRecovery._seek_offsets(object(), consumer, tps, offsets, "active")
        return consumer.seeks

    seeks = asyncio.run(run())
    assert seeks == {TP("vitals-state-changelog", 0): 0, TP("vitals-state-changelog", 1): 17}


def test_faust_recovery_itself_would_refuse_that_seek() -> None:
    """Why the subclass exists: the library's own method passes -2 on to aiokafka."""
    from faust.tables.recovery import Recovery

    async def run() -> None:
        consumer = RecordingConsumer()
        offsets: Counter[Any] = Counter({TP("t", 0): -2})
        await Recovery._seek_offsets(object(), consumer, {TP("t", 0)}, offsets, "active")

    with pytest.raises(ValueError, match="positive integer"):
        asyncio.run(run())


def test_the_app_recovers_tables_with_it() -> None:
    from streams.app import build_app
    from streams.settings import load_settings

    service = build_app(load_settings(env={}), "kafka://127.0.0.1:9")
    assert isinstance(service.app.tables, SafeTableManager)
    assert isinstance(service.app.tables.recovery, SafeRecovery)
