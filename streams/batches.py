"""The internal message format: a batch of validated events of one customer partition.

The events go as one JSON array; their raw input values, needed only for the rare dead letter
the customer stage writes, follow it as bytes, each after a NUL. JSON text has no NUL byte, so
the split is unambiguous, and the raw values are neither escaped into the JSON nor parsed
again (carried inside the JSON they cost about a sixth of the worker's CPU per event).
A message without NUL (the format before) is the array alone, its events carrying `raw`.
"""
from __future__ import annotations

from typing import Any

import orjson

SEPARATOR = b"\x00"
RAW_BYTES = "raw_bytes"   # an event's raw value on its way to the batch (not serialized)
# Set on an event far ahead of its input partition's level (a wrong clock): the ingest lets it
# leave at once, and a customer partition that has no time yet must not take its time from it.
AHEAD_OF_INPUT = "ahead"


# Families whose event_id the customer stage reads (a movement carries it); for the others
# the hash "h" is the id, and the raw value keeps the event_id for a dead letter. It is about
# a fifth of an internal event's JSON.
KEEPS_EVENT_ID = frozenset({"billing"})


def encode_batch(events: list[dict[str, Any]]) -> bytes:
    """The message value; takes each event's RAW_BYTES off it (b"" when it has none), and
    the event_id of the families that do not need it downstream."""
    raws = [event.pop(RAW_BYTES, b"") for event in events]
    for event in events:
        if event.get("family") not in KEEPS_EVENT_ID:
            event.pop("event_id", None)
    return SEPARATOR.join([orjson.dumps(events), *raws])


def decode_batch(value: bytes) -> list[dict[str, Any]]:
    """The events, each with its raw value as `raw` (bytes) when it was sent apart."""
    if SEPARATOR not in value:
        events: list[dict[str, Any]] = orjson.loads(value)
        return events
    head, *raws = value.split(SEPARATOR)
    events = orjson.loads(head)
    for event, raw in zip(events, raws, strict=False):
        if raw and "raw" not in event:
            event["raw"] = raw
    return events
