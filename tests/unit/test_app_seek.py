"""streams.delivery: after a rebalance, never-committed internal partitions are read from the start
(before Faust resumes them: see `rewind_uncommitted`).

No broker: a stand-in for Faust's consumer records the seeks. They must go through
`seek_wait`, which Faust runs in the consumer's own thread.
"""
from __future__ import annotations

import asyncio
from collections import namedtuple
from typing import Any

from streams.delivery import delivered, rewind_uncommitted

TP = namedtuple("TP", "topic partition")
INTERNAL = {"vitals.internal.events", "vitals.internal.business"}


class FakeConsumer:
    def __init__(self, committed: dict[TP, int | None], earliest: int = 0) -> None:
        self.committed = committed
        self.earliest = earliest
        self.calls: list[Any] = []

    def assignment(self) -> set[TP]:
        return set(self.committed)

    async def seek_to_committed(self) -> dict[TP, int | None]:
        # aiokafka asserts when nothing is assigned (a worker beyond the partition count).
        assert self.committed, "No partitions are currently assigned"
        return dict(self.committed)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.earliest for tp in tps}

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.calls.extend(sorted(offsets.items()))

    async def seek(self, tp: TP, offset: int) -> None:
        # Faust runs this one in the caller's thread, racing the consumer thread's fetcher.
        raise AssertionError("seek from the app's thread: use seek_wait")


def test_uncommitted_internal_partitions_are_rewound() -> None:
    committed = {
        TP("vitals.internal.events", 0): None,       # never committed: rewind
        TP("vitals.internal.events", 1): 40,         # committed: Faust's seek is right
        TP("vitals.internal.business", 2): 0,        # committed at 0: aiokafka does not seek
        TP("vitals-customers-changelog", 0): None,   # recovery's business, not ours
    }
    consumer = FakeConsumer(committed, earliest=3)
    asyncio.run(rewind_uncommitted(consumer, INTERNAL))
    assert sorted(consumer.calls) == [(TP("vitals.internal.business", 2), 3),
                                      (TP("vitals.internal.events", 0), 3)]


def test_nothing_to_rewind_when_every_partition_was_committed() -> None:
    consumer = FakeConsumer({TP("vitals.internal.events", 0): 7})
    asyncio.run(rewind_uncommitted(consumer, INTERNAL))
    assert consumer.calls == []


def test_a_worker_without_partitions_seeks_nothing() -> None:
    consumer = FakeConsumer({})
    asyncio.run(rewind_uncommitted(consumer, INTERNAL))
    assert consumer.calls == []


def test_delivered_waits_for_every_send_and_raises_a_failed_one() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        sent = [loop.create_future(), loop.create_future()]
        done: list[str] = []

        async def wait() -> None:
            await delivered(sent)
            done.append("delivered")

        task = asyncio.ensure_future(wait())
        await asyncio.sleep(0)
        sent[0].set_result(None)
        await asyncio.sleep(0)
        assert not done                    # one send still in flight: no acknowledgement yet
        sent[1].set_result(None)
        await task
        failed = loop.create_future()
        failed.set_exception(RuntimeError("broker refused"))
        try:
            await delivered([failed])
        except RuntimeError:
            done.append("raised")
        await delivered([])               # nothing sent: nothing to wait for
        return done

    assert asyncio.run(scenario()) == ["delivered", "raised"]
