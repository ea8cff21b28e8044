"""Table writes from timers carry their key's partition (Faust's RocksDB store needs one)."""
from __future__ import annotations

from typing import Any

from faust.streams import current_event

from streams.stores import PartitionedStore, in_partition


class NeedsAnEvent(dict):  # type: ignore[type-arg]
    """Like faust.stores.rocksdb.Store._set: the partition comes from the current event."""

    def __init__(self) -> None:
        super().__init__()
        self.partition_of_write: dict[str, int] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        event = current_event()
        assert event is not None
        self.partition_of_write[key] = event.message.partition
        super().__setitem__(key, value)


def test_writes_outside_any_event_go_to_the_keys_partition() -> None:
    data = NeedsAnEvent()
    store = PartitionedStore(data, lambda key: len(key) % 4)
    store["abc"] = 1
    store["abcd"] = 2
    assert data.partition_of_write == {"abc": 3, "abcd": 0}
    assert store["abc"] == 1 and store.get("zz") is None and "abcd" in store
    assert sorted(store.keys()) == ["abc", "abcd"] and len(store) == 2
    assert current_event() is None            # the stand-in does not leak


def test_in_partition_nests_and_restores() -> None:
    with in_partition(2):
        assert current_event().message.partition == 2  # type: ignore[union-attr]
        with in_partition(5):
            assert current_event().message.partition == 5  # type: ignore[union-attr]
        assert current_event().message.partition == 2  # type: ignore[union-attr]
    assert current_event() is None


class Serialising(NeedsAnEvent):
    """Like Faust's serialising stores: values encoded on write, decoded on read."""

    def _encode_key(self, key: str) -> bytes:
        return key.encode()

    def _encode_value(self, value: Any) -> bytes:
        return repr(value).encode()

    def _set(self, key: bytes, value: bytes) -> None:
        self[key.decode()] = value


def test_a_durable_store_is_written_at_commit_as_it_was_when_set() -> None:
    """A crash must not find on disk a record ahead of the outputs it caused."""
    data = Serialising()
    store = PartitionedStore(data, lambda key: 1)
    assert store.write_behind
    value = [1]
    store["k"] = value
    assert "k" not in data and store["k"] is value and store.get("k") is value
    assert "k" in store and list(store) == ["k"] and len(store) == 1
    value.append(2)                    # the live object moves on after the flush
    store.commit()
    assert data == {"k": b"[1]"} and data.partition_of_write == {"k": 1}
    assert store.pending == {}


def test_a_memory_store_is_written_at_once() -> None:
    data = NeedsAnEvent()
    store = PartitionedStore(data, lambda key: 0)
    assert not store.write_behind
    store["k"] = 1
    assert data == {"k": 1}
