"""Event builders for the integration tests."""
from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from aiokafka.partitioner import murmur2

from tests.integration.conftest import iso

PARTITIONS = 4
_ids = itertools.count()


def partition_of(customer_id: str, partitions: int = PARTITIONS) -> int:
    return (murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions


def tickers(prefix: str, partitions: int = PARTITIONS) -> list[str]:
    """One customer id per partition, to move every partition's watermark."""
    found: dict[int, str] = {}
    for i in itertools.count():
        cid = f"{prefix}-tick-{i}"
        found.setdefault(partition_of(cid, partitions), cid)
        if len(found) == partitions:
            return [found[p] for p in range(partitions)]
    raise AssertionError("unreachable")


def usage(cid: str, user: str, ts: float, action: str = "login", event_id: str | None = None
          ) -> dict[str, Any]:
    return {"event_id": event_id or f"u-{next(_ids)}", "customer_id": cid, "user_id": user,
            "ts": iso(ts), "action": action}


def signup(cid: str, ts: float, segment: str = "smb", **extra: Any) -> dict[str, Any]:
    return {"event_id": f"s-{cid}", "customer_id": cid, "ts": iso(ts), "segment": segment, **extra}


def tick(produce, out, prefix: str, ts: float, topic: str = "events.usage") -> None:
    """Move every partition's watermark to ts and wait until the worker has applied it."""
    for cid in tickers(prefix):
        produce.send(topic, usage(cid, "clock", ts))
    produce.flush()
    out.wait_for(lambda o: all(_at(o.latest.get(c, {}).get("as_of"), ts) for c in tickers(prefix)))


def _at(as_of: str | None, ts: float) -> bool:
    """A ticker's record is stamped with its event, 1 ms after it when that is a midnight."""
    if as_of is None:
        return False
    stamp = datetime.fromisoformat(as_of.replace("Z", "+00:00")).timestamp()
    return ts <= stamp <= ts + 0.001
