"""A table's local store, written from timers and rebalance handlers as well as from agents.

Two things matter with a store that outlives the process (`rocksdb://`):

- Faust's RocksDB store keeps one database per partition and takes the partition of a write
  from the event being processed (`current_event()`); a flush timer has none. Each key is
  written here in its own partition, whatever the context.
- A record on local disk survives a crash. Written before the outputs it caused were
  delivered, it would come back after a SIGKILL holding events whose outputs were lost: the
  replay skips those events as applied. So writes wait (`pending`, encoded when they are made:
  the live object keeps changing) until `commit()`, which the transport calls once the outputs
  are acknowledged. Reads see pending writes first. A memory store dies with the process, so
  it is written at once.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from faust.streams import _current_event


class _StandIn:
    """Takes the place of the current event: the store reads only its message's partition."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


@contextmanager
def in_partition(partition: int) -> Iterator[None]:
    """Within it, the store sees a current event of `partition`."""
    stand_in = _StandIn(partition)
    token = _current_event.set(weakref.ref(stand_in))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


class PartitionedStore(MutableMapping[str, Any]):
    def __init__(self, data: MutableMapping[str, Any], partition_of: Callable[[str], int],
                 write_behind: bool | None = None) -> None:
        self.data = data
        self.partition_of = partition_of
        # Faust's serialising stores (RocksDB) encode on write and outlive the process.
        self.write_behind = (hasattr(data, "_encode_value") if write_behind is None
                             else write_behind)
        self.pending: dict[str, tuple[Any, Any]] = {}   # key -> (live value, encoded)

    def __setitem__(self, key: str, value: Any) -> None:
        if self.write_behind:
            encode = getattr(self.data, "_encode_value", None)
            self.pending[key] = (value, value if encode is None else encode(value))
            return
        with in_partition(self.partition_of(key)):
            self.data[key] = value

    def commit(self) -> None:
        """Write what was set since the last commit, as it was when it was set."""
        pending, self.pending = self.pending, {}
        for key, (value, encoded) in pending.items():
            with in_partition(self.partition_of(key)):
                setter = getattr(self.data, "_set", None)
                if setter is None:
                    self.data[key] = value
                else:
                    setter(self.data._encode_key(key), encoded)  # type: ignore[attr-defined]

    def __delitem__(self, key: str) -> None:
        self.pending.pop(key, None)
        del self.data[key]

    def __getitem__(self, key: str) -> Any:
        held = self.pending.get(key)
        return self.data[key] if held is None else held[0]

    def get(self, key: str, default: Any = None) -> Any:
        held = self.pending.get(key)
        return self.data.get(key, default) if held is None else held[0]

    def __contains__(self, key: object) -> bool:
        return key in self.pending or key in self.data

    def __iter__(self) -> Iterator[str]:
        yield from self.pending
        yield from (k for k in self.data if k not in self.pending)

    def __len__(self) -> int:
        return len(self.pending) + sum(1 for k in self.data if k not in self.pending)

    def keys(self) -> Any:
        return list(iter(self))
