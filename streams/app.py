"""The Faust application: tables, the customer agent, the flush timer and the web views.

Built by a factory from settings (not at import time) so that tests and the CLI can run
differently configured workers from the same code.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.serializers import codecs
from faust.transport.producer import ProducerBuffer
from faust.types import EventT

from streams.business import BusinessAggregator, ScopeState, StageFlush, decode_scope, encode_scope
from streams.churn import ChurnLearner
from streams.delay import ProcessingDelay
from streams.exporters.metrics import INTERNAL, Metrics, gauge
from streams.features import FeatureAggregator, FeatureState, decode_feature, encode_feature
from streams.follow import Follower, values
from streams.health import Health
from streams.ingest import IngestService
from streams.kafka_config import aiokafka_kwargs, faust_kwargs
from streams.processor import CustomerProcessor, Flush
from streams.quarantine import quarantine
from streams.settings import Settings
from streams.state import CustomerState, decode_state, encode_state
from streams.stores import PartitionedStore
from streams.topics import MODEL_MESSAGE_BYTES, Partitioner

log = logging.getLogger(__name__)


class _StateCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return encode_state(obj) if isinstance(obj, CustomerState) else bytes(obj)

    def _loads(self, s: bytes) -> Any:
        return decode_state(s)


class _Utf8Codec(codecs.Codec):
    """Keys as plain UTF-8, as Kafka's default partitioner and other clients see them."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.encode() if isinstance(obj, str) else bytes(obj)

    def _loads(self, s: bytes) -> Any:
        return s.decode()


class _ScopeCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return encode_scope(obj) if isinstance(obj, ScopeState) else bytes(obj)

    def _loads(self, s: bytes) -> Any:
        return decode_scope(s)


class _FeatureCodec(codecs.Codec):
    def _dumps(self, obj: Any) -> bytes:
        return encode_feature(obj) if isinstance(obj, FeatureState) else bytes(obj)

    def _loads(self, s: bytes) -> Any:
        return decode_feature(s)


codecs.register("vitals_state", _StateCodec())
codecs.register("vitals_scope", _ScopeCodec())
codecs.register("vitals_feature", _FeatureCodec())
codecs.register("utf8", _Utf8Codec())


@dataclass
class Service:
    """Everything a worker runs, for the CLI, the web views and the tests."""
    settings: Settings
    app: faust.App
    metrics: Metrics
    processor: CustomerProcessor
    ingest: IngestService
    aggregator: BusinessAggregator | None = None
    pending: list[EventT] = field(default_factory=list)
    # Dead letters of the customer stage, sent with the flush that writes their customers.
    deadletters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    business_pending: list[EventT] = field(default_factory=list)
    features: FeatureAggregator | None = None
    feature_pending: list[EventT] = field(default_factory=list)
    # Published records, read back from their compacted topics: any worker answers the
    # /features and /business views, whoever owns the feature or scope.
    feature_records: dict[str, dict[str, Any]] = field(default_factory=dict)
    business_records: dict[str, dict[str, Any]] = field(default_factory=dict)
    learner: ChurnLearner | None = None       # on the worker owning the churn examples topic
    learner_pending: list[EventT] = field(default_factory=list)
    flushes: int = 0
    # Partitions of the stage topics this worker owns, kept by the rebalance handlers. Events of
    # other partitions still arrive from buffers after a revocation; applied, they would be
    # acknowledged with a state that the next recovery overwrites (see `owned_event`).
    owned: set[Any] = field(default_factory=set)
    strays: int = 0
    health: Health = field(default_factory=Health)

    def quarantine(self, event: EventT, exc: Exception) -> None:
        """An internal message that made its stage raise: dead-lettered, acknowledged."""
        msg = event.message
        self.metrics.quarantined(INTERNAL)
        self.deadletters.append((msg.key, quarantine(msg.topic, msg.partition, msg.offset, exc,
                                                     msg.value)))

    def take_deadletters(self) -> list[tuple[bytes | None, bytes]]:
        taken, self.deadletters = self.deadletters, []
        return taken

    def owned_event(self, event: EventT) -> bool:
        """False for an event of a partition this worker no longer owns: skipped, not acked.

        Its new owner (or this worker, after the seek that follows the rebalance) reads it
        again from the last commit.
        """
        if event.message.tp in self.owned:
            return True
        self.strays += 1
        if self.strays in (1, 10, 100) or self.strays % 1000 == 0:
            log.info("skipped %d events of partitions not owned (rebalance)", self.strays)
        return False


