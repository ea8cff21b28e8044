"""The Faust application: its topics and tables, its stages, and the wiring between them.

The agents live in streams/agents.py, the delivery rules (outbox, acknowledgement, ordering)
in streams/delivery.py.

Built by a factory from settings (not at import time) so that tests and the CLI can run
differently configured workers from the same code.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import faust
import orjson
from faust.serializers import codecs
from faust.transport.producer import ProducerBuffer

from streams.agents import register_agents
from streams.business import BusinessAggregator, ScopeState, decode_scope, encode_scope
from streams.delay import ProcessingDelay
from streams.delivery import Delivery, Outlets, StageTopics
from streams.exporters.metrics import Metrics, gauge
from streams.features import FeatureAggregator, FeatureState, decode_feature, encode_feature
from streams.follow import Follower, values
from streams.health import ReportingSupervisor
from streams.ingest import IngestService
from streams.kafka_config import aiokafka_kwargs, faust_kwargs
from streams.processor import CustomerProcessor
from streams.recovery import EndProbe, SafeTableManager, true_ends
from streams.service import Service
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


def build_app(settings: Settings, broker_url: str) -> Service:
    """A worker: its app, topics and tables, its stages, their agents and the web views."""
    s = settings
    app = _faust_app(s, broker_url)
    metrics = Metrics()
    partition_of = Partitioner(s.app.partitions)
    out = _outlets(app, s, partition_of)
    processor = CustomerProcessor(s, out.customer_store, out.clock_store, metrics, partition_of)
    ingest = IngestService(s, _bootstrap(broker_url), metrics, partition_of)
    aggregator = BusinessAggregator(s, out.scope_store)
    aggregator.churn_model = processor.scorer.model_record
    features = FeatureAggregator(s, out.feature_store)
    service = Service(s, app, metrics, processor, ingest, aggregator, features)
    for source in (aggregator.gauges, features.gauges, partial(learner_gauges, service),
                   processor.scorer.gauges,   # refused model snapshots
                   partial(lag_gauges, service)):
        metrics.add_gauge_source(source)

    def on_model() -> None:
        owner = partition_of("all")
        if any(tp.topic == s.topics.business_internal and tp.partition == owner
               for tp in app.assignor.assigned_actives()):
            aggregator.on_model()

    follower = _follower(service, broker_url, on_model)
    supervisor = service.health.supervise(app, follower, ingest)
    delivery = Delivery(service, out, partition_of, StageTopics(
        customer=s.topics.repartition, business=s.topics.business_internal,
        feature=s.topics.feature_internal, churn=s.topics.churn_examples),
        ProcessingDelay(metrics.processing_delay, s.topics.repartition))
    inputs = {"customer": _topic(app, s.topics.repartition, s.app.partitions, key="raw"),
              "business": out.business_in, "feature": out.feature_in,
              "churn": out.churn_examples}
    register_agents(service, delivery, inputs, out.learner, on_model)
    _lifecycle(service, follower, supervisor)

    from streams.exporters.web import register_views
    register_views(service, out.customers)
    return service


class App(faust.App):
    """Faust's app (same name: the health report says "App died"), which does not wait for
    acknowledgements when it stops.

    Input is acknowledged by the flush timer once its state is delivered
    (streams/delivery.py). At a rebalance Faust waits for that, and the timer still runs. When
    the worker stops, the timer stops with it and nothing can be acknowledged any more, so the
    wait never ended (a SIGTERM hung until the kill). Unacknowledged events are replayed by
    their next owner and skipped by position.
    """

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        if self.should_stop:
            logger.info("Stopping: unacknowledged events are left to the next owner")
            return
        await super()._consumer_wait_empty(consumer, logger)

    #: Table recovery's end offsets, read rather than asked for (streams/recovery.py).
    end_probe: EndProbe | None = None


def _faust_app(s: Settings, broker_url: str) -> faust.App:
    app = App(
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
        TableManager=SafeTableManager,
        topic_disable_leader=True,
        topic_replication_factor=s.topics.replication_factor,
        topic_allow_declare=s.app.create_topics, **faust_kwargs(s.kafka),
    )
    # Table recovery reads each changelog to its true end, which Tansu reports short.
    app.end_probe = partial(true_ends, _bootstrap(broker_url), aiokafka_kwargs(s.kafka))
    # Faust warns when more than 100 messages wait in its producer buffer; a flush hands over
    # one changelog and one output record per changed customer at once, by design.
    ProducerBuffer.max_messages = 20_000
    return app


def _topic(app: faust.App, name: str, partitions: int | None = None,
           key: str = "utf8") -> faust.TopicT:
    return app.topic(name, partitions=partitions, key_serializer=key, value_serializer="raw")


def _outlets(app: faust.App, s: Settings, partition_of: Partitioner) -> Outlets:
    """The topics the stages write and the tables of their state (declared in this order)."""
    customers = _table(app, "customers", s.app.partitions, "vitals_state")
    clocks = _table(app, "clocks", s.app.partitions, "json")
    customer_out = _topic(app, s.topics.customer)
    deadletter_out = _topic(app, s.topics.deadletter, key="raw")
    alerts_out = _topic(app, s.topics.alerts)
    scopes = _table(app, "scopes", s.app.partitions, "vitals_scope")
    business_in = _topic(app, s.topics.business_internal, s.app.partitions)
    business_out = _topic(app, s.topics.business)
    churn_in = _topic(app, s.topics.churn_examples, 1)
    model_out = _topic(app, s.topics.churn_model, 1)
    learner_table = _table(app, "churn_learner", 1, "raw")
    feature_table = _table(app, "features", s.app.partitions, "vitals_feature")
    feature_in = _topic(app, s.topics.feature_internal, s.app.partitions)
    feature_out = _topic(app, s.topics.feature_out)
    catalog_out = _topic(app, s.topics.feature_catalog, 1)
    return Outlets(
        customer=customer_out, deadletter=deadletter_out, alerts=alerts_out,
        business_in=business_in, business=business_out, churn_examples=churn_in,
        churn_model=model_out, feature_in=feature_in, feature=feature_out, catalog=catalog_out,
        customers=customers, clocks=clocks, scopes=scopes, features=feature_table,
        learner=learner_table,
        customer_store=PartitionedStore(customers.data, partition_of),
        clock_store=PartitionedStore(clocks.data, int),
        scope_store=PartitionedStore(scopes.data, partition_of),
        feature_store=PartitionedStore(feature_table.data, partition_of),
        learner_store=PartitionedStore(learner_table.data, lambda key: 0))


def _follower(service: Service, broker_url: str, on_model: Callable[[], None]) -> Follower:
    """Reads back the model versions, the feature catalogue and the published records."""
    s, processor = service.settings, service.processor

    def on_models(records: list[Any]) -> None:
        if any([processor.scorer.update(v) for v in values(records)]):
            log.info("churn model version %s: %d customers scored again",
                     processor.scorer.version, processor.rescore())
            on_model()

    def on_catalog(records: list[Any]) -> None:
        processor.learn_catalog([(r.key.decode(), orjson.loads(r.value)) for r in records
                                 if r.key is not None and r.value is not None])

    follower = Follower(_bootstrap(broker_url), aiokafka_kwargs(s.kafka))
    follower.follow(s.topics.churn_model, 1, on_models)
    follower.follow(s.topics.feature_catalog, 1, on_catalog)
    follower.follow(s.topics.feature_out, s.app.partitions, _keep_latest(service.feature_records))
    keep_business = _keep_latest(service.business_records)

    def on_business(records: list[Any]) -> None:
        keep_business(records)
        processor.learn_business([(r.key.decode(), service.business_records[r.key.decode()])
                                  for r in records if r.key is not None and r.value is not None])

    follower.follow(s.topics.business, s.app.partitions, on_business)
    return follower


def _keep_latest(into: dict[str, dict[str, Any]]) -> Callable[[list[Any]], None]:
    def handler(records: list[Any]) -> None:
        for r in records:
            if r.key is not None and r.value is not None:
                into[r.key.decode()] = orjson.loads(r.value)
    return handler


def _lifecycle(service: Service, follower: Follower, supervisor: ReportingSupervisor) -> None:
    """The follower and the ingest start and stop with the worker, under the health check."""
    ingest = service.ingest

    @service.app.service
    class _Ingest(faust.Service):  # noqa: N801 - started and stopped with the worker
        async def on_start(self) -> None:
            await supervisor.start()  # starts the follower, then the ingest

        async def on_stop(self) -> None:
            await ingest.stop()
            await follower.stop()
            await supervisor.stop()


def learner_gauges(service: Service) -> list[Any]:
    """The learner's figures, from the one worker that owns it (so sum() is right)."""
    learner = service.learner
    return [] if learner is None else learner.gauges()


