"""Every Kafka topic of the service, and their creation.

Output topics keyed by entity (customer, feature, scope, alert) are compacted: consumers want
the latest record per key. Creating them up front means the first consumer of an output topic
never races the first record.
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from streams.settings import Settings

log = logging.getLogger(__name__)


def bootstrap_servers(broker_url: str) -> str:
    """kafka://a:9092,b:9092 (or kafka://a:9092;kafka://b:9092) -> a:9092,b:9092"""
    parts = broker_url.replace(";", ",").split(",")
    return ",".join(p.strip().removeprefix("kafka://") for p in parts if p.strip())


class Partitioner:
    """Kafka's default partitioner (murmur2), so Faust's table routing finds our keys."""

    def __init__(self, partitions: int, cache_size: int = 200_000) -> None:
        self.partitions = partitions
        self.cache_size = cache_size
        self._cache: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            p = self._cache[key] = (murmur2(key.encode()) & 0x7FFFFFFF) % self.partitions
        return p


MODEL_MESSAGE_BYTES = 8 << 20   # = the producer's max request size (streams/app.py)


def topic_specs(settings: Settings) -> list[NewTopic]:
    t = settings.topics
    compact = {"cleanup.policy": "compact"}
    specs = [NewTopic(name, t.input_partitions, 1) for name in t.input_topics()]
    specs.append(NewTopic(t.repartition, settings.app.partitions, 1))
    specs.append(NewTopic(t.business_internal, settings.app.partitions, 1))
    specs.append(NewTopic(t.feature_internal, settings.app.partitions, 1))
    # One partition each: one learner for the whole service, one model every worker reads.
    specs.append(NewTopic(t.churn_examples, 1, 1))
    # A forest model snapshot is several MB (Kafka's default message limit is 1 MB).
    specs.append(NewTopic(t.churn_model, 1, 1, topic_configs={
        **compact, "max.message.bytes": str(MODEL_MESSAGE_BYTES)}))
    specs.append(NewTopic(t.feature_catalog, 1, 1, topic_configs=compact))
    for name in (t.customer, t.feature_out, t.business, t.alerts):
        specs.append(NewTopic(name, settings.app.partitions, 1, topic_configs=compact))
    specs.append(NewTopic(t.deadletter, settings.app.partitions, 1))
    return specs


async def ensure_topics(settings: Settings, bootstrap: str, attempts: int = 20) -> None:
    """Create missing topics; existing ones are left as they are."""
    specs = topic_specs(settings)
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [s for s in specs if s.name not in existing]
            for spec in missing:
                try:
                    await admin.create_topics([spec])
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaError as exc:
            if attempt == attempts - 1:
                raise
            log.warning("topic creation failed (%s), retrying", exc)
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
