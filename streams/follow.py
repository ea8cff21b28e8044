"""Small compacted topics every worker reads in full: the churn model, the feature catalog,
the published feature records.

A plain consumer with no group: each worker reads the whole topic from the start and keeps
following it, handing every batch of records to a callback. What a worker needs from these
topics must not depend on which partitions it owns.

`read_first` topics are read to their end before `first_read` is set: the customer stage waits
for it, so that after a restart its day closes know every feature another worker published
before (its closes would otherwise count them from a later release, or not at all).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from mode import Service

log = logging.getLogger(__name__)


class Follower(Service):
    def __init__(self, bootstrap: str, client_kwargs: Mapping[str, Any] | None = None) -> None:
        """`client_kwargs`: TLS/SASL (streams.kafka_config.aiokafka_kwargs)."""
        super().__init__()
        self.bootstrap = bootstrap
        self.client_kwargs = dict(client_kwargs or {})
        self.handlers: dict[str, Callable[[list[ConsumerRecord]], None]] = {}
        self.partitions: dict[str, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.read_first: set[str] = set()
        self.first_read = asyncio.Event()
        self._ends: dict[TopicPartition, int] = {}

    def follow(self, topic: str, partitions: int,
               handler: Callable[[list[ConsumerRecord]], None], read_first: bool = False
               ) -> None:
        """Before start: hand every batch of records of `topic` to `handler`."""
        self.handlers[topic] = handler
        self.partitions[topic] = partitions
        if read_first:
            self.read_first.add(topic)

    async def on_start(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                         enable_auto_commit=False,
                                         max_partition_fetch_bytes=16 << 20,
                                         fetch_max_bytes=64 << 20, **self.client_kwargs)
        await self.consumer.start()
        tps = [TopicPartition(topic, p) for topic, n in self.partitions.items()
               for p in range(n)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        first = [tp for tp in tps if tp.topic in self.read_first]
        self._ends = dict(await self.consumer.end_offsets(first)) if first else {}
        self.add_future(self._follow())

    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def _follow(self) -> None:
        assert self.consumer is not None
        while not self.should_stop:
            batches = await self.consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                try:
                    self.handlers[tp.topic](records)
                except Exception:  # one unreadable record must not stop the others
                    log.exception("could not apply records of %s", tp)
            if not self.first_read.is_set():
                await self._check_read(batches)

    async def _check_read(self, batches: Mapping[TopicPartition, Any]) -> None:
        """Read to the end once a partition is past its end offset at start and a fetch gave
        it nothing more (the embedded broker can report that offset a batch short)."""
        assert self.consumer is not None
        for tp, end in list(self._ends.items()):
            if tp not in batches and await self.consumer.position(tp) >= end:
                del self._ends[tp]
        if not self._ends:
            self.first_read.set()


def values(records: Iterable[ConsumerRecord]) -> Iterable[bytes]:
    return (r.value for r in records if r.value is not None)
