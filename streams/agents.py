"""The worker's agents: one per stage topic, the flush timer and the rebalance hooks.

Every agent reads with `noack()`: its events are acknowledged by the flush that writes the
state they produced (see streams/delivery.py).
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
import orjson
from faust.types import EventT

from streams.batches import decode_batch
from streams.churn import ChurnLearner
from streams.delivery import Delivery, rewind_uncommitted
from streams.service import Service


def register_agents(service: Service, delivery: Delivery, inputs: dict[str, faust.TopicT],
                    learner_table: faust.Table, on_model: Callable[[], None]) -> None:
    """Attach the agents, the flush timer and the rebalance hooks to the service's app.

    `inputs` maps each stage (customer, business, feature, churn) to the topic it reads.
    """
    _customer_agent(service, inputs["customer"])
    _business_agent(service, inputs["business"])
    _feature_agent(service, inputs["feature"])
    _churn_agent(service, inputs["churn"], learner_table)
    _timer_and_hooks(service, delivery, on_model)


def _customer_agent(service: Service, topic: faust.TopicT) -> None:
    processor = service.processor

    @service.app.agent(topic, name="apply_customer_events")
    async def apply_customer_events(stream: faust.StreamT) -> None:
        # Offsets are acknowledged by the flush timer, after the state they produced has been
        # handed to the changelog: a crash before that replays them (and dedup drops them).
        async for event in _unacked(stream):
            if not service.owned_event(event):
                # Not acknowledged (its next owner reads it again), and not kept alive here
                # either: Faust waits at the next rebalance for every live unacknowledged
                # message, and a stray held by this loop until the next event hung it.
                del event
                continue
            try:
                batch = decode_batch(_value(event))
            except orjson.JSONDecodeError as exc:  # not written by our ingest
                service.quarantine(event, exc)
            else:
                service.deadletters += processor.apply(event.message.partition, batch,
                                                       event.message.offset)
            service.pending.append(event)



def _business_agent(service: Service, topic: faust.TopicT) -> None:
    aggregator = service.aggregator
    _stage_agent(service, topic, "aggregate_business", "business_pending",
                 lambda event: aggregator.apply([orjson.loads(_value(event))]))


def _feature_agent(service: Service, topic: faust.TopicT) -> None:
    features = service.features
    _stage_agent(service, topic, "aggregate_features", "feature_pending",
                 lambda event: features.apply(_key(event), orjson.loads(_value(event))))


def _stage_agent(service: Service, topic: faust.TopicT, name: str, pending: str,
                 apply: Callable[[Any], None]) -> None:
    """An agent of a stage fed by internal messages, one message at a time."""

    @service.app.agent(topic, name=name)
    async def stage(stream: faust.StreamT) -> None:
        # Same contract as the customer agent: acknowledged by the flush timer only.
        async for event in _unacked(stream):
            if not service.owned_event(event):
                # Not acknowledged (its next owner reads it again), and not kept alive here
                # either: Faust waits at the next rebalance for every live unacknowledged
                # message, and a stray held by this loop until the next event hung it.
                del event
                continue
            try:
                apply(event)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the stage
                service.quarantine(event, exc)
            getattr(service, pending).append(event)   # the list is replaced after each ack



def _churn_agent(service: Service, topic: faust.TopicT, learner_table: faust.Table) -> None:
    s = service.settings

    @service.app.agent(topic, name="learn_churn")
    async def learn_churn(stream: faust.StreamT) -> None:
        # One partition: one learner for the service. Acknowledged once its state is written.
        async for event in _unacked(stream):
            if not service.owned_event(event):
                # Not acknowledged (its next owner reads it again), and not kept alive here
                # either: Faust waits at the next rebalance for every live unacknowledged
                # message, and a stray held by this loop until the next event hung it.
                del event
                continue
            if service.learner is None:
                service.learner = ChurnLearner(s.churn, learner_table.data.get("learner"))
            try:
                service.learner.apply(orjson.loads(_value(event)))
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the stage
                service.quarantine(event, exc)
            service.learner_pending.append(event)



def _timer_and_hooks(service: Service, delivery: Delivery, on_model: Callable[[], None]) -> None:
    app, s, processor = service.app, service.settings, service.processor

    @app.timer(s.emit.interval_seconds, name="flush_customers")
    async def flush_customers() -> None:
        if s.time.mode == "live":
            processor.advance_wall_clock(time.time())
        await delivery.flush()

    # Faust's signal types accept no coroutine handler of this shape, which its signals call.
    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
        # Sent by Faust's recovery just before it resumes the streams and seeks them.
        await rewind_uncommitted(app.consumer, {
            s.topics.repartition, s.topics.business_internal, s.topics.feature_internal,
            s.topics.churn_examples})
        await delivery.assigned(app.assignor.assigned_actives())
        # A model version that arrived while scope `all` had no owner re-emitted nothing: its
        # (new) owner re-emits the current month with the model it holds.
        on_model()

    # As above; this signal always sends the revoked partitions.
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_partitions_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        await delivery.revoked(revoked)


def _unacked(stream: faust.StreamT) -> AsyncIterator[EventT]:
    """The stream's events, not acknowledged when the next one is read: the flush does it."""
    # Faust's StreamT does not declare noack(), which its Stream has.
    return stream.noack().events()  # type: ignore[attr-defined]


def _value(event: EventT) -> bytes:
    value = event.message.value
    if value is None:  # a tombstone: no stage writes one to another stage's topic
        raise TypeError("no value (a tombstone) on a stage topic")
    return value


def _key(event: EventT) -> str:
    key = event.message.key
    if key is None:
        raise TypeError("no key on a keyed stage topic")
    return key.decode()
