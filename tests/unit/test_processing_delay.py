"""Processing delay: the input record timestamp travels with the ingest's internal messages and
is observed, once per customer partition, when a flush's outputs are delivered."""
from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from streams.batches import decode_batch
from streams.delay import (
    ARRIVAL,
    ARRIVAL_HEADER,
    ProcessingDelay,
    arrival_headers,
    arrival_of,
    take_oldest_arrival,
)
from streams.events import event_hash
from streams.exporters.metrics import Metrics
from streams.ingest import IngestService, TimeAligner
from streams.settings import load_settings
from streams.topics import Partitioner

SETTINGS = load_settings(env={})
INTERNAL = SETTINGS.topics.repartition


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def bucket(metrics: Metrics, le: str) -> float:
    value = metrics.registry.get_sample_value("vitals_processing_delay_seconds_bucket",
                                              {"le": le})
    assert value is not None, le
    return value


# ---- the pieces ----------------------------------------------------------------------------


def test_take_oldest_arrival_removes_the_key_and_ignores_missing_timestamps() -> None:
    events: list[dict[str, Any]] = [{"e": 1, ARRIVAL: 5_000}, {"e": 2, ARRIVAL: 3_000},
                                    {"e": 3, ARRIVAL: -1}, {"e": 4, ARRIVAL: None}, {"e": 5}]
    assert take_oldest_arrival(events) == 3_000
    assert all(ARRIVAL not in e for e in events)
    assert take_oldest_arrival([{ARRIVAL: -1}, {}]) is None
    assert take_oldest_arrival([]) is None


def test_the_header_round_trips_in_both_header_shapes() -> None:
    headers = arrival_headers(1_767_225_600_123)
    assert headers == [(ARRIVAL_HEADER, b"1767225600123")]
    assert arrival_of(headers) == 1_767_225_600_123
    assert arrival_of(tuple(headers)) == 1_767_225_600_123          # aiokafka gives a tuple
    assert arrival_of({ARRIVAL_HEADER: b"42", "other": b"x"}) == 42
    assert arrival_headers(None) is None
    assert arrival_of(None) is None and arrival_of([]) is None
    assert arrival_of([("other", b"1")]) is None
    assert arrival_of([(ARRIVAL_HEADER, b"not a number")]) is None


def message(partition: int, arrived_ms: int | None, topic: str = INTERNAL) -> Any:
    headers = arrival_headers(arrived_ms) if arrived_ms is not None else None
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition,
                                                   headers=headers))


def test_one_observation_per_partition_from_its_oldest_message() -> None:
    metrics = Metrics()
    delay = ProcessingDelay(metrics.processing_delay, INTERNAL, clock=lambda: 1_000.0)
    observed = delay.observe([
        message(0, 990_000), message(0, 999_500),      # partition 0: oldest arrived 10 s ago
        message(1, 999_800),                           # partition 1: 0.2 s ago
        message(2, 1_000_700),                         # producer clock ahead: 0, not negative
        message(3, None),                              # no header (a message of an old ingest)
        message(0, 100_000, topic="vitals.internal.business"),  # another stage: not ours
    ])
    assert observed == pytest.approx({0: 10.0, 1: 0.2, 2: 0.0})
    assert sample(metrics, "vitals_processing_delay_seconds_count") == 3
    assert abs(sample(metrics, "vitals_processing_delay_seconds_sum") - 10.2) < 1e-6
    assert bucket(metrics, "0.25") == 2 and bucket(metrics, "5.0") == 2
    assert bucket(metrics, "10.0") == 3


def test_a_flush_without_messages_of_the_customer_stage_reads_no_clock() -> None:
    metrics = Metrics()

    def clock() -> float:
        raise AssertionError("no clock reading without an observation")

    delay = ProcessingDelay(metrics.processing_delay, INTERNAL, clock=clock)
    assert delay.observe([]) == {}
    assert delay.observe([message(0, None)]) == {}
    assert sample(metrics, "vitals_processing_delay_seconds_count") == 0


def test_the_histogram_has_no_labels_and_is_exported() -> None:
    text = Metrics().exposition().decode()
    assert "# TYPE vitals_processing_delay_seconds histogram" in text
    assert 'vitals_processing_delay_seconds_bucket{le="+Inf"} 0.0' in text


# ---- through the ingest ----------------------------------------------------------------------


class Record:
    def __init__(self, value: dict[str, Any], offset: int, timestamp: int) -> None:
        self.value = orjson.dumps(value)
        self.key = value["customer_id"].encode()
        self.offset = offset
        self.timestamp = timestamp
        self.timestamp_type = 1  # LogAppendTime


class Future:
    def __await__(self) -> Any:
        return iter(())


class StubProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int | None, Any]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None, headers: Any = None) -> asyncio.Future[None]:
        self.sent.append((topic, value, partition, headers))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class StubConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[Any, int]] = []

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(offsets)


def usage(i: int, customer: str) -> dict[str, Any]:
    return {"event_id": f"e-{i}", "customer_id": customer, "user_id": "u", "action": "login",
            "ts": f"2026-03-01T12:00:{i:02d}Z"}


def test_the_ingest_sends_each_internal_message_with_the_oldest_arrival_of_its_events() -> None:
    # Two customers on two customer partitions; usage arrives in two input partitions.
    partition_of = Partitioner(4)
    a, b = "c-a", "c-b"
    while partition_of(b) == partition_of(a):
        b += "x"
    service = IngestService(SETTINGS, "127.0.0.1:9", Metrics(), partition_of)
    service.producer = StubProducer()  # type: ignore[assignment]
    service.consumer = StubConsumer()  # type: ignore[assignment]
    u0, u1 = TopicPartition("events.usage", 0), TopicPartition("events.usage", 1)
    aligner: TimeAligner = service.aligner
    service.ingest.read({
        u0: [Record(usage(1, a), 0, 7_000), Record(usage(3, b), 1, 9_000)],
        u1: [Record(usage(2, a), 0, 4_000), Record(usage(4, b), 1, 8_000)],
    }, aligner)
    released = aligner.release([u0, u1], lambda tp: math.inf)
    assert len(released) == 4
    asyncio.run(service._publish(released))
    sent = {partition: (decode_batch(value), headers)
            for topic, value, partition, headers in service.producer.sent  # type: ignore[union-attr]
            if topic == INTERNAL}
    assert set(sent) == {partition_of(a), partition_of(b)}
    events_a, headers_a = sent[partition_of(a)]
    events_b, headers_b = sent[partition_of(b)]
    assert arrival_of(headers_a) == 4_000 and arrival_of(headers_b) == 8_000
    # The arrival time is a header, not a field of the internal topic's events.
    assert [e["h"] for e in events_a] == [event_hash("e-1"), event_hash("e-2")]
    assert all("event_id" not in e for e in events_a)     # the hash is the id downstream
    assert all(ARRIVAL not in e for e in events_a + events_b)