def build_app(settings: Settings, broker_url: str) -> Service:
    s = settings
    app = faust.App(
        s.app.id,
        broker=broker_url,
        store=s.app.store,
        datadir=s.app.data_dir,
        topic_partitions=s.app.partitions,
        broker_session_timeout=s.app.session_timeout_seconds,
        broker_heartbeat_interval=max(0.1, s.app.session_timeout_seconds / 10),
        web_bind=s.app.web_host,
        web_host=s.app.web_host,
        web_port=s.app.web_port,
        web_in_thread=False,
        producer_max_request_size=MODEL_MESSAGE_BYTES,  # the largest: a churn model snapshot
        producer_max_batch_size=producer_batch_bytes(s, broker_url),
        consumer_max_fetch_size=16 << 20,
        table_cleanup_interval=3600.0,
        topic_disable_leader=True,
        topic_replication_factor=s.topics.replication_factor,
        topic_allow_declare=s.app.create_topics, **faust_kwargs(s.kafka),
    )
    # Faust warns when more than 100 messages wait in its producer buffer; a flush hands over
    # one changelog and one output record per changed customer at once, by design.
    ProducerBuffer.max_messages = 20_000
    metrics = Metrics()
    partition_of = Partitioner(s.app.partitions)
    delay = ProcessingDelay(metrics.processing_delay, s.topics.repartition)

    customers = _table(app, "customers", s.app.partitions, "vitals_state")
    clocks = _table(app, "clocks", s.app.partitions, "json")
    def topic(name: str, partitions: int | None = None, key: str = "utf8") -> faust.TopicT:
        return app.topic(name, partitions=partitions, key_serializer=key, value_serializer="raw")

    internal = topic(s.topics.repartition, s.app.partitions, key="raw")
    customer_out = topic(s.topics.customer)
    deadletter_out = topic(s.topics.deadletter, key="raw")
    alerts_out = topic(s.topics.alerts)
    scopes = _table(app, "scopes", s.app.partitions, "vitals_scope")
    business_in = topic(s.topics.business_internal, s.app.partitions)
    business_out = topic(s.topics.business)
    churn_in = topic(s.topics.churn_examples, 1)
    model_out = topic(s.topics.churn_model, 1)
    learner_table = _table(app, "churn_learner", 1, "raw")
    learner_store = PartitionedStore(learner_table.data, lambda key: 0)
    feature_table = _table(app, "features", s.app.partitions, "vitals_feature")
    feature_in = topic(s.topics.feature_internal, s.app.partitions)
    feature_out = topic(s.topics.feature_out)
    catalog_out = topic(s.topics.feature_catalog, 1)

    clock_store = PartitionedStore(clocks.data, int)
    customer_store = PartitionedStore(customers.data, partition_of)
    processor = CustomerProcessor(s, customer_store, clock_store, metrics, partition_of)
    ingest = IngestService(s, _bootstrap(broker_url), metrics, partition_of)
    scope_store = PartitionedStore(scopes.data, partition_of)
    aggregator = BusinessAggregator(s, scope_store)
    processor.churn_rates = aggregator.rates
    aggregator.churn_model = processor.scorer.model_record
    metrics.add_gauge_source(aggregator.gauges)
    feature_store = PartitionedStore(feature_table.data, partition_of)
    features = FeatureAggregator(s, feature_store)
    metrics.add_gauge_source(features.gauges)
    service = Service(s, app, metrics, processor, ingest, aggregator, features=features)

    def on_model() -> None:
        owner = partition_of("all")
        if any(tp.topic == s.topics.business_internal and tp.partition == owner
               for tp in app.assignor.assigned_actives()):
            aggregator.on_model()

    def on_models(records: list[Any]) -> None:
        if any([processor.scorer.update(v) for v in values(records)]):
            log.info("churn model version %s: %d customers scored again",
                     processor.scorer.version, processor.rescore())
            on_model()

    def on_catalog(records: list[Any]) -> None:
        processor.learn_catalog({r.key.decode(): orjson.loads(r.value) for r in records
                                 if r.key is not None and r.value is not None})

    def keep_latest(into: dict[str, dict[str, Any]]) -> Any:
        def handler(records: list[Any]) -> None:
            for r in records:
                if r.key is not None and r.value is not None:
                    into[r.key.decode()] = orjson.loads(r.value)
        return handler

    follower = Follower(_bootstrap(broker_url), aiokafka_kwargs(s.kafka))
    follower.follow(s.topics.churn_model, 1, on_models)
    follower.follow(s.topics.feature_catalog, 1, on_catalog)
    follower.follow(s.topics.feature_out, s.app.partitions, keep_latest(service.feature_records))
    follower.follow(s.topics.business, s.app.partitions, keep_latest(service.business_records))
    supervisor = service.health.supervise(app, follower, ingest)

    @app.agent(internal, name="apply_customer_events")
    async def apply_customer_events(stream: faust.StreamT) -> None:
        # Offsets are acknowledged by the flush timer, after the state they produced has been
        # handed to the changelog: a crash before that replays them (and dedup drops them).
        async for event in stream.noack().events():
            if not service.owned_event(event):
                continue
            try:
                batch = orjson.loads(event.message.value)
            except orjson.JSONDecodeError as exc:  # not written by our ingest
                service.quarantine(event, exc)
            else:
                service.deadletters += processor.apply(event.message.partition, batch,
                                                       event.message.offset)
            service.pending.append(event)

    def send_outputs(out: Flush, deadletters: list[tuple[bytes | None, bytes]]) -> list[Any]:
        """What the customer stage's state changes caused: sent before that state is written.

        A crash after the state write but before these sends would otherwise lose them for
        good: the replayed events are then recognised as applied and cause nothing again.
        Sent first, a crash in between only resends them, and every receiver recognises a
        resend (movements and examples by event id, alerts and records by key).
        """
        sent = [churn_in.send_soon(key="examples", value=value, partition=0)
                for value in out.examples]
        sent += [deadletter_out.send_soon(key=key, value=value) for key, value in deadletters]
        sent += [alerts_out.send_soon(key=key, value=value) for key, value in out.alerts]
        sent += [business_in.send_soon(key=scope, value=value, partition=partition_of(scope))
                 for scope, value in out.business]
        sent += [feature_in.send_soon(key=feature, value=value, partition=partition_of(feature))
                 for feature, value in out.features]
        sent += [catalog_out.send_soon(key=feature, value=value, partition=0)
                 for feature, value in out.catalog]
        return sent

    async def send_state(out: Flush) -> list[Any]:
        """The customers' records, then their partitions' clocks, then the output records."""
        customer_store.commit()   # the local copy too: only once the outputs are delivered
        sent = [customers.send_changelog(partition, key, state)
                for partition, key, state in out.changelog]
        if out.clocks:
            # A partition's clock holds the watermark its events were judged by. Restored ahead
            # of its customers' records (a crash between the two writes), it made the replay of
            # their events `too_late`: lost. So the customers are delivered first.
            await _delivered(sent)
        for partition, clock in out.clocks:
            clock_store[str(partition)] = clock
            sent.append(clocks.send_changelog(partition, str(partition), clock))
        clock_store.commit()
        # The records themselves are re-published for every customer after a recovery.
        sent += [customer_out.send_soon(key=key, value=value) for key, value in out.records]
        return sent

    async def send(out: Flush, deadletters: list[tuple[bytes | None, bytes]] | None = None
                   ) -> list[Any]:
        """A whole flush of the customer stage, outputs delivered before the state."""
        await _delivered(send_outputs(out, deadletters or []))
        return await send_state(out)

    @app.agent(business_in, name="aggregate_business")
    async def aggregate_business(stream: faust.StreamT) -> None:
        # Same contract as the customer agent: acknowledged by the flush timer only.
        async for event in stream.noack().events():
            if not service.owned_event(event):
                continue
            try:
                aggregator.apply([orjson.loads(event.message.value)])
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the stage
                service.quarantine(event, exc)
            service.business_pending.append(event)

    @app.timer(s.emit.interval_seconds, name="flush_customers")
    async def flush_customers() -> None:
        if s.time.mode == "live":
            processor.advance_wall_clock(time.time())
        # Take the events together with the flush that holds their state: `send` awaits, and
        # the agent applies more events meanwhile, whose state only the next flush writes.
        # Acknowledging those here lost them on a crash before that flush.
        out = processor.flush()
        deadletters = service.take_deadletters()
        business = aggregator.flush()
        feature_flush = features.flush()
        pending, service.pending = service.pending, []
        pending += service.business_pending
        service.business_pending = []
        pending += service.feature_pending
        service.feature_pending = []
        # Outputs of every stage first, then the state that no longer holds them (send_outputs).
        await _delivered(send_outputs(out, deadletters) + stage_outputs(business, business_out)
                         + stage_outputs(feature_flush, feature_out))
        sent = await send_state(out)
        scope_store.commit()
        feature_store.commit()
        sent += stage_state(business, scopes)
        sent += stage_state(feature_flush, feature_table)
        sent += flush_learner()
        pending += service.learner_pending
        service.learner_pending = []
        # Acknowledge only what the broker has: Faust commits acknowledged offsets after a
        # producer.flush() that gives up after 0.1 s without progress, so a commit can
        # overtake changelog records still in its buffer, and a new owner of the partition
        # would then recover a state without them while their input counts as done.
        await _delivered(sent)
        delay.observe(pending)  # their customer records are delivered now
        for event in pending:
            event.ack()
        service.flushes += 1

    @app.agent(feature_in, name="aggregate_features")
    async def aggregate_features(stream: faust.StreamT) -> None:
        # Same contract as the customer agent: acknowledged by the flush timer only.
        async for event in stream.noack().events():
            if not service.owned_event(event):
                continue
            try:
                features.apply(event.message.key.decode(), orjson.loads(event.message.value))
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the stage
                service.quarantine(event, exc)
            service.feature_pending.append(event)

    def stage_outputs(out: StageFlush, records: faust.TopicT) -> list[Any]:
        """A keyed stage's records and alerts (their futures): sent before its state."""
        sent = [records.send_soon(key=key, value=value) for key, value in out.records]
        sent += [alerts_out.send_soon(key=key, value=value) for key, value in out.alerts]
        return sent

    def stage_state(out: StageFlush, table: faust.Table) -> list[Any]:
        return [table.send_changelog(partition_of(key), key, state)
                for key, state in out.changelog]

    def learner_gauges() -> list[Any]:
        """The learner's figures, from the one worker that owns it (so sum() is right)."""
        learner = service.learner
        if learner is None:
            return []
        rec = learner.metrics_record()
        return [gauge("vitals_churn_model_auc", "Progressive ROC AUC of the churn model", (),
                      {} if rec["auc"] is None else {(): rec["auc"]}),
                gauge("vitals_churn_model_labelled", "Labelled snapshots the churn model learnt",
                      (), {(): float(learner.learned)})]

    metrics.add_gauge_source(learner_gauges)
    metrics.add_gauge_source(processor.scorer.gauges)   # refused model snapshots

    def lag_gauges() -> list[Any]:
        """Offset lag of both consumer groups over the partitions this worker owns."""
        series = {(f"{s.app.id}-ingest", topic): float(n) for topic, n in ingest.lag().items()}
        consumer = app.consumer
        for tp in service.owned:
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - not fetched yet: no figure rather than a guess
                continue
            if high is None:
                continue
            # Faust keeps the offset of the last committed record (the next one is committed).
            committed = consumer._committed_offset.get(tp)  # noqa: SLF001
            done = 0 if committed is None else committed + 1
            key = (s.app.id, tp.topic)
            series[key] = series.get(key, 0.0) + max(0, high - done)
        return [gauge("vitals_consumer_lag_records",
                      "Records not yet committed, by consumer group and topic (offset lag)",
                      ("group", "topic"), series)]

    metrics.add_gauge_source(lag_gauges)

    @app.agent(churn_in, name="learn_churn")
    async def learn_churn(stream: faust.StreamT) -> None:
        # One partition: one learner for the service. Acknowledged once its state is written.
        async for event in stream.noack().events():
            if not service.owned_event(event):
                continue
            if service.learner is None:
                service.learner = ChurnLearner(s.churn, learner_table.data.get("learner"))
            try:
                service.learner.apply(orjson.loads(event.message.value))
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the stage
                service.quarantine(event, exc)
            service.learner_pending.append(event)

    def save_learner() -> list[Any]:
        learner = service.learner
        if learner is None or not learner.changed:
            return []
        blob = learner.to_bytes()
        learner_store["learner"] = blob
        learner_store.commit()   # after the examples it learnt from were delivered
        return [learner_table.send_changelog(0, "learner", blob)]

    def flush_learner() -> list[Any]:
        """The learner's state, and a new model version when one is due (their futures)."""
        learner = service.learner
        if learner is None:
            return []
        model = learner.publish()
        sent = save_learner()  # before the version it names goes out
        if model is not None:
            sent.append(model_out.send_soon(key="model", value=model, partition=0))
        return sent

    @app.on_rebalance_complete.connect
    async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
        # Sent by Faust's recovery just before it resumes the streams and seeks them.
        await _rewind_uncommitted(app.consumer, {
            s.topics.repartition, s.topics.business_internal, s.topics.feature_internal,
            s.topics.churn_examples})
        service.owned = set(app.assignor.assigned_actives())
        mine = {tp.partition for tp in service.owned if tp.topic == s.topics.repartition}
        owned = set(processor.members)
        await _delivered(await send(processor.revoke(owned - mine), service.take_deadletters()))
        processor.assign(mine)
        log.info("customer partitions assigned: %s", sorted(mine))
        # A model version that arrived while scope `all` had no owner re-emitted nothing: its
        # (new) owner re-emits the current month with the model it holds.
        on_model()

    @app.on_partitions_revoked.connect
    async def on_partitions_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        service.owned -= set(revoked)
        gone = {tp.partition for tp in revoked if tp.topic == s.topics.business_internal}
        aggregator.revoke({scope for scope in list(scopes.data.keys())
                           if partition_of(scope) in gone} | {
                              scope for scope in aggregator.live if partition_of(scope) in gone})
        service.business_pending = [e for e in service.business_pending
                                    if e.message.tp not in revoked]
        lost = {tp.partition for tp in revoked if tp.topic == s.topics.feature_internal}
        features.revoke({f for f in [*feature_table.data.keys(), *features.live]
                         if partition_of(f) in lost})
        service.feature_pending = [e for e in service.feature_pending
                                   if e.message.tp not in revoked]
        # Deliver what revoke() writes before the rebalance goes on, or the recovery that
        # follows it may restore an older record over it.
        # Pending dead letters go too: the records revoke() writes hold their positions, so
        # the next owner skips their events.
        sent = await send(processor.revoke({tp.partition for tp in revoked
                                            if tp.topic == s.topics.repartition}),
                          service.take_deadletters())
        if any(tp.topic == s.topics.churn_examples for tp in revoked):
            sent += save_learner()
            service.learner = None
        service.learner_pending = [e for e in service.learner_pending
                                   if e.message.tp not in revoked]
        await _delivered(sent)
        service.pending = [e for e in service.pending
                           if e.message.tp not in revoked]

    @app.service
    class _Ingest(faust.Service):  # noqa: N801 - started and stopped with the worker
        async def on_start(self) -> None:
            await supervisor.start()  # starts the follower, then the ingest

        async def on_stop(self) -> None:
            await ingest.stop()
            await follower.stop()
            await supervisor.stop()

    from streams.exporters.web import register_views
    register_views(service, customers)
    return service


