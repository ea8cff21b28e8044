"""The delivery rules: what a flush sends, in which order, and when its input is acknowledged.

Every stage keeps its input unacknowledged until a flush has written the state that input
produced. A flush sends, and waits for the broker to hold:

1. the outputs of every stage (records, alerts, messages to the next stage, dead letters);
2. the customer records, then their partitions' clocks, then the other stages' state;
3. only then are the events acknowledged.

A crash anywhere in between replays the events; every receiver recognises a resend, so the
replay changes nothing that was already delivered.
"""
from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from faust.types import EventT

from streams.business import ScopeState, StageFlush, encode_scope
from streams.delay import ProcessingDelay
from streams.features import FeatureState, encode_feature
from streams.processor import Flush
from streams.service import Service
from streams.state import CustomerState, encode_state
from streams.stores import PartitionedStore

log = logging.getLogger(__name__)


@dataclass
class Outlets:
    """The topics the stages write, and the tables (with their local stores) of their state."""
    customer: Any          # customer records
    deadletter: Any
    alerts: Any
    business_in: Any       # customer stage -> business stage
    business: Any          # business records
    churn_examples: Any    # customer stage -> churn learner (one partition)
    churn_model: Any
    feature_in: Any        # customer stage -> feature stage
    feature: Any           # feature records
    catalog: Any           # features first seen
    customers: Any         # tables
    clocks: Any
    scopes: Any
    features: Any
    learner: Any
    customer_store: PartitionedStore
    clock_store: PartitionedStore
    scope_store: PartitionedStore
    feature_store: PartitionedStore
    learner_store: PartitionedStore


@dataclass
class StageTopics:
    """The names of the stage topics, to tell which stage a revoked partition belongs to."""
    customer: str
    business: str
    feature: str
    churn: str


