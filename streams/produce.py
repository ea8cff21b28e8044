"""Producing input events: used by `vitals simulate`, `vitals replay` and `vitals demo`."""
from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.events import InvalidEvent, parse_ts

Item = tuple[str, "dict[str, Any] | bytes"]


def _key(event: Mapping[str, Any]) -> bytes | None:
    cid = event.get("customer_id")
    if cid is None and isinstance(event.get("context"), dict):
        cid = event["context"].get("groupId")
    return cid.encode() if isinstance(cid, str) else None


def _event_time(event: Mapping[str, Any]) -> float | None:
    try:
        return parse_ts(event.get("ts", event.get("timestamp")))
    except InvalidEvent:
        return None


class Progress:
    """One status line on stderr, rewritten in place; quiet when stderr is not a terminal."""

    def __init__(self, label: str, total: int | None = None, every: float = 0.5) -> None:
        self.label = label
        self.total = total
        self.every = every
        self.start = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(1e-9, now - self.start)
        total = f"/{self.total}" if self.total else ""
        line = f"{self.label}: {done}{total} events, {rate:,.0f}/s"
        if self.tty:
            sys.stderr.write("\r" + line + " " * 8)
            sys.stderr.flush()
        elif force:
            sys.stderr.write(line + "\n")

    def done(self, count: int) -> None:
        self.update(count, force=True)
        if self.tty:
            sys.stderr.write("\n")


async def produce(bootstrap: str, topic_of: Mapping[str, str], items: Iterable[Item], *,
                  rate: float | None = None, compress: float | None = None,
                  progress: Progress | None = None,
                  should_stop: Callable[[], bool] = lambda: False,
                  client_kwargs: Mapping[str, Any] | None = None) -> int:
    """Send items in order. `rate` caps events/s; `compress` paces by event time (x faster).
    `client_kwargs`: TLS/SASL (streams.kafka_config.aiokafka_kwargs)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10,
                                max_batch_size=1 << 20, max_request_size=8 << 20,
                                **(client_kwargs or {}))
    await producer.start()
    sent = 0
    t0_wall = time.monotonic()
    t0_event: float | None = None
    try:
        for family, event in items:
            if should_stop():
                break
            topic = topic_of[family]
            if isinstance(event, (bytes, bytearray)):
                await producer.send(topic, bytes(event))
            else:
                if compress:
                    ts = _event_time(event)
                    if ts is not None:
                        if t0_event is None:
                            t0_event = ts
                        delay = (ts - t0_event) / compress - (time.monotonic() - t0_wall)
                        if delay > 0:
                            await asyncio.sleep(delay)
                await producer.send(topic, orjson.dumps(event), key=_key(event))
            sent += 1
            if rate and sent % 100 == 0:
                ahead = sent / rate - (time.monotonic() - t0_wall)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif sent % 5000 == 0:
                await asyncio.sleep(0)
            if progress is not None:
                progress.update(sent)
        await producer.flush()
    finally:
        await producer.stop()
    if progress is not None:
        progress.done(sent)
    return sent
