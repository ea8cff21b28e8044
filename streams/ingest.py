"""Ingest: input topics -> validated events, batched per customer partition.

This stage reads with aiokafka directly rather than through a Faust stream: Faust's per-message
path costs ~90 µs (about 11,000 events/s measured here), while validation itself costs ~5 µs.
Events are re-published to the internal topic as one message per customer partition per poll,
so the Faust agent downstream pays its per-message cost once per few hundred events.

Input partitions are read at different speeds: on a replay a quiet topic (billing) can be read
months ahead of a busy one (usage), which would push watermarks forward and make good events
"too late". The TimeAligner releases events across partitions in event-time order, holding each
event until every partition that still has unread data has been read past it (as Kafka Streams
does); partitions that are caught up never hold the others back.

Delivery is at-least-once: input offsets are committed only after the batches and dead letters
of a poll are acknowledged by the broker; a replayed event is recognised downstream by its
event_id, so nothing is counted twice.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from models.activity import DAY_SECONDS
from streams.assignor import CoPartitionedAssignor
from streams.batches import AHEAD_OF_INPUT, RAW_BYTES, encode_batch
from streams.deadletter import RAW_MAX_BYTES, bounded_key, deadletter_value, raw_excerpt
from streams.delay import ARRIVAL, arrival_headers, take_oldest_arrival
from streams.events import (
    NOT_JSON,
    PROCESSING_ERROR,
    EventValidator,
    InvalidEvent,
    event_hash,
    unframe,
)
from streams.exporters.metrics import Metrics
from streams.kafka_config import aiokafka_kwargs
from streams.settings import Settings
from streams.topics import Partitioner

log = logging.getLogger(__name__)
MAX_EVENTS_PER_MESSAGE = 500
MAX_BUFFERED_PER_PARTITION = 20_000
# Records before a committed offset read again after an assignment, to learn the input
# partition's level (the highest time two consecutive events reached) as it was there.
LEVEL_CONTEXT_RECORDS = 64


class TimeAligner:
    """Releases items of several partitions in event-time order, never beyond what is safe.

    Items of one partition leave in offset order (so committed offsets stay a prefix); across
    partitions the smallest head time goes first, up to the smallest read-so-far time of the
    partitions that still have unread data.

    A partition read to its end (idle) may still receive an event older than the others'
    heads: the producer may simply not have written it yet. It holds back only items written
    to the broker less than ``order_grace`` seconds before the fetch that found it empty:
    whatever it receives next was written after that fetch, so (for producers that write in
    event-time order, within the grace) it is not older than an item written before it.
    A backlog therefore leaves at once, and a live item waits at most the grace.

    A single event far ahead of its partition (a device with a wrong clock) must neither hold
    the rest of its partition back (it would leave last, and everything read after it would
    reach the customer stage as too late) nor let the others run ahead. A partition's time is
    therefore its *level*: the highest time that two consecutive events reached (the smaller
    of each pair). An event more than ``max_skew`` ahead of that level is ordered at the
    level: it leaves at once, and the customer stage holds it until its time comes.

    A late event (older than its partition's level) is ordered at the level too. By its own
    time it would go before or after other partitions' events between its time and the level
    depending on whether those were already released when it was read, i.e. on fetch sizes
    and restarts; at the level, its place depends on the input alone. Ties go by partition,
    not by which partition was fetched first. Read again from its committed offsets after a
    restart, the rest leaves in the same order: everything ordered before an item released
    then had been released too, and the levels after the offsets rise through the same pairs
    of events. The level at the offset is learnt from the records just before it, read again
    as ``context``: from the first record after it, a bad clock there became the level.
    """

    def __init__(self, max_skew: float = math.inf, order_grace: float = 0.0) -> None:
        self.max_skew = max_skew
        self.order_grace = order_grace
        # (ordering time, offset, item, time written to the broker)
        self.buffers: dict[Hashable, deque[tuple[float, int, Any, float]]] = {}
        self.read_to: dict[Hashable, float] = {}     # level of the items read so far
        self.last_ts: dict[Hashable, float] = {}     # event time of the last item read
        self.next_offset: dict[Hashable, int] = {}   # offset after the last item read
        self.first_offset: dict[Hashable, int] = {}  # where reading started (start_at)

    def add(self, tp: Hashable, ts: float, offset: int, item: Any,
            written: float = -math.inf) -> bool:
        """ts = -inf for items with no event time (dead letters): they leave at once.
        ``written``: when the record reached the broker (epoch seconds; -inf if unknown).
        True when the item is more than ``max_skew`` ahead of its partition's level."""
        buf = self.buffers.get(tp)
        if buf is None:
            buf = self.buffers[tp] = deque()
        self.next_offset[tp] = offset + 1
        if ts == -math.inf:
            buf.append((ts, offset, item, -math.inf))
            return False
        level = self._rise(tp, ts)
        if ts <= level + self.max_skew:
            buf.append((max(ts, level), offset, item, written))
            return False
        buf.append((level, offset, item, written))
        return True

    def _rise(self, tp: Hashable, ts: float) -> float:
        """The partition's level once ``ts`` is read."""
        level = self.read_to.get(tp, -math.inf)
        last = self.last_ts.get(tp)
        self.last_ts[tp] = ts
        if last is None:
            level = self.read_to[tp] = ts
        elif min(last, ts) > level:
            level = self.read_to[tp] = min(last, ts)
        return level

    def context(self, tp: Hashable, ts: float) -> None:
        """An item read again from before the partition's first offset, only to learn its
        level: after a restart the level starts from what was read before the committed
        offset, not from whatever comes first after it (a late event there set it back,
        and what followed left in another order than before the restart)."""
        if ts != -math.inf:
            self._rise(tp, ts)

    def release(self, partitions: Iterable[Hashable],
                empty_at: Callable[[Hashable], float | None]) -> list[Any]:
        """Items that can leave now. ``partitions`` are all those being read, with data or not;
        ``empty_at(tp)`` is the time (epoch seconds) of the latest fetch that found tp read to
        its end, or None while it has unread data."""
        partitions = list(partitions)
        # Ties go by partition: an item may leave at its unread neighbours' level only if it
        # is ordered before them (their next item may have that very time).
        rank = {tp: i for i, tp in enumerate(sorted({*partitions, *self.buffers}, key=repr))}
        limit: tuple[float, int] = (math.inf, 0)
        idle: list[tuple[float, float, Hashable]] = []   # (level, written-before, partition)
        for tp in partitions:
            at = empty_at(tp)
            if at is None:
                limit = min(limit, (self.read_to.get(tp, -math.inf), rank[tp]))
            else:
                idle.append((self.read_to.get(tp, -math.inf), at - self.order_grace, tp))
        bound = _IdleBound(idle)
        any_level, any_written = bound.any_level, bound.any_written
        heads = [(buf[0][0], rank[tp], tp) for tp, buf in self.buffers.items() if buf]
        heapq.heapify(heads)
        out: list[Any] = []
        while heads:
            ts, i, tp = heads[0]
            if (ts, i) > limit:
                break
            buf = self.buffers[tp]
            if ts > any_level and buf[0][3] > any_written and not bound.passes(
                    tp, ts, buf[0][3]):
                break
            out.append(buf.popleft()[2])
            if buf:
                heapq.heapreplace(heads, (buf[0][0], i, tp))
            else:
                heapq.heappop(heads)
        return out

    def start_at(self, tp: Hashable, offset: int) -> None:
        """A partition's first offset to read, before anything was read from it (the items
        before it are read as ``context`` only)."""
        self.next_offset.setdefault(tp, offset)
        self.first_offset.setdefault(tp, offset)


    def committable(self) -> dict[Hashable, int]:
        """Per partition, the offset up to which everything has been released."""
        return {tp: (buf[0][1] if buf else self.next_offset[tp])
                for tp, buf in self.buffers.items() if tp in self.next_offset}

    def buffered(self, tp: Hashable) -> int:
        buf = self.buffers.get(tp)
        return len(buf) if buf else 0

    def forget(self, tps: set[Hashable]) -> None:
        for tp in tps:
            self.buffers.pop(tp, None)
            self.read_to.pop(tp, None)
            self.last_ts.pop(tp, None)
            self.next_offset.pop(tp, None)
            self.first_offset.pop(tp, None)


class _IdleBound:
    """Whether an item may pass the idle partitions other than its own: its time is within
    their levels, or it was written before their last empty fetch minus the grace. Taking the
    smallest level and the smallest write bound of the others is a little stricter than
    asking each partition in turn, and costs O(1) per item: only the two smallest of each
    matter (one of them may be the item's own partition)."""

    __slots__ = ("levels", "written", "any_level", "any_written")

    def __init__(self, idle: list[tuple[float, float, Hashable]]) -> None:
        self.levels = heapq.nsmallest(2, ((lv, tp) for lv, _, tp in idle), key=_first)
        self.written = heapq.nsmallest(2, ((w, tp) for _, w, tp in idle), key=_first)
        # Within these an item passes every idle partition, its own included (the fast path).
        self.any_level = self.levels[0][0] if self.levels else math.inf
        self.any_written = self.written[0][0] if self.written else math.inf

    def passes(self, tp: Hashable, ts: float, written: float) -> bool:
        return ts <= _smallest_other(self.levels, tp) or written <= _smallest_other(
            self.written, tp)


def _first(pair: tuple[float, Hashable]) -> float:
    return pair[0]


def _smallest_other(pairs: list[tuple[float, Hashable]], tp: Hashable) -> float:
    for value, p in pairs:
        if p != tp:
            return value
    return math.inf


class Ingest:
    """The pure part: records -> validated events or dead letters, and their routing."""

    def __init__(self, settings: Settings, metrics: Metrics, partition_of: Partitioner) -> None:
        self.families = settings.topics.input_topics()
        self.validator = EventValidator(settings.app.reporting_currency,
                                        settings.revenue.currency_rates,
                                        settings.ingest.max_event_bytes,
                                        min_ts=settings.time.min_epoch())
        self.metrics = metrics
        self.partition_of = partition_of
        self.warned_misplaced = False

    def read(self, records: dict[TopicPartition, list[Any]], aligner: TimeAligner) -> None:
        """Validate a poll's records into the aligner: events with their time, dead letters at -inf.

        No record can stop this loop: an invalid one becomes a dead letter with its code, and
        an unexpected error in validation becomes a `processing_error` dead letter (logged).
        """
        parse = self.validator.parse
        add = aligner.add
        # When each record reached the broker, as far as we can tell: its Kafka timestamp, but
        # never later than now (a producer with a clock ahead must not hold others back).
        now_ms = time.time() * 1000.0
        for tp, messages in records.items():
            family = self.families[tp.topic]
            start = aligner.first_offset.get(tp)
            if start is not None and messages and messages[0].offset < start:
                for msg in messages:
                    if msg.offset < start:
                        aligner.context(tp, self._time_of(family, msg.value))
                messages = [msg for msg in messages if msg.offset >= start]
            for msg in messages:
                raw = msg.value
                key = bounded_key(msg.key)
                try:
                    if raw is None:
                        raise InvalidEvent(NOT_JSON, "value is empty (tombstone)")
                    event = parse(family, raw)
                    event["h"] = event_hash(event["event_id"])
                    # The JSON without a Schema Registry frame (valid UTF-8: orjson parsed it),
                    # sent after the batch's JSON (streams/batches.py); a large one is cut
                    # here, into the fields its dead letter would carry.
                    text = unframe(raw)
                    if len(text) <= RAW_MAX_BYTES:
                        event[RAW_BYTES] = text
                    else:
                        event["raw"] = raw_excerpt(text)
                except InvalidEvent as exc:
                    self._reject(tp, msg.offset, key, family, exc.code, exc.detail, raw, aligner)
                    continue
                except Exception as exc:  # a validator bug must not stop the ingest
                    log.exception("validating %s offset %s failed", tp, msg.offset)
                    self._reject(tp, msg.offset, key, family, PROCESSING_ERROR,
                                 f"{type(exc).__name__}: {exc}", raw, aligner)
                    continue
                event["src"] = (tp.topic, tp.partition, msg.offset)
                event[ARRIVAL] = msg.timestamp  # taken off again in _publish (streams/delay.py)
                if key is not None:
                    event["key"] = key.decode("utf-8", "replace")
                if add(tp, event["ts"], msg.offset, event, min(msg.timestamp, now_ms) / 1000.0):
                    event[AHEAD_OF_INPUT] = True

    def _time_of(self, family: str, raw: bytes | None) -> float:
        """A record's event time, -inf for one that is not a valid event."""
        try:
            return float(self.validator.parse(family, raw)["ts"]) if raw is not None \
                else -math.inf
        except Exception:  # noqa: BLE001 - dead-lettered when it was read the first time
            return -math.inf

    def _reject(self, tp: TopicPartition, offset: int, key: bytes | None, family: str,
                code: str, detail: str, raw: bytes | None, aligner: TimeAligner) -> None:
        self.metrics.deadletter(family, code)
        aligner.add(tp, -math.inf, offset, (key, deadletter_value(
            tp.topic, tp.partition, offset, code, detail, raw)))

    def route(self, released: list[Any]
              ) -> tuple[dict[int, list[dict[str, Any]]], list[tuple[bytes | None, bytes]]]:
        """Released items -> events per customer partition (in release order) and dead letters."""
        batches: dict[int, list[dict[str, Any]]] = defaultdict(list)
        deadletters: list[tuple[bytes | None, bytes]] = []
        misplaced = self.metrics.not_copartitioned_event
        for item in released:
            if isinstance(item, tuple):
                deadletters.append(item)
                continue
            partition = self.partition_of(item["customer_id"])
            batches[partition].append(item)
            if partition != item["src"][1]:
                # Its customer's other events may come through another worker's ingest, whose
                # event time is not this one's: counted and warned about, not corrected.
                misplaced(item["family"])
                if not self.warned_misplaced:
                    self.warned_misplaced = True
                    log.warning("input %s partition %s holds customer %s of partition %s: the "
                                "input is not partitioned by customer_id with Kafka's default "
                                "(murmur2) partitioner; with more than one worker, figures can "
                                "depend on timing (docs/contract.md)", item["src"][0],
                                item["src"][1], item["customer_id"], partition)
        return batches, deadletters


class IngestService(Service):
    """Runs the poll -> publish -> commit loop inside the worker."""

    def __init__(self, settings: Settings, bootstrap: str, metrics: Metrics,
                 partition_of: Partitioner, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.bootstrap = bootstrap
        self.ingest = Ingest(settings, metrics, partition_of)
        self.aligner = TimeAligner(settings.time.max_skew_days * DAY_SECONDS,
                                   settings.ingest.order_grace_seconds)
        self.assigned_at: dict[TopicPartition, float] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        # A member of the ingest group between two rebalances, with partitions or not: a
        # worker beyond the partition count is a ready standby (it answers HTTP requests,
        # which are routed to the owner), not a failed start that blocks a rollout.
        self.ready = False
        self.polls = 0

    async def on_start(self) -> None:
        s = self.settings
        session_ms = int(s.app.session_timeout_seconds * 1000)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            partition_assignment_strategy=(CoPartitionedAssignor,),
            group_id=f"{s.app.id}-ingest", enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 3),
            max_poll_records=s.ingest.batch_max_events,
            max_partition_fetch_bytes=4 << 20, **aiokafka_kwargs(s.kafka),
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5,
                                         max_batch_size=1 << 20, max_request_size=8 << 20,
                                         **aiokafka_kwargs(s.kafka))
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe(list(s.topics.input_topics()), listener=_Rebalance(self))

    async def on_stop(self) -> None:
        self.ready = False
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    def lag(self) -> dict[str, int]:
        """Records not yet committed per input topic, over this worker's partitions (offsets,
        as of the last fetch: the broker's end offset minus what the aligner released)."""
        if self.consumer is None:
            return {}
        done = {**self.aligner.next_offset, **self.aligner.committable()}
        out: dict[str, int] = defaultdict(int)
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None and tp in done:
                out[tp.topic] += max(0, high - done[tp])
        return dict(out)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Revoked partitions: their buffered events are re-read from the last commit by
        whoever owns them next (here too, under aiokafka's eager protocol), so nothing of them
        may stay buffered, nor count as caught up from an old assignment time."""
        self.aligner.forget(partitions)
        for tp in partitions:
            self.assigned_at.pop(tp, None)

    @Service.task
    async def _poll_loop(self) -> None:
        assert self.consumer is not None and self.producer is not None
        s = self.settings
        timeout_ms = int(s.ingest.poll_timeout_seconds * 1000)
        while not self.should_stop:
            records = await self.consumer.getmany(timeout_ms=timeout_ms,
                                                  max_records=s.ingest.batch_max_events)
            assignment = self.consumer.assignment()
            await self._track_assignment(assignment)
            self.ingest.read(records, self.aligner)
            released = self.aligner.release(assignment, self._empty_at)
            self._throttle(assignment)
            if released or records:
                await self._publish(released)

    async def _track_assignment(self, assignment: set[TopicPartition]) -> None:
        assert self.consumer is not None
        now = time.monotonic()
        for tp in assignment:
            if tp not in self.assigned_at:
                self.assigned_at[tp] = now
                # Set by the rebalance listener before any fetch (this poll may already hold
                # records of tp, and its position is then past them).
                self.aligner.start_at(tp, await self.consumer.position(tp))
        gone = set(self.assigned_at) - assignment
        if gone:
            # Their new owner re-reads everything past the last commit.
            self.aligner.forget(gone)
            for tp in gone:
                del self.assigned_at[tp]

    def _empty_at(self, tp: TopicPartition) -> float | None:
        """When the latest fetch found tp read to its end (epoch seconds), or None while it has
        unread data (streams/ingest.py TimeAligner)."""
        assert self.consumer is not None
        if tp not in self.assigned_at:
            return math.inf
        high = self.consumer.highwater(tp)
        if high is None:
            # Not fetched yet since its assignment: nothing is known of it, so it holds the
            # others back (taking it for empty after a while let a partition handed over
            # during a burst fall far behind the others, and its events turned too late).
            return None
        if self.aligner.next_offset.get(tp, 0) < high:
            return None
        fetched_ms = self.consumer.last_poll_timestamp(tp)
        return time.time() if fetched_ms is None else fetched_ms / 1000.0

    def _throttle(self, assignment: set[TopicPartition]) -> None:
        """Pause partitions read far ahead of the others; their events wait in memory."""
        assert self.consumer is not None
        paused = self.consumer.paused()
        for tp in assignment:
            n = self.aligner.buffered(tp)
            if n > MAX_BUFFERED_PER_PARTITION and tp not in paused:
                self.consumer.pause(tp)
            elif n < MAX_BUFFERED_PER_PARTITION // 2 and tp in paused:
                self.consumer.resume(tp)

    async def _publish(self, released: list[Any]) -> None:
        assert self.consumer is not None and self.producer is not None
        batches, deadletters = self.ingest.route(released)
        topics = self.settings.topics
        sends = []
        for partition, events in batches.items():
            for i in range(0, len(events), MAX_EVENTS_PER_MESSAGE):
                chunk = events[i:i + MAX_EVENTS_PER_MESSAGE]
                headers = arrival_headers(take_oldest_arrival(chunk))
                value = encode_batch(chunk)
                sends.append(await self.producer.send(topics.repartition, value,
                                                      partition=partition, headers=headers))
        for key, value in deadletters:
            sends.append(await self.producer.send(topics.deadletter, value, key=key))
        # Commit only what the broker has acknowledged: at-least-once, never lost.
        await asyncio.gather(*sends)
        offsets = self.aligner.committable()
        if not offsets:   # a poll of context records only (TimeAligner.context): nothing new
            self.polls += 1
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions; their new owner re-reads from the last commit
            # and the customer stage drops what it already has.
            log.warning("ingest commit failed (%s); events will be re-read and deduplicated", exc)
        self.polls += 1


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: IngestService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.service.ready = False     # called before every rejoin
        self.service.forget(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Where each partition starts, before anything of it is fetched; the records just
        before that offset are read again for the level only (TimeAligner.context). Below
        the log start, the consumer's "earliest" applies."""
        consumer, aligner = self.service.consumer, self.service.aligner
        assert consumer is not None
        for tp in assigned:
            start = await consumer.position(tp)
            aligner.start_at(tp, start)
            if start > 0:
                consumer.seek(tp, max(0, start - LEVEL_CONTEXT_RECORDS))
        self.service.ready = True      # also with no partitions: called after every join
