"""Simulated events as the ingest hands them to the customer stage, for in-process runs
(tests and benchmarks that drive the stages by plain calls, without a broker)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from streams.events import EventValidator, InvalidEvent, event_hash
from streams.settings import Settings


def valid_events(events: Iterable[tuple[str, Any]], settings: Settings
                 ) -> Iterator[dict[str, Any]]:
    """Validated and hashed; invalid ones (the ingest's dead letters) are left out."""
    validator = EventValidator(settings.app.reporting_currency, settings.revenue.currency_rates)
    for family, raw in events:
        try:
            event = validator.validate(family, raw)
        except InvalidEvent:
            continue
        event["h"] = event_hash(event["event_id"])
        yield event
