"""Dead letters are always deliverable, and the ingest turns every record into one item."""
from __future__ import annotations

import base64
import hashlib
import math
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from streams import events as ev
from streams.batches import RAW_BYTES, decode_batch, encode_batch
from streams.deadletter import (
    DETAIL_MAX_CHARS,
    KEY_MAX_BYTES,
    RAW_MAX_BYTES,
    bounded_key,
    deadletter_value,
    raw_excerpt,
)
from streams.exporters.metrics import Metrics
from streams.ingest import Ingest, TimeAligner
from streams.settings import load_settings

PRODUCER_MAX_REQUEST = 8 << 20  # the ingest producer's max_request_size
BROKER_DEFAULT_MAX = 1 << 20    # Kafka's default max.message.bytes


def letter(raw: Any, detail: str = "why") -> dict[str, Any]:
    value = deadletter_value("events.usage", 1, 7, "not_json", detail, raw, received_at=0.0)
    assert len(value) < BROKER_DEFAULT_MAX // 2
    return orjson.loads(value)


# ---- deadletter_value ----------------------------------------------------------------------------


def test_small_values_are_kept_whole_without_truncation_fields() -> None:
    d = letter(b'{"a": 1}')
    assert d == {"source_topic": "events.usage", "partition": 1, "offset": 7,
                 "error": "not_json", "detail": "why", "raw": '{"a": 1}', "raw_base64": None,
                 "received_at": "1970-01-01T00:00:00Z"}
    assert letter(b"\xff\xfe")["raw_base64"] == base64.b64encode(b"\xff\xfe").decode()
    assert letter(None)["raw"] is None and letter(None)["raw_base64"] is None
    assert letter("é text")["raw"] == "é text"
    exact = b"x" * RAW_MAX_BYTES  # at the bound: still whole
    assert letter(exact)["raw"] == exact.decode() and "raw_truncated" not in letter(exact)