class Delivery:
    """Sends what the stages of one worker produce, in the order that survives a crash."""

    def __init__(self, service: Service, out: Outlets, partition_of: Callable[[str], int],
                 topics: StageTopics, delay: ProcessingDelay | None = None) -> None:
        self.service = service
        self.out = out
        self.partition_of = partition_of
        self.topics = topics
        self.delay = delay

    # -- the customer stage ------------------------------------------------------------------

    def customer_outputs(self, flush: Flush,
                         deadletters: list[tuple[bytes | None, bytes]]) -> list[Any]:
        """What the customer stage's state changes caused: sent before that state is written.

        A crash after the state write but before these sends would otherwise lose them for
        good: the replayed events are then recognised as applied and cause nothing again.
        Sent first, a crash in between only resends them, and every receiver recognises a
        resend (movements and examples by event id, alerts and records by key).
        """
        o, partition_of = self.out, self.partition_of
        sent = [o.churn_examples.send_soon(key="examples", value=value, partition=0)
                for value in flush.examples]
        sent += [o.deadletter.send_soon(key=key, value=value) for key, value in deadletters]
        sent += [o.alerts.send_soon(key=key, value=value) for key, value in flush.alerts]
        sent += [o.business_in.send_soon(key=scope, value=value, partition=partition_of(scope))
                 for scope, value in flush.business]
        sent += [o.feature_in.send_soon(key=feature, value=value,
                                        partition=partition_of(feature))
                 for feature, value in flush.features]
        sent += [o.catalog.send_soon(key=feature, value=value, partition=0)
                 for feature, value in flush.catalog]
        # The customer records too, day closes included: the closes a restored (older) clock
        # makes again are skipped for customers whose record is already past them, and a
        # daily series must not lose those days.
        sent += [o.customer.send_soon(key=key, value=value) for key, value in flush.records]
        return sent

    async def customer_state(self, flush: Flush) -> list[Any]:
        """The customers' records, then their partitions' clocks."""
        o = self.out
        o.customer_store.commit()   # the local copy too: only once the outputs are delivered
        sent = [o.customers.send_changelog(partition, key, state)
                for partition, key, state in flush.changelog]
        if flush.clocks:
            # A partition's clock holds the watermark its events were judged by. Restored ahead
            # of its customers' records (a crash between the two writes), it made the replay of
            # their events `too_late`: lost. So the customers are delivered first.
            await delivered(sent)
        for partition, clock in flush.clocks:
            o.clock_store[str(partition)] = clock
            sent.append(o.clocks.send_changelog(partition, str(partition), clock))
        o.clock_store.commit()
        return sent

    async def customer_flush(self, flush: Flush,
                             deadletters: list[tuple[bytes | None, bytes]] | None = None
                             ) -> list[Any]:
        """A whole flush of the customer stage, outputs delivered before the state."""
        frozen(flush)
        await delivered(self.customer_outputs(flush, deadletters or []))
        return await self.customer_state(flush)

    # -- the keyed stages (business, features) -----------------------------------------------

    def stage_outputs(self, flush: StageFlush, records: Any) -> list[Any]:
        """A keyed stage's records and alerts (their futures): sent before its state."""
        sent = [records.send_soon(key=key, value=value) for key, value in flush.records]
        sent += [self.out.alerts.send_soon(key=key, value=value) for key, value in flush.alerts]
        return sent

    def stage_state(self, flush: StageFlush, table: Any) -> list[Any]:
        return [table.send_changelog(self.partition_of(key), key, state)
                for key, state in flush.changelog]

    # -- the churn learner -------------------------------------------------------------------

    def save_learner(self) -> list[Any]:
        learner = self.service.learner
        if learner is None or not learner.changed:
            return []
        blob = learner.to_bytes()
        self.out.learner_store["learner"] = blob
        self.out.learner_store.commit()   # after the examples it learnt from were delivered
        return [self.out.learner.send_changelog(0, "learner", blob)]

    def flush_learner(self) -> list[Any]:
        """The learner's state, and a new model version when one is due (their futures)."""
        learner = self.service.learner
        if learner is None:
            return []
        model = learner.publish()
        sent = self.save_learner()  # before the version it names goes out
        if model is not None:
            sent.append(self.out.churn_model.send_soon(key="model", value=model, partition=0))
        return sent

    # -- the worker --------------------------------------------------------------------------

    async def flush(self) -> None:
        """Every stage's flush: outputs, then state, then the acknowledgement of the input."""
        service, o = self.service, self.out
        # Take the events together with the flush that holds their state: the sends await, and
        # the agents apply more events meanwhile, whose state only the next flush writes.
        # Acknowledging those here lost them on a crash before that flush.
        out = service.processor.flush()
        deadletters = service.take_deadletters()
        business = service.aggregator.flush()
        features = service.features.flush()
        pending = service.take_pending()
        # The state as of these events, before the first wait: the agents go on applying
        # events to the same live objects, whose outputs are the next flush's.
        frozen(out, business, features)
        # Outputs of every stage first, then the state that no longer holds them.
        await delivered(self.customer_outputs(out, deadletters)
                        + self.stage_outputs(business, o.business)
                        + self.stage_outputs(features, o.feature))
        sent = await self.customer_state(out)
        o.scope_store.commit()
        o.feature_store.commit()
        sent += self.stage_state(business, o.scopes)
        sent += self.stage_state(features, o.features)
        sent += self.flush_learner()
        pending += service.learner_pending
        service.learner_pending = []
        # Acknowledge only what the broker has: Faust commits acknowledged offsets after a
        # producer.flush() that gives up after 0.1 s without progress, so a commit can
        # overtake changelog records still in its buffer, and a new owner of the partition
        # would then recover a state without them while their input counts as done.
        await delivered(sent)
        if self.delay is not None:
            self.delay.observe(pending)  # their customer records are delivered now
        for event in pending:
            event.ack()
        service.flushes += 1

    async def assigned(self, actives: Iterable[Any]) -> None:
        """After a rebalance: hand back the customers of partitions lost, load those gained."""
        service = self.service
        processor = service.processor
        service.owned = set(actives)
        mine = {tp.partition for tp in service.owned if tp.topic == self.topics.customer}
        owned = set(processor.members)
        await delivered(await self.customer_flush(processor.revoke(owned - mine),
                                                  service.take_deadletters()))
        processor.assign(mine)
        log.info("customer partitions assigned: %s", sorted(mine))

    async def revoked(self, revoked: set[Any]) -> None:
        """Write what the stages hold for revoked partitions before the rebalance goes on."""
        service, o, partition_of, topics = self.service, self.out, self.partition_of, self.topics
        service.owned -= set(revoked)
        gone = {tp.partition for tp in revoked if tp.topic == topics.business}
        service.aggregator.revoke({scope for scope in [*o.scopes.data.keys(),
                                                       *service.aggregator.live]
                                   if partition_of(scope) in gone})
        service.business_pending = _kept(service.business_pending, revoked)
        lost = {tp.partition for tp in revoked if tp.topic == topics.feature}
        service.features.revoke({f for f in [*o.features.data.keys(), *service.features.live]
                                 if partition_of(f) in lost})
        service.feature_pending = _kept(service.feature_pending, revoked)
        # Deliver what revoke() writes before the rebalance goes on, or the recovery that
        # follows it may restore an older record over it.
        # Pending dead letters go too: the records revoke() writes hold their positions, so
        # the next owner skips their events.
        sent = await self.customer_flush(
            service.processor.revoke({tp.partition for tp in revoked
                                      if tp.topic == topics.customer}),
            service.take_deadletters())
        if any(tp.topic == topics.churn for tp in revoked):
            sent += self.save_learner()
            service.learner = None
        service.learner_pending = _kept(service.learner_pending, revoked)
        await delivered(sent)
        service.pending = _kept(service.pending, revoked)


def frozen(*flushes: Flush | StageFlush) -> None:
    """Fix the state a flush writes as it is now, before the flush waits for anything.

    A flush hands over the stages' live state objects (a customer's record, a partition's
    clock with its feature, ahead and streak dicts, a scope, a feature). While it waits for
    its outputs, the agents apply the next events to those same objects: day closes, their
    alert transitions, the batch offset. Serialised only when sent, after the wait, the
    changelog record held effects whose outputs were still in the next flush's outbox; a
    crash before that flush lost them for good (whoever restored the record skipped the
    replayed events as applied). The local store already keeps what was set, encoded.
    """
    for flush in flushes:
        if isinstance(flush, Flush):
            flush.changelog = [(p, key, _encoded(state)) for p, key, state in flush.changelog]
            flush.clocks = [(p, copy.deepcopy(clock)) for p, clock in flush.clocks]
        else:
            flush.changelog = [(key, _encoded(state)) for key, state in flush.changelog]


def _encoded(state: Any) -> Any:
    """A stage's state as its table's codec writes it (the codecs pass bytes through)."""
    if isinstance(state, CustomerState):
        return encode_state(state)
    if isinstance(state, ScopeState):
        return encode_scope(state)
    if isinstance(state, FeatureState):
        return encode_feature(state)
    return state


def _kept(events: list[EventT], revoked: set[Any]) -> list[EventT]:
    return [e for e in events if e.message.tp not in revoked]


async def delivered(sent: list[Any]) -> None:
    """Wait until the broker has acknowledged every send (Faust's FutureMessage)."""
    if sent:
        await asyncio.gather(*sent)


async def rewind_uncommitted(consumer: Any, topics: set[str]) -> None:
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
