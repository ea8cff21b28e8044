"""What a worker runs, in one object: its stages, the events they hold unacknowledged, and the
partitions it owns. Read by the agents, the delivery rules, the web views and the tests."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import EventT

from streams.business import BusinessAggregator
from streams.churn import ChurnLearner
from streams.exporters.metrics import INTERNAL, Metrics
from streams.features import FeatureAggregator
from streams.health import Health
from streams.ingest import IngestService
from streams.processor import CustomerProcessor
from streams.quarantine import quarantine
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Service:
    """Everything a worker runs, for the CLI, the web views and the tests."""
    settings: Settings
    app: faust.App
    metrics: Metrics
    processor: CustomerProcessor
    ingest: IngestService
    aggregator: BusinessAggregator
    features: FeatureAggregator
    pending: list[EventT] = field(default_factory=list)
    # Dead letters of the customer stage, sent with the flush that writes their customers.
    deadletters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    business_pending: list[EventT] = field(default_factory=list)
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

    def take_pending(self) -> list[EventT]:
        """The events of every stage waiting for the flush that holds their state."""
        pending = self.pending + self.business_pending + self.feature_pending
        self.pending, self.business_pending, self.feature_pending = [], [], []
        return pending

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
