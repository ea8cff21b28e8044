"""vitals.deadletter records: the original bytes plus what was wrong with them (CONTRACT.md §2).

A dead letter must always be deliverable, whatever the input: the raw value is kept whole up to
RAW_MAX_BYTES and cut beyond it (with its full size and sha256, so the original can still be
identified in the source topic), the detail is bounded, and so is the key.
"""
from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping
from typing import Any

import orjson

from streams.time import rfc3339

# 64 KiB of raw value. Escaped as JSON (at most 6 bytes per byte for control characters) or as
# base64 (4/3), a dead letter stays well under 1 MiB, the default max.message.bytes of a Kafka
# broker, and under the ingest producer's 8 MiB max_request_size.
RAW_MAX_BYTES = 64 * 1024
DETAIL_MAX_CHARS = 1024
KEY_MAX_BYTES = 1024
RAW_FIELDS = ("raw", "raw_base64", "raw_truncated", "raw_size", "raw_sha256")


def bounded_key(key: bytes | None) -> bytes | None:
    """A message key cut to KEY_MAX_BYTES: keys only spread dead letters over partitions."""
    if key is None or len(key) <= KEY_MAX_BYTES:
        return key
    return key[:KEY_MAX_BYTES]


def raw_excerpt(raw: bytes) -> str | dict[str, Any]:
    """What an accepted event carries of its raw value, for a dead letter written later.

    The raw text itself when it is at most RAW_MAX_BYTES, else the cut form that
    deadletter_value writes as is (raw, raw_truncated, raw_size, raw_sha256).
    """
    if len(raw) <= RAW_MAX_BYTES:
        return raw.decode("utf-8")
    return _raw_fields(raw)


def _raw_fields(data: bytes) -> dict[str, Any]:
    """raw / raw_base64 (and the truncation fields when cut) for the bytes of a value."""
    cut = len(data) > RAW_MAX_BYTES
    head = data[:RAW_MAX_BYTES] if cut else data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        fields: dict[str, Any] = {"raw": None, "raw_base64": base64.b64encode(head).decode()}
    else:
        # A cut can split a multi-byte character: drop only that partial tail.
        fields = {"raw": head.decode("utf-8", "ignore") if cut else head.decode("utf-8"),
                  "raw_base64": None}
    if cut:
        fields.update(raw_truncated=True, raw_size=len(data),
                      raw_sha256=hashlib.sha256(data).hexdigest())
    return fields


def deadletter_value(source_topic: str, partition: int | None, offset: int | None, error: str,
                     detail: str, raw: bytes | str | Mapping[str, Any] | None,
                     received_at: float | None = None) -> bytes:
    """Keep the raw value as text when it is UTF-8, else base64, so it can be replayed exactly.

    `raw` may also be the cut form made by raw_excerpt, carried by an accepted event.
    """
    if raw is None:
        fields: Mapping[str, Any] = {"raw": None, "raw_base64": None}
    elif isinstance(raw, Mapping):
        fields = {k: raw[k] for k in RAW_FIELDS if k in raw}
    elif isinstance(raw, str):
        fields = _raw_fields(raw.encode("utf-8", "surrogatepass"))
    else:
        fields = _raw_fields(bytes(raw))
    if len(detail) > DETAIL_MAX_CHARS:
        detail = detail[:DETAIL_MAX_CHARS] + "…"
    return orjson.dumps({
        "source_topic": source_topic, "partition": partition, "offset": offset,
        "error": error, "detail": detail, **fields,
        "received_at": rfc3339(time.time() if received_at is None else received_at),
    })
