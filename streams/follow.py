"""Small compacted topics every worker reads in full: the churn model, the feature catalog,
the published feature records.

A plain consumer with no group: each worker reads the whole topic from the start and keeps
following it, handing every batch of records to a callback. What a worker needs from these
topics must not depend on which partitions it owns.
"""
from __future__ import annotations

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

    def follow(self, topic: str, partitions: int,
               handler: Callable[[list[ConsumerRecord]], None]) -> None:
        """Before start: hand every batch of records of `topic` to `handler`."""
        self.handlers[topic] = handler
        self.partitions[topic] = partitions

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


def values(records: Iterable[ConsumerRecord]) -> Iterable[bytes]:
    return (r.value for r in records if r.value is not None)
