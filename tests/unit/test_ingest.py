"""The ingest without a broker: records in, validated events or dead letters out, routed to
their customer partition, and input offsets committed only once the broker holds the output."""
from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from streams.events import NOT_JSON, PROCESSING_ERROR
from streams.exporters.metrics import Metrics
from streams.ingest import (
    MAX_BUFFERED_PER_PARTITION,
    MAX_EVENTS_PER_MESSAGE,
    Ingest,
    IngestService,
    TimeAligner,
)
from streams.settings import load_settings
from streams.topics import Partitioner

SETTINGS = load_settings(env={})
USAGE = TopicPartition(SETTINGS.topics.usage, 0)
SIGNUP = TopicPartition(SETTINGS.topics.signup, 0)
T0 = 1772323200.0  # 2026-03-01T00:00:00Z


def record(offset: int, value: bytes | None, key: bytes | None = None) -> Any:
    """A consumer record as aiokafka gives it (timestamp: when the broker got it, in ms)."""
    return SimpleNamespace(offset=offset, value=value, key=key, timestamp=1_772_323_200_000)


def usage(eid: str, cid: str, ts: float) -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": cid, "user_id": "u1", "ts": ts,
                         "action": "login"})


def read(records: dict[TopicPartition, list[Any]]) -> tuple[Ingest, Metrics, list[Any]]:
    metrics = Metrics()
    ingest = Ingest(SETTINGS, metrics, Partitioner(4))
    aligner = TimeAligner()
    ingest.read(records, aligner)
    return ingest, metrics, aligner.release(list(records), lambda tp: math.inf)


def deadletters(metrics: Metrics, family: str, error: str) -> float | None:
    return metrics.registry.get_sample_value("vitals_deadletter_total",
                                             {"family": family, "error": error})


def test_a_valid_event_carries_its_hash_source_and_key_and_goes_to_its_customers_partition(
        ) -> None:
    ingest, _, released = read({USAGE: [record(7, usage("e1", "c-1", T0), key=b"c-1")]})
    [event] = released
    assert (event["event_id"], event["ts"], event["family"]) == ("e1", T0, "usage")
    assert event["src"] == (USAGE.topic, 0, 7) and event["key"] == "c-1"
    assert isinstance(event["h"], int) and orjson.loads(event["raw_bytes"])["event_id"] == "e1"
    batches, letters = ingest.route(released)
    assert letters == [] and batches == {Partitioner(4)("c-1"): [event]}


def test_an_event_far_ahead_of_its_input_partition_is_flagged_for_the_customer_stage() -> None:
    metrics = Metrics()
    ingest = Ingest(SETTINGS, metrics, Partitioner(4))
    aligner = TimeAligner(max_skew=86400.0)
    times = [T0, T0 + 60, T0 + 40 * 86400.0, T0 + 120]
    ingest.read({USAGE: [record(i, usage(f"e{i}", "c-1", ts)) for i, ts in enumerate(times)]},
                aligner)
    released = aligner.release([USAGE], lambda tp: math.inf)
    assert [e.get("ahead", False) for e in released] == [False, False, True, False]


def test_records_before_the_first_offset_only_give_the_level() -> None:
    """After an assignment the ingest reads a few records before the committed offset again:
    neither forwarded nor dead-lettered twice, they set the level that flags the bad clock
    right after the offset as ahead of its input, as the first reading did."""
    metrics = Metrics()
    ingest = Ingest(SETTINGS, metrics, Partitioner(4))
    aligner = TimeAligner(max_skew=86400.0)
    aligner.start_at(USAGE, 3)
    times = [T0, T0 + 60, T0 + 90, T0 + 40 * 86400.0, T0 + 120]
    records = [record(i, usage(f"e{i}", "c-1", ts)) for i, ts in enumerate(times)]
    records[1] = record(1, b"not json")
    ingest.read({USAGE: records}, aligner)
    released = aligner.release([USAGE], lambda tp: math.inf)
    assert [(e["event_id"], e.get("ahead", False)) for e in released] == [("e3", True),
                                                                          ("e4", False)]
    assert not deadletters(metrics, "usage", NOT_JSON)


def test_invalid_records_become_dead_letters_in_their_partitions_offset_order() -> None:
    ingest, metrics, released = read({USAGE: [
        record(0, usage("e1", "c-1", T0 + 50)),
        record(1, b"{not json", key=b"k"),
        record(2, None),                                   # a tombstone
        record(3, usage("e2", "c-1", T0 + 10))]})
    # One partition's items leave in offset order (its committed offsets stay a prefix).
    assert [item["event_id"] if isinstance(item, dict) else item[0] for item in released] == [
        "e1", b"k", None, "e2"]
    batches, letters = ingest.route(released)
    assert [orjson.loads(v)["error"] for _, v in letters] == [NOT_JSON, NOT_JSON]
    assert [orjson.loads(v)["offset"] for _, v in letters] == [1, 2]
    assert deadletters(metrics, "usage", NOT_JSON) == 2
    assert [e["event_id"] for e in batches[Partitioner(4)("c-1")]] == ["e1", "e2"]


