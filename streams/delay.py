"""Processing delay: wall time from an event's arrival at the broker to its effect in an output.

The arrival time is the Kafka record timestamp of the input record (docs/metrics.md,
"Processing delay"). The ingest keeps it next to each validated event, takes the oldest one of
every internal message it publishes and sends it as the message header `vitals-arrival-ms`,
so the internal topic's format does not change and the customer stage pays nothing per event.
When a flush of the customer stage has been acknowledged by the broker (the customer records
that reflect the message's events are delivered), each customer partition gives one
observation: now minus the oldest arrival among the messages that flush acknowledges. One
clock reading per flush, one observation per partition per flush.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import Any

from prometheus_client import Histogram

#: The event dict key the ingest uses between validation and publishing; never published.
ARRIVAL = "_arrival_ms"
#: Header of an internal message: the oldest input record timestamp of its events, in ms.
ARRIVAL_HEADER = "vitals-arrival-ms"
DELAY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                 3600.0, 4 * 3600.0)


def take_oldest_arrival(events: Sequence[MutableMapping[str, Any]]) -> int | None:
    """Remove the arrival time from each event; the oldest known one, in ms (None if none is).

    Kafka gives -1 (or None) for a record without a timestamp (pre-0.10 message format): such
    events do not count.
    """
    arrivals = [event.pop(ARRIVAL, -1) for event in events]
    try:
        oldest = min(arrivals)  # the usual case: every event has a timestamp
    except (TypeError, ValueError):  # a None among them, or no events
        oldest = -1
    if oldest >= 0:
        return oldest
    known = [a for a in arrivals if a is not None and a >= 0]
    return min(known) if known else None


def arrival_headers(oldest_ms: int | None) -> list[tuple[str, bytes]] | None:
    """The header list of an internal message whose oldest event arrived at `oldest_ms`."""
    if oldest_ms is None:
        return None
    return [(ARRIVAL_HEADER, str(oldest_ms).encode())]


def arrival_of(headers: Any) -> int | None:
    """The arrival header of a consumed message, or None (a message without one)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == ARRIVAL_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


class ProcessingDelay:
    """Observes the delay of the messages a flush acknowledged, once per customer partition."""

    def __init__(self, histogram: Histogram, topic: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.histogram = histogram
        self.topic = topic
        self.clock = clock

    def observe(self, events: Iterable[Any]) -> dict[int, float]:
        """`events`: Faust events whose outputs the broker has just acknowledged. Returns the
        observed delay per partition (seconds); a producer clock ahead of ours counts as 0."""
        oldest: dict[int, int] = {}
        for event in events:
            msg = event.message
            if msg.topic != self.topic:
                continue
            arrived = arrival_of(msg.headers)
            if arrived is not None and arrived < oldest.get(msg.partition, arrived + 1):
                oldest[msg.partition] = arrived
        if not oldest:
            return {}
        now = self.clock()
        delays = {p: max(0.0, now - ms / 1000.0) for p, ms in oldest.items()}
        for delay in delays.values():
            self.histogram.observe(delay)
        return delays