async def _delivered(sent: list[Any]) -> None:
    """Wait until the broker has acknowledged every send (Faust's FutureMessage)."""
    if sent:
        await asyncio.gather(*sent)


async def _rewind_uncommitted(consumer: Any, topics: set[str]) -> None:
    """Start every never-committed partition of `topics` at its beginning, before it resumes.

    After recovery Faust seeks every stream partition to its committed offset, but aiokafka's
    `seek_to_committed` leaves a partition without one (or at 0) where the consumer stands.
    Records fetched around the rebalance and dropped (Faust discards what it fetches while a
    rebalance suspends the flow) can already have moved that position, so the new owner of a
    partition nobody had committed yet would skip its first records. A first owner under load
    can go long without a commit (Faust's commit timer overlaps).

    This runs from `on_rebalance_complete`, while the stream partitions are still paused: Faust
    awaits `perform_seek` only after resuming them, and drops any record below the last offset
    it delivered, so a rewind from there would skip what it is for.

    Replaying from the beginning changes no state: each customer record knows the last internal
    position it holds, and business records recognise what they already hold.
    """
    if not consumer.assignment():
        return  # a worker with no partitions (more workers than partitions) has nothing to seek
    committed = await consumer.seek_to_committed()
    fresh = [tp for tp, offset in committed.items() if tp.topic in topics and not offset]
    if fresh:
        # seek_wait, not seek: Faust's `seek` calls aiokafka's from this thread while the
        # consumer thread's fetcher walks its records, and the two `del` the same entry
        # (a KeyError in `fetched_records` that crashes the worker).
        await consumer.seek_wait(dict(await consumer.earliest_offsets(*fresh)))
        log.info("no committed offset yet, reading from the beginning: %s",
                 sorted(f"{tp.topic}[{tp.partition}]" for tp in fresh))


def producer_batch_bytes(settings: Settings, broker_url: str) -> int:
    """See app.producer_batch_bytes: one record per batch on Tansu, Kafka's default elsewhere."""
    if settings.app.producer_batch_bytes:
        return settings.app.producer_batch_bytes
    return 1 if settings.app.broker == "embedded" else 16384


def _table(app: faust.App, name: str, partitions: int, value_serializer: str) -> faust.Table:
    """A table whose changelog keys are plain UTF-8 (Faust's routing hashes them like we do)."""
    table = app.Table(name, partitions=partitions, schema=faust.Schema(
        key_serializer="utf8", value_serializer=value_serializer))
    # Faust derives both serializers from key_type/value_type (json or raw only) and builds the
    # changelog topic as soon as the table is registered: set ours, then let it be rebuilt.
    table.key_serializer = "utf8"
    table.value_serializer = value_serializer
    table._changelog_topic = None
    return table


def _bootstrap(broker_url: str) -> str:
    from streams.topics import bootstrap_servers

    return bootstrap_servers(broker_url)


__all__ = ["Service", "build_app"]
