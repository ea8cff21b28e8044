"""streams.delivery on its own: what a flush sends, in which order, and when it acknowledges.

No broker and no Faust app: stand-ins for the topics and tables log each send when it is
made and again when the broker holds it, and events log their acknowledgement.
"""
from __future__ import annotations

import asyncio
import copy
from collections import namedtuple
from typing import Any

import pytest

from streams.business import StageFlush
from streams.delivery import Delivery, Outlets, StageTopics
from streams.processor import Flush
from streams.service import Service

TP = namedtuple("TP", "topic partition")
TOPICS = StageTopics(customer="in.customer", business="in.business", feature="in.feature",
                     churn="in.churn")


class Broker:
    """Sends as made ("send") and as held by the broker ("done"); acknowledgements ("ack")."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.on_delivery: list[Any] = []   # callbacks run at the next delivery (agents at work)

    def send(self, where: str) -> Any:
        self.log.append(("send", where))
        return asyncio.ensure_future(self._deliver(where))

    async def _deliver(self, where: str) -> None:
        await asyncio.sleep(0)
        self.log.append(("done", where))
        while self.on_delivery:
            self.on_delivery.pop()()

    def names(self, what: str = "done") -> list[str]:
        return [where for kind, where in self.log if kind == what]

    def position(self, kind: str, where: str) -> int:
        return self.log.index((kind, where))


class Topic:
    def __init__(self, broker: Broker, name: str) -> None:
        self.broker, self.name = broker, name

    def send_soon(self, key: Any, value: Any, partition: int | None = None) -> Any:
        return self.broker.send(self.name)


class Table:
    def __init__(self, broker: Broker, name: str) -> None:
        self.broker, self.name = broker, name
        self.data: dict[str, Any] = {}

    def send_changelog(self, partition: int, key: Any, value: Any) -> Any:
        return self.broker.send(self.name)


class Store(dict):
    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    def commit(self) -> None:
        self.commits += 1


class Event:
    def __init__(self, broker: Broker, tp: TP, name: str) -> None:
        self.broker, self.name = broker, name
        self.message = type("Message", (), {"tp": tp})()
        self.acked = False

    def ack(self) -> None:
        self.acked = True
        self.broker.log.append(("ack", "event"))


class Stage:
    """A keyed stage (or the customer stage) handing over a prepared flush."""

    def __init__(self, flush: Any) -> None:
        self.out = flush
        self.live: dict[str, Any] = {}
        self.revoked: list[set[Any]] = []
        self.assigned: list[set[int]] = []
        self.members: dict[int, set[str]] = {}

    def flush(self) -> Any:
        out, self.out = self.out, type(self.out)()
        return out

    def revoke(self, keys: set[Any]) -> Any:
        self.revoked.append(set(keys))
        return Flush(changelog=[(p, f"c-of-{p}", None) for p in sorted(keys)])

    def assign(self, partitions: set[int]) -> None:
        self.assigned.append(set(partitions))


class Learner:
    changed = True
    model: bytes | None = b"v2"

    def to_bytes(self) -> bytes:
        return b"learner"

    def publish(self) -> bytes | None:
        return self.model


def make(broker: Broker, customer: Flush | None = None, business: StageFlush | None = None,
         features: StageFlush | None = None) -> tuple[Service, Delivery, Outlets]:
    t = {name: Topic(broker, name) for name in (
        "customer", "deadletter", "alerts", "business_in", "business", "churn_examples",
        "churn_model", "feature_in", "feature", "catalog")}
    tables = {name: Table(broker, name) for name in (
        "customers", "clocks", "scopes", "features", "learner")}
    out = Outlets(**t, **tables, customer_store=Store(), clock_store=Store(),
                  scope_store=Store(), feature_store=Store(), learner_store=Store())
    service = Service(settings=None, app=None, metrics=None,  # type: ignore[arg-type]
                      processor=Stage(customer or Flush()), ingest=None,
                      aggregator=Stage(business or StageFlush()),
                      features=Stage(features or StageFlush()))
    return service, Delivery(service, out, lambda key: 0, TOPICS, Delay(broker)), out


class Delay:
    """Stands in for ProcessingDelay: logs when the flush observes its events."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def observe(self, events: list[Any]) -> dict[int, float]:
        self.broker.log.append(("delay", str(len(events))))
        return {}