def lag_gauges(service: Service) -> list[Any]:
    """Offset lag of both consumer groups over the partitions this worker owns."""
    app_id = service.settings.app.id
    series: dict[tuple[str, ...], float] = {
        (f"{app_id}-ingest", topic): float(n) for topic, n in service.ingest.lag().items()}
    consumer = service.app.consumer
    for tp in service.owned:
        if tp.topic.endswith("-changelog"):   # read by recovery, never committed by the group
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet: no figure rather than a guess
            continue
        if high is None:
            continue
        # Faust keeps the offset of the last committed record (the next one is committed).
        # Faust's ConsumerT does not declare the attribute its Consumer keeps them in.
        committed = consumer._committed_offset.get(tp)  # type: ignore[attr-defined]
        done = 0 if committed is None else committed + 1
        key = (app_id, tp.topic)
        series[key] = series.get(key, 0.0) + max(0, high - done)
    return [gauge("vitals_consumer_lag_records",
                  "Records not yet committed, by consumer group and topic (offset lag)",
                  ("group", "topic"), series)]


def producer_batch_bytes(settings: Settings, broker_url: str) -> int:
    """See app.producer_batch_bytes: 1 MiB unless set. A flush sends a changelog value of
    several KB per customer touched; Kafka's default of 16 KB held two of them per batch, and
    the flush waited for hundreds of round trips."""
    return settings.app.producer_batch_bytes or 1 << 20


def _table(app: faust.App, name: str, partitions: int, value_serializer: str) -> faust.Table:
    """A table whose changelog keys are plain UTF-8 (Faust's routing hashes them like we do)."""
    table = cast(faust.Table, app.Table(name, partitions=partitions, schema=faust.Schema(
        key_serializer="utf8", value_serializer=value_serializer)))
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