def test_a_9_mib_value_is_cut_with_size_and_sha256() -> None:
    raw = b'{"event_id": "' + b"x" * (9 << 20) + b'"}'
    value = deadletter_value("events.usage", 0, 1, "too_large", "big", raw)
    assert len(value) < 2 * RAW_MAX_BYTES  # far below 8 MiB and below a broker's 1 MiB
    d = orjson.loads(value)
    assert d["raw_truncated"] is True and d["raw_size"] == len(raw)
    assert d["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert d["raw"] == raw[:RAW_MAX_BYTES].decode() and d["raw_base64"] is None


def test_cut_binary_goes_to_base64_and_cut_text_keeps_whole_characters() -> None:
    binary = b"\xff" * (RAW_MAX_BYTES + 10)
    d = letter(binary)
    assert base64.b64decode(d["raw_base64"]) == binary[:RAW_MAX_BYTES] and d["raw"] is None
    assert d["raw_size"] == len(binary)
    # "é" is 2 bytes: an odd cut would split one; only that partial character is dropped
    text = b"a" + "é".encode() * RAW_MAX_BYTES
    d = letter(text)
    assert d["raw"] == "a" + "é" * ((RAW_MAX_BYTES - 1) // 2)
    assert d["raw_sha256"] == hashlib.sha256(text).hexdigest()
    # control characters escape to 6 bytes each in JSON: still well below 1 MiB
    assert len(deadletter_value("t", 0, 0, "e", "d", b"\x01" * (1 << 20))) < 512 * 1024


def test_detail_is_bounded() -> None:
    d = letter(b"x", detail="y" * 100_000)
    assert len(d["detail"]) == DETAIL_MAX_CHARS + 1 and d["detail"].endswith("…")


def test_raw_excerpt_round_trips_through_a_later_dead_letter() -> None:
    small = b'{"a": "b"}'
    assert raw_excerpt(small) == '{"a": "b"}'
    big = b'{"a": "' + b"b" * (2 * RAW_MAX_BYTES) + b'"}'
    carried = orjson.loads(orjson.dumps(raw_excerpt(big)))  # through the internal topic
    d = letter(carried)
    assert d["raw_truncated"] is True and d["raw_size"] == len(big)
    assert d["raw_sha256"] == hashlib.sha256(big).hexdigest()
    assert d["raw"] == big[:RAW_MAX_BYTES].decode()
    # only the raw fields of a carried excerpt are written
    assert letter({**carried, "error": "forged"})["error"] == "not_json"


def test_bounded_key() -> None:
    assert bounded_key(None) is None
    assert bounded_key(b"c-1") == b"c-1"
    assert bounded_key(b"k" * (KEY_MAX_BYTES + 5)) == b"k" * KEY_MAX_BYTES


# ---- Ingest.read ---------------------------------------------------------------------------------

SETTINGS = load_settings(env={})


class Msg:
    timestamp = 1_767_225_600_000  # the broker's record timestamp (ms)

    def __init__(self, value: bytes | None, key: bytes | None = None, offset: int = 0) -> None:
        self.value, self.key, self.offset = value, key, offset


def read(*messages: Msg, topic: str = "events.usage",
         settings: Any = SETTINGS) -> tuple[list[Any], Metrics]:
    metrics = Metrics()
    ingest = Ingest(settings, metrics, lambda cid: 0)
    aligner = TimeAligner()
    ingest.read({TopicPartition(topic, 0): list(messages)}, aligner)
    return [item for buf in aligner.buffers.values() for _, _, item, _ in buf], metrics


def rejected(metrics: Metrics, family: str, code: str) -> float:
    return metrics.deadletters.labels(family, code)._value.get()


USAGE = {"event_id": "e-1", "customer_id": "c-1", "user_id": "u", "action": "login",
         "ts": "2026-03-01T12:00:00Z"}


def test_ingest_dead_letters_a_9_mib_record_deliverably() -> None:
    raw = orjson.dumps({**USAGE, "pad": "x" * (9 << 20)})
    items, metrics = read(Msg(raw, b"c-1", 3))
    ((key, value),) = items
    assert key == b"c-1" and len(value) < PRODUCER_MAX_REQUEST and len(value) < BROKER_DEFAULT_MAX
    d = orjson.loads(value)
    assert (d["error"], d["offset"], d["raw_size"]) == ("too_large", 3, len(raw))
    assert d["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert rejected(metrics, "usage", "too_large") == 1


def test_ingest_accepts_framed_json_and_carries_the_json_without_its_frame() -> None:
    raw = orjson.dumps(USAGE)
    (event,), _ = read(Msg(b"\x00\xff\xff\xff\xfe" + raw, b"c-1"))  # schema id bytes not UTF-8
    assert event["event_id"] == "e-1" and event[RAW_BYTES] == raw
    # It travels after the batch's JSON, and comes back as the event's raw value.
    (back,) = decode_batch(encode_batch([event]))
    assert back["raw"] == raw and RAW_BYTES not in back
    assert event["key"] == "c-1"


def test_ingest_carries_a_cut_raw_for_large_valid_events() -> None:
    raw = orjson.dumps({**USAGE, "pad": "x" * (2 * RAW_MAX_BYTES)})
    (event,), _ = read(Msg(raw))
    assert event["raw"]["raw_truncated"] is True and event["raw"]["raw_size"] == len(raw)
    assert len(orjson.dumps(event)) < 2 * RAW_MAX_BYTES


@pytest.mark.parametrize("value", [{**USAGE, "user_id": []}, {"segment": []}, {"type": {}},
                                   {**USAGE, "ts": 0}, {**USAGE, "quantity": 1e300}])
def test_ingest_dead_letters_hostile_values_with_their_code(value: dict[str, Any]) -> None:
    for topic in SETTINGS.topics.input_topics():
        items, _ = read(Msg(orjson.dumps(value), b"k"), topic=topic)
        ((key, dead),) = items
        assert orjson.loads(dead)["error"] in ev.ERROR_CODES


def test_ingest_bounds_huge_keys() -> None:
    big_key = b"k" * (1 << 20)
    ((key, _),), _ = read(Msg(b"nope", big_key))
    assert key == b"k" * KEY_MAX_BYTES
    (event,), _ = read(Msg(orjson.dumps(USAGE), big_key))
    assert event["key"] == "k" * KEY_MAX_BYTES


def test_ingest_uses_the_min_ts_setting() -> None:
    late = load_settings(env={"VITALS_TIME__MIN_TS": '"2026-03-02T00:00:00Z"'})
    ((_, dead),), _ = read(Msg(orjson.dumps(USAGE)), settings=late)
    assert orjson.loads(dead)["error"] == "invalid_ts"
    (event,), _ = read(Msg(orjson.dumps(USAGE)))
    assert event["ts"] == 1772366400.0


def test_ingest_quarantines_an_unexpected_validator_error(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    metrics = Metrics()
    ingest = Ingest(SETTINGS, metrics, lambda cid: 0)

    def broken(family: str, raw: bytes) -> dict[str, Any]:
        raise RuntimeError("validator bug")

    monkeypatch.setattr(ingest.validator, "parse", broken)
    aligner = TimeAligner()
    ingest.read({TopicPartition("events.usage", 0): [Msg(b"{}", None, 0),
                                                     Msg(b"{}", None, 1)]}, aligner)
    items = [item for _, _, item, _ in aligner.buffers[TopicPartition("events.usage", 0)]]
    assert len(items) == 2
    d = orjson.loads(items[0][1])
    assert d["error"] == "processing_error" and "RuntimeError: validator bug" in d["detail"]
    assert rejected(metrics, "usage", "processing_error") == 2


def test_route_counts_events_outside_their_customers_partition() -> None:
    metrics = Metrics()
    ingest = Ingest(SETTINGS, metrics, lambda cid: 1 if cid == "c-1" else 0)
    aligner = TimeAligner()
    ingest.read({TopicPartition("events.usage", 0): [
        Msg(orjson.dumps(USAGE), b"c-1", 0),                                   # belongs to 1
        Msg(orjson.dumps({**USAGE, "event_id": "e-2", "customer_id": "c-2"}), b"c-2", 1)]},
        aligner)
    batches, _ = ingest.route(aligner.release([TopicPartition("events.usage", 0)],
                                              empty_at=lambda tp: math.inf))
    assert sorted(batches) == [0, 1]
    assert metrics.registry.get_sample_value(
        "vitals_input_not_copartitioned_total", {"family": "usage"}) == 1
    assert ingest.warned_misplaced


def test_an_internal_batch_keeps_the_event_id_only_where_the_customer_stage_reads_it() -> None:
    """A movement carries its billing event's id; other families are known by their hash,
    and their raw value still holds the id for a dead letter."""
    usage = {"family": "usage", "event_id": "e-1", "h": 1, RAW_BYTES: b'{"event_id":"e-1"}'}
    bill = {"family": "billing", "event_id": "e-2", "h": 2, RAW_BYTES: b""}
    back = decode_batch(encode_batch([usage, bill]))
    assert "event_id" not in back[0] and back[0]["raw"] == b'{"event_id":"e-1"}'
    assert back[1]["event_id"] == "e-2" and "raw" not in back[1]