def full_flush() -> tuple[Flush, StageFlush, StageFlush]:
    customer = Flush(changelog=[(0, "c-1", None)], clocks=[(0, {"wm": 1.0})],
                     records=[("c-1", b"r")], alerts=[("a-1", b"a")],
                     business=[("all", b"m")], examples=[b"x"], features=[("sso", b"f")],
                     catalog=[("sso", b"c")])
    business = StageFlush(changelog=[("all", None)], records=[("all", b"b")],
                          alerts=[("a-2", b"a")])
    features = StageFlush(changelog=[("sso", None)], records=[("sso", b"f")])
    return customer, business, features


def test_a_flush_delivers_every_output_then_the_state_then_acknowledges() -> None:
    broker = Broker()
    service, delivery, out = make(broker, *full_flush())
    service.deadletters = [(b"k", b"dead")]
    events = [Event(broker, TP("in.customer", 0), "e1"), Event(broker, TP("in.business", 0), "b1"),
              Event(broker, TP("in.feature", 0), "f1"), Event(broker, TP("in.churn", 0), "l1")]
    service.pending, service.business_pending, service.feature_pending = [events[0]], \
        [events[1]], [events[2]]
    service.learner_pending = [events[3]]
    service.learner = Learner()  # type: ignore[assignment]
    asyncio.run(delivery.flush())

    outputs = {"churn_examples", "deadletter", "alerts", "business_in", "feature_in", "catalog",
               "customer", "business", "feature"}
    state = {"customers", "clocks", "scopes", "features", "learner", "churn_model"}
    assert set(broker.names()) == outputs | state
    # No state is even sent before every output of every stage is held by the broker, the
    # customer records included (day closes that a restored, older clock makes again are
    # skipped for customers already past them: they would be lost from the daily series).
    last_output = max(broker.position("done", name) for name in outputs)
    assert all(broker.position("send", name) > last_output for name in state)
    # The customers' records are held before the clock that judged their events is sent.
    assert broker.position("done", "customers") < broker.position("send", "clocks")
    # The learner's state is sent before the model version it names.
    assert broker.position("send", "learner") < broker.position("send", "churn_model")
    # The processing delay is observed once everything is held, then the events are
    # acknowledged: every stage's.
    assert broker.log[-5] == ("delay", "4")
    assert [kind for kind, _ in broker.log[-4:]] == ["ack"] * 4 and all(e.acked for e in events)
    assert service.flushes == 1 and service.deadletters == []
    assert out.clock_store == {"0": {"wm": 1.0}} and out.learner_store == {"learner": b"learner"}
    assert all(store.commits == 1 for store in (out.customer_store, out.clock_store,
                                                out.scope_store, out.feature_store,
                                                out.learner_store))


def test_events_applied_while_a_flush_waits_are_acknowledged_by_the_next() -> None:
    broker = Broker()
    service, delivery, _ = make(broker, *full_flush())
    first = Event(broker, TP("in.customer", 0), "first")
    late = Event(broker, TP("in.customer", 0), "late")
    service.pending = [first]
    broker.on_delivery.append(lambda: service.pending.append(late))  # the agent goes on
    asyncio.run(delivery.flush())
    assert first.acked and not late.acked
    assert service.pending == [late]
    asyncio.run(delivery.flush())
    assert late.acked


def test_a_failed_send_acknowledges_nothing() -> None:
    broker = Broker()
    service, delivery, out = make(broker, *full_flush())
    event = Event(broker, TP("in.customer", 0), "e")
    service.pending = [event]

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker gone")

    out.alerts.send_soon = lambda key, value, partition=None: refused()  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        asyncio.run(delivery.flush())
    assert not event.acked
    assert "customers" not in broker.names("send")    # no state written past a lost output
    assert out.customer_store.commits == 0


