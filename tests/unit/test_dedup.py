"""Seen event ids: windowed and lifetime, prune by day, state round trip and its size."""

from __future__ import annotations

import base64

import orjson

from streams.dedup import SeenIds
from streams.events import event_hash

D = 20513


def test_empty() -> None:
    s = SeenIds()
    assert len(s) == 0
    assert not s.seen(event_hash("e-1"))
    assert s.to_dict() == {"l": "", "d": []}


def test_windowed_ids_are_seen_on_any_day() -> None:
    s = SeenIds()
    a, b, c = event_hash("a"), event_hash("b"), event_hash("c")
    s.add_windowed(a, D)
    s.add_windowed(b, D - 2)
    assert s.seen(a) and s.seen(b)
    assert not s.seen(c)
    assert len(s) == 2
    assert sorted(s.by_day) == [D - 2, D]


def test_lifetime_ids() -> None:
    s = SeenIds()
    h = event_hash("signup-1")
    s.add_lifetime(h)
    assert s.seen(h)
    assert len(s) == 1
    s.prune(D + 1000)  # prune never touches lifetime ids
    assert s.seen(h)


def test_extreme_hash_values() -> None:
    s = SeenIds()
    for h in (0, 1, 2 ** 64 - 1, 2 ** 63):
        s.add_lifetime(h)
        s.add_windowed(h, D)
    for h in (0, 1, 2 ** 64 - 1, 2 ** 63):
        assert s.seen(h)
    assert not s.seen(2)
    assert not s.seen(2 ** 64 - 2)


def test_groups_stay_sorted() -> None:
    s = SeenIds()
    hashes = [event_hash(f"e-{i}") for i in range(200)]
    for h in hashes:
        s.add_windowed(h, D)
        s.add_lifetime(h)
    assert list(s.by_day[D]) == sorted(hashes)
    assert list(s.lifetime) == sorted(hashes)
    assert all(s.seen(h) for h in hashes)
    assert not s.seen(event_hash("e-200"))


def test_prune_by_day() -> None:
    s = SeenIds()
    old, edge, new = event_hash("old"), event_hash("edge"), event_hash("new")
    s.add_windowed(old, D - 4)
    s.add_windowed(edge, D - 3)
    s.add_windowed(new, D)
    s.prune(D - 3)  # days before D-3 are forgotten, D-3 itself kept
    assert not s.seen(old)
    assert s.seen(edge) and s.seen(new)
    assert sorted(s.by_day) == [D - 3, D]
    assert len(s) == 2


def test_round_trip_through_json() -> None:
    s = SeenIds()
    for i in range(50):
        s.add_windowed(event_hash(f"u-{i}"), D - i % 3)
    for i in range(5):
        s.add_lifetime(event_hash(f"b-{i}"))
    data = orjson.loads(orjson.dumps(s.to_dict()))
    assert [d for d, _ in data["d"]] == [D - 2, D - 1, D]   # sorted by day
    back = SeenIds.from_dict(data)
    assert back.by_day == s.by_day
    assert back.lifetime == s.lifetime
    assert len(back) == 55
    assert all(back.seen(event_hash(f"u-{i}")) for i in range(50))
    assert all(back.seen(event_hash(f"b-{i}")) for i in range(5))
    assert not back.seen(event_hash("u-50"))
    # stored little-endian whatever the host: first 8 bytes of "l" = smallest lifetime id
    raw = base64.b64decode(data["l"])
    assert int.from_bytes(raw[:8], "little") == min(s.lifetime)


def test_from_empty_dict() -> None:
    s = SeenIds.from_dict({})
    assert len(s) == 0 and s.by_day == {}


def test_state_size_about_eight_bytes_an_id() -> None:
    s = SeenIds()
    for i in range(300):
        s.add_windowed(event_hash(f"evt-{i:08d}"), D - i % 3)  # 100 ids on each of 3 days
    text = orjson.dumps(s.to_dict())
    data = orjson.loads(text)
    # each day: 100 ids · 8 bytes = 800 bytes → base64 4 · ceil(800 / 3) = 1068 chars
    assert [len(b64) for _, b64 in data["d"]] == [1068, 1068, 1068]
    assert sum(len(base64.b64decode(b64)) for _, b64 in data["d"]) == 300 * 8
    # whole JSON: 3 · 1068 = 3204 chars of payload plus a few dozen of framing,
    # i.e. ~10.7 chars an id (8 bytes + the base64 third), far below a JSON list of ints
    assert 3204 < len(text) < 3204 + 80
    assert len(text) / 300 < 11