def test_a_validator_bug_is_a_processing_error_and_the_next_record_still_goes_through(
        monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    ingest = Ingest(SETTINGS, metrics, Partitioner(4))
    real = ingest.validator.parse

    def parse(family: str, raw: bytes) -> dict[str, Any]:
        if b"boom" in raw:
            raise ZeroDivisionError("boom")
        return real(family, raw)

    monkeypatch.setattr(ingest.validator, "parse", parse)
    aligner = TimeAligner()
    ingest.read({USAGE: [record(0, usage("boom", "c-1", T0)), record(1, usage("ok", "c-1", T0))]},
                aligner)
    batches, letters = ingest.route(aligner.release([USAGE], lambda tp: math.inf))
    [(_, value)] = letters
    letter = orjson.loads(value)
    assert letter["error"] == PROCESSING_ERROR and "ZeroDivisionError" in letter["detail"]
    assert [e["event_id"] for e in batches[Partitioner(4)("c-1")]] == ["ok"]
    assert deadletters(metrics, "usage", PROCESSING_ERROR) == 1


# -- the service loop's steps, with stand-ins for aiokafka ---------------------------------------


class Producer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, int | None, bytes | None]] = []
        self.fail = fail

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None, headers: Any = None) -> Any:
        self.sent.append((topic, partition, key))
        future = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(ConnectionError("broker gone"))
        else:
            future.set_result(None)
        return future


class Consumer:
    def __init__(self, commit_error: Exception | None = None) -> None:
        self.commits: list[dict[Any, int]] = []
        self.commit_error = commit_error
        self.paused_tps: set[TopicPartition] = set()

    async def commit(self, offsets: dict[Any, int]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        if not offsets:
            raise ValueError(offsets)   # as aiokafka's commit_structure_validate
        self.commits.append(dict(offsets))

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_tps)

    def pause(self, tp: TopicPartition) -> None:
        self.paused_tps.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.paused_tps.discard(tp)


def service_with(consumer: Consumer, producer: Producer) -> IngestService:
    service = IngestService(SETTINGS, "127.0.0.1:9", Metrics(), Partitioner(4))
    service.consumer, service.producer = consumer, producer  # type: ignore[assignment]
    return service


def test_publish_sends_batches_and_dead_letters_then_commits_what_was_released() -> None:
    consumer, producer = Consumer(), Producer()
    service = service_with(consumer, producer)
    many = [record(i, usage(f"e{i}", "c-1", T0 + i)) for i in range(MAX_EVENTS_PER_MESSAGE + 1)]
    service.ingest.read({USAGE: [*many, record(len(many), b"[]", key=b"bad")]}, service.aligner)
    released = service.aligner.release([USAGE], lambda tp: math.inf)
    asyncio.run(service._publish(released))
    topics = SETTINGS.topics
    partition = Partitioner(SETTINGS.app.partitions)("c-1")
    assert producer.sent == [(topics.repartition, partition, None)] * 2 + [
        (topics.deadletter, None, b"bad")]       # 501 events: two messages of at most 500
    assert consumer.commits == [{USAGE: len(many) + 1}] and service.polls == 1


def test_a_poll_of_context_records_only_commits_nothing() -> None:
    """The records read again before a partition's committed offset give its level and
    nothing else: their poll has nothing to commit (committing {} crashed the ingest)."""
    consumer = Consumer()
    service = service_with(consumer, Producer())
    service.aligner.start_at(USAGE, 5)
    service.ingest.read({USAGE: [record(i, usage(f"e{i}", "c-1", T0 + i)) for i in range(5)]},
                        service.aligner)
    asyncio.run(service._publish(service.aligner.release([USAGE], lambda tp: math.inf)))
    assert consumer.commits == [] and service.polls == 1


def test_nothing_is_committed_when_a_send_fails() -> None:
    consumer = Consumer()
    service = service_with(consumer, Producer(fail=True))
    service.ingest.read({USAGE: [record(0, usage("e1", "c-1", T0))]}, service.aligner)
    with pytest.raises(ConnectionError):
        asyncio.run(service._publish(service.aligner.release([USAGE], lambda tp: math.inf)))
    assert consumer.commits == [] and service.polls == 0


def test_a_failed_commit_after_a_rebalance_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    service = service_with(Consumer(commit_error=CommitFailedError("rebalanced")), Producer())
    service.ingest.read({USAGE: [record(0, usage("e1", "c-1", T0))]}, service.aligner)
    asyncio.run(service._publish(service.aligner.release([USAGE], lambda tp: math.inf)))
    assert service.polls == 1
    assert "ingest commit failed" in caplog.text


def test_a_partition_read_far_ahead_is_paused_then_resumed() -> None:
    consumer = Consumer()
    service = service_with(consumer, Producer())
    for i in range(MAX_BUFFERED_PER_PARTITION + 1):
        service.aligner.add(USAGE, T0 + i, i, i)
    service._throttle({USAGE, SIGNUP})
    assert consumer.paused_tps == {USAGE}
    service.aligner.release([USAGE], lambda tp: math.inf)
    service._throttle({USAGE, SIGNUP})
    assert consumer.paused_tps == set()


def test_revoked_partitions_leave_nothing_buffered() -> None:
    service = service_with(Consumer(), Producer())
    service.aligner.add(USAGE, T0, 0, "e")
    service.assigned_at[USAGE] = 0.0
    service.forget({USAGE})
    assert service.aligner.buffered(USAGE) == 0 and USAGE not in service.assigned_at
    assert service.aligner.committable() == {} and service.aligner.read_to == {}
    assert service.aligner.release([USAGE], lambda tp: math.inf) == []
