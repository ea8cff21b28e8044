"""Faust's table recovery with two mends.

- **Start below zero.** Faust starts reading a changelog partition at `max(persisted offset,
  earliest offset - 1)` (faust-streaming #176, the "offset -1 logic"). When the broker
  answers the earliest offset with -1, that start is -2 and aiokafka's `seek` raises
  `ValueError('Offset must be a positive integer')`: a restarted worker exited 1 under
  repeated SIGKILLs. Such a changelog is read from its first record; reading more of a
  changelog than needed replays values that later records overwrite.
- **End offsets.** Recovery reads each changelog up to its end, which Tansu reports short by
  up to a batch; `true_ends` reads the last batch instead of trusting that answer.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables import TableManager
from faust.tables.recovery import Recovery

log = logging.getLogger(__name__)


def recovery_start(offset: int | None) -> int:
    """Where to seek for a changelog whose last read offset Faust gives as `offset`."""
    return 0 if offset is None or offset < 0 else offset


EndProbe = Callable[[Mapping[Any, "int | None"]], Awaitable[dict[Any, "int | None"]]]


class SafeRecovery(Recovery):
    """Faust's recovery, with two mends: a start below zero, and end offsets that a broker
    reports short (the app's `end_probe`, see `true_ends`)."""

    async def _build_highwaters(self, consumer: Any, tps: set[Any], destination: Counter[Any],
                                title: str) -> None:
        probe: EndProbe | None = getattr(self.app, "end_probe", None)
        if probe is None:
            await super()._build_highwaters(consumer, tps, destination, title)
            return
        reported = await consumer.highwaters(*tps)
        ends = await probe(reported)
        moved = {tp: (reported[tp], end) for tp, end in ends.items() if end != reported.get(tp)}
        if moved:
            log.info("%s changelog ends past the broker's answer: %s", title,
                     sorted(f"{tp.topic}[{tp.partition}] {a}->{b}" for tp, (a, b) in moved.items()))
        destination.clear()
        # Faust's convention: the offset of the last record (end - 1), -1 for none.
        destination.update({tp: end - 1 if end is not None else -1 for tp, end in ends.items()})

    async def _seek_offsets(self, consumer: Any, tps: set[Any], offsets: Counter[Any],
                            title: str) -> None:
        below = {tp: offsets[tp] for tp in tps if offsets[tp] is not None and offsets[tp] < -1}
        if below:
            log.warning("changelog start below zero (earliest offset unknown), reading from "
                        "the first record: %s",
                        sorted(f"{tp.topic}[{tp.partition}]={o}" for tp, o in below.items()))
        await consumer.seek_wait({tp: recovery_start(offsets[tp]) for tp in tps})


class SafeTableManager(TableManager):
    """Faust's table manager with `SafeRecovery` (set as the app's `TableManager`)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SafeRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


async def true_ends(bootstrap: str, client_kwargs: Mapping[str, Any],
                    reported: Mapping[Any, int | None], timeout: float = 15.0
                    ) -> dict[Any, int | None]:
    """The end offsets of `reported`'s partitions, found by reading their last batch.

    Tansu answers ListOffsets(latest) with the base offset of the last record batch + 1, not
    the end of the log: recovery would stop inside the last batch and drop the rest of it.
    Every partition is read, also one reported empty (it costs one fetch). Reading from
    one before the reported end returns that whole batch (a fetch hands out whole batches),
    so the position after it is the true end, on Kafka as on Tansu. A partition is read to
    its end once a fetch has come back for it with no record past the position.
    """
    ends = dict(reported)
    todo = {TopicPartition(tp.topic, tp.partition): tp for tp in reported}
    if not todo:
        return ends
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, **client_kwargs)
    await consumer.start()
    try:
        consumer.assign(list(todo))
        for tp, key in todo.items():
            consumer.seek(tp, max(0, (reported[key] or 0) - 1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        unread = set(todo)   # partitions not yet seen read to their end
        while unread:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"changelog partitions {sorted(map(str, unread))} were not "
                                   f"read to their end in {timeout} s")
            fetched = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            for tp in list(unread):
                # highwater: from the last fetch response for tp (None before the first)
                if not fetched.get(tp) and consumer.highwater(tp) is not None:
                    unread.discard(tp)
        for tp, key in todo.items():
            ends[key] = max(reported[key] or 0, await consumer.position(tp))
    finally:
        await consumer.stop()
    return ends
