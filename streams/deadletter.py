"""vitals.deadletter records: the original bytes plus what was wrong with them (CONTRACT.md §2)."""
from __future__ import annotations

import base64
import time

import orjson

from streams.time import rfc3339


def deadletter_value(source_topic: str, partition: int | None, offset: int | None, error: str,
                     detail: str, raw: bytes | str | None, received_at: float | None = None) -> bytes:
    """Keep the raw value as text when it is UTF-8, else base64, so it can be replayed exactly."""
    text: str | None = None
    b64: str | None = None
    if isinstance(raw, str):
        text = raw
    elif raw is not None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            b64 = base64.b64encode(raw).decode()
    return orjson.dumps({
        "source_topic": source_topic, "partition": partition, "offset": offset,
        "error": error, "detail": detail, "raw": text, "raw_base64": b64,
        "received_at": rfc3339(time.time() if received_at is None else received_at),
    })
