"""Records that pass validation but still make a stage raise: dead-lettered, never fatal.

A stage that raised on a record would raise again on every restart (the record is read again
from the last commit), so the worker would crash in a loop. Instead the record goes to the
dead-letter topic with `error: "processing_error"` and the exception text, and the stage goes
on. The code is deterministic, so a second attempt in the same process would fail the same way:
one attempt is the bound.
"""
from __future__ import annotations

import logging

from streams.deadletter import deadletter_value
from streams.events import PROCESSING_ERROR

log = logging.getLogger(__name__)


def quarantine(source_topic: str, partition: int | None, offset: int | None,
               exc: BaseException, raw: bytes | str | None) -> bytes:
    """The dead-letter value for a record that made a stage raise (logged once, with its type)."""
    detail = f"{type(exc).__name__}: {exc}"[:2000]
    log.error("record quarantined (%s[%s]@%s): %s", source_topic, partition, offset, detail)
    return deadletter_value(source_topic, partition, offset, PROCESSING_ERROR, detail, raw)

__all__ = ["PROCESSING_ERROR", "quarantine"]