def test_revoked_partitions_write_their_state_and_forget_their_events() -> None:
    broker = Broker()
    service, delivery, out = make(broker)
    gone, kept = TP("in.customer", 1), TP("in.customer", 0)
    churn = TP("in.churn", 0)
    service.owned = {gone, kept, churn, TP("in.business", 1)}
    out.scopes.data = {"all": None}
    service.pending = [Event(broker, gone, "g"), Event(broker, kept, "k")]
    service.business_pending = [Event(broker, TP("in.business", 1), "b")]
    service.learner_pending = [Event(broker, churn, "l")]
    service.learner = Learner()  # type: ignore[assignment]
    revoked = {gone, churn, TP("in.business", 1)}
    asyncio.run(delivery.revoked(revoked))

    assert service.owned == {kept}
    assert service.processor.revoked == [{1}]                   # type: ignore[attr-defined]
    assert service.aggregator.revoked == [set()]                 # type: ignore[attr-defined]
    assert [e.name for e in service.pending] == ["k"]
    assert service.business_pending == [] and service.learner_pending == []
    assert broker.names() == ["customers", "learner"]            # delivered before returning
    assert service.learner is None
    assert not any(e.acked for e in service.pending)


def test_assigned_hands_back_lost_customers_and_loads_the_new_ones() -> None:
    broker = Broker()
    service, delivery, _ = make(broker)
    service.processor.members = {0: {"c-1"}, 2: {"c-2"}}       # type: ignore[misc]
    asyncio.run(delivery.assigned([TP("in.customer", 0), TP("in.customer", 1),
                                   TP("in.business", 2)]))
    assert service.processor.revoked == [{2}]                    # type: ignore[attr-defined]
    assert service.processor.assigned == [{0, 1}]                # type: ignore[attr-defined]
    assert broker.names() == ["customers"]
    assert TP("in.business", 2) in service.owned


class Recording(Table):
    """A table that keeps what each changelog send carried, serialised as Faust does it: at
    the call (its codecs encode a CustomerState, and pass bytes through)."""

    def __init__(self, broker: Broker, name: str) -> None:
        super().__init__(broker, name)
        self.sent: list[Any] = []

    def send_changelog(self, partition: int, key: Any, value: Any) -> Any:
        from streams.state import CustomerState, encode_state
        self.sent.append(encode_state(value) if isinstance(value, CustomerState)
                         else copy.deepcopy(value))
        return super().send_changelog(partition, key, value)


def test_the_state_written_is_the_state_of_the_flush_not_of_events_applied_since() -> None:
    """The chaos run's lost `health_red` pair: a flush took the customers' states, then waited
    for its outputs; meanwhile the agent applied the next events to the same live objects
    (day closes, their alert transitions, the batch offset). The changelog record, serialised
    only after that wait, held those later closes while their alerts were still in the next
    flush's outbox. A worker killed before that next flush lost them for good: whoever
    restored the record (the standby, then the new owner) skipped the replayed events as
    applied, and the closes as already run for the customer."""
    from streams.state import CustomerState, decode_state
    broker = Broker()
    state = CustomerState("c-1")
    state.closed_day, state.offset = 10, 4
    clock: dict[str, Any] = {"wm": 1.0, "day": 10, "features": {"sso": 1.0}}
    customer = Flush(changelog=[(0, "c-1", state)], clocks=[(0, clock)],
                     records=[("c-1", b"r")], alerts=[("a-1", b"a")])
    service, delivery, out = make(broker, customer)
    out.customers = Recording(broker, "customers")
    out.clocks = Recording(broker, "clocks")

    def agent_goes_on() -> None:   # the next batch, applied while the outputs are delivered
        state.closed_day, state.offset = 12, 5
        state.alerts.state["health_red"] = {"since": 0.0, "firing": True}
        clock["features"]["reports"] = 2.0
        clock["day"] = 12

    broker.on_delivery.append(agent_goes_on)
    asyncio.run(delivery.flush())
    assert state.closed_day == 12                      # the agent did go on meanwhile
    [written] = out.customers.sent
    restored = decode_state(written)
    assert (restored.closed_day, restored.offset, restored.alerts.state) == (10, 4, {})
    assert out.clocks.sent == [{"wm": 1.0, "day": 10, "features": {"sso": 1.0}}]
    assert out.clock_store == {"0": {"wm": 1.0, "day": 10, "features": {"sso": 1.0}}}
