"""Black-box Kafka helpers on confluent-kafka (librdkafka), independent of the service's aiokafka."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition


class Out:
    """Reads a topic from the beginning in a thread (no consumer group, so no join delay)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[tuple[str | None, dict[str, Any]]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{topic}",
                                   "enable.auto.commit": False})
        meta = self._consumer.list_topics(topic, timeout=10)
        partitions = meta.topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            key = msg.key().decode() if msg.key() else None
            value = orjson.loads(msg.value())
            with self._lock:
                self.records.append((key, value))
                if key is not None:
                    self.latest[key] = value

    def wait_for(self, predicate: Callable[[Out], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                result = predicate(self)
            if result:
                return result
            time.sleep(0.05)
        with self._lock:
            raise AssertionError(f"timed out on {self.topic}; {len(self.records)} records seen, "
                                 f"last: {self.records[-3:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


class In:
    def __init__(self, bootstrap: str) -> None:
        # Keyed like a Java client (murmur2), as docs/contract.md asks of producers.
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                                  "partitioner": "murmur2_random"})

    def send(self, topic: str, value: dict[str, Any] | bytes, key: str | None = None) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        if key is None and isinstance(value, dict):
            key = value.get("customer_id")
        self.producer.produce(topic, raw, key=key)

    def flush(self) -> None:
        assert self.producer.flush(10) == 0, "events not delivered"

    def send_events(self, prefix: str, events: Iterable[tuple[str, Any]]) -> None:
        """Each simulated (family, event) to `<prefix>.events.<family>`, keyed by customer,
        waiting whenever librdkafka's local queue (100,000 messages) is full; then flush."""
        for family, event in events:
            key = None
            if isinstance(event, dict):
                key = event.get("customer_id") or (event.get("context") or {}).get("groupId")
            while True:
                try:
                    self.send(f"{prefix}.events.{family}", event, key=key)
                    break
                except BufferError:
                    self.producer.poll(0.2)
        self.flush()


def group_lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Messages not yet committed by a consumer group over the given topics."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        tps = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10)
            tps += [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
        committed = consumer.committed(tps, timeout=10)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                       timeout=10)
            done = tp.offset if tp.offset >= 0 else low
            lag += max(0, high - done)
        return lag
    finally:
        consumer.close()


QUIET_SECONDS = 1.5


def read_all(bootstrap: str, topic: str, timeout: float = 60.0
             ) -> list[tuple[str | None, dict[str, Any]]]:
    """Every record of a topic, from the beginning to the end it has now, in partition order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return []
        ends = {}
        for p in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[tuple[str | None, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        # The embedded broker's end offsets can lag the log by a batch: past them, read on
        # until the topic has been quiet for a while.
        quiet_since = None
        while ends or quiet_since is None or time.monotonic() - quiet_since < QUIET_SECONDS:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: not read to its end in {timeout} s: {ends}")
            msg = consumer.poll(0.25)
            if msg is None or msg.error():
                if not ends and quiet_since is None:
                    quiet_since = time.monotonic()
                continue
            quiet_since = None
            if msg.value() is not None:
                key = msg.key().decode() if msg.key() else None
                out.append((key, orjson.loads(msg.value())))
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                ends.pop(msg.partition(), None)
        return out
    finally:
        consumer.close()
