"""Ingest assignment: partition p of every input topic goes to the same worker.

Producers key events by customer with Kafka's default partitioner, so a customer's signup,
usage, feature, billing and support events sit at the same partition number in every topic.
Giving one worker all topics' partition p (as Kafka Streams does with the tasks of
co-partitioned topics) lets that worker align a customer's families in event time, whatever the
number of workers: with the round-robin assignor, 3 workers on 4 partitions split a customer's
families over workers that read at different speeds.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)


class CoPartitionedAssignor(AbstractPartitionAssignor):
    """Partition number p of every subscribed topic to member p mod n (members sorted)."""

    name = "vitals-copartitioned"
    version = 0

    @classmethod
    def assign(cls, cluster: ClusterMetadata,
               members: Mapping[str, ConsumerProtocolMemberMetadata]
               ) -> dict[str, ConsumerProtocolMemberAssignment]:
        return {member: ConsumerProtocolMemberAssignment(cls.version, sorted(topics.items()), b"")
                for member, topics in plan(cluster, members).items()}

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        pass


def plan(cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
         ) -> dict[str, dict[str, list[int]]]:
    """member -> topic -> partitions; a member not subscribed to a topic gets none of it."""
    ordered = sorted(members)
    out: dict[str, dict[str, list[int]]] = {m: collections.defaultdict(list) for m in ordered}
    topics = sorted({t for meta in members.values() for t in meta.subscription})
    for topic in topics:
        subscribed = [m for m in ordered if topic in members[m].subscription]
        for partition in sorted(cluster.partitions_for_topic(topic) or ()):
            out[subscribed[partition % len(subscribed)]][topic].append(partition)
    return {m: dict(t) for m, t in out.items()}
