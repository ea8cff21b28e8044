"""The ingest assignor keeps partition p of every input topic on one worker."""
from __future__ import annotations

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from streams.assignor import CoPartitionedAssignor, plan

TOPICS = [f"events.{f}" for f in ("signup", "usage", "feature", "billing", "support")]


class Cluster:
    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self.partitions.get(topic)
        return None if n is None else set(range(n))


def members(n: int, topics: list[str] = TOPICS) -> dict[str, ConsumerProtocolMemberMetadata]:
    return {f"m-{i}": ConsumerProtocolMemberMetadata(0, topics, b"") for i in range(n)}


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("partitions", [4, 12])
def test_every_partition_once_and_a_partition_number_on_one_worker(workers, partitions):
    cluster = Cluster({t: partitions for t in TOPICS})
    out = plan(cluster, members(workers))
    owners: dict[int, set[str]] = {}
    seen = []
    for member, topics in out.items():
        for topic, parts in topics.items():
            for p in parts:
                owners.setdefault(p, set()).add(member)
                seen.append((topic, p))
    assert sorted(seen) == sorted((t, p) for t in TOPICS for p in range(partitions))
    assert all(len(o) == 1 for o in owners.values())      # co-partitioned
    counts = sorted(len(next(iter(t.values()), [])) if t else 0 for t in out.values())
    assert counts[-1] - counts[0] <= 1                     # balanced by partition number


def test_the_round_robin_assignor_would_split_a_customer():
    """Why a custom assignor: 3 workers on 4 partitions of 5 topics, round robin."""
    from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    cluster = Cluster({t: 4 for t in TOPICS})
    rr = RoundRobinPartitionAssignor.assign(cluster, members(3))
    owners: dict[int, set[str]] = {}
    for member, assignment in rr.items():
        for _topic, parts in assignment.assignment:
            for p in parts:
                owners.setdefault(p, set()).add(member)
    assert any(len(o) > 1 for o in owners.values())
    ours = CoPartitionedAssignor.assign(cluster, members(3))
    assert set(ours) == {"m-0", "m-1", "m-2"}


def test_a_topic_without_metadata_is_skipped():
    out = plan(Cluster({"events.usage": 2}), members(2))
    assert out == {"m-0": {"events.usage": [0]}, "m-1": {"events.usage": [1]}}
