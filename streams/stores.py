"""A table's local store, written from timers and rebalance handlers as well as from agents.

Faust's RocksDB store keeps one database per partition and takes the partition of a write from
the event being processed (`current_event()`); a flush timer has no such event, so every write
from it failed (`assert event is not None`) with `store = "rocksdb://"`. This adapter writes each
key in its own partition, whatever the context, and passes reads through.
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
    def __init__(self, data: MutableMapping[str, Any], partition_of: Callable[[str], int]) -> None:
        self.data = data
        self.partition_of = partition_of

    def __setitem__(self, key: str, value: Any) -> None:
        with in_partition(self.partition_of(key)):
            self.data[key] = value

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def keys(self) -> Any:  # type: ignore[override]
        return self.data.keys()
