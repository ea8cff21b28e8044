"""HyperLogLog (models/sketch.py): accuracy on 100,000 users, union, serialisation, speed."""

from __future__ import annotations

import time

import pytest

from models.sketch import HyperLogLog, _sigma, _tau, hash64

TOLERANCE = 0.02  # METRICS.md "Features": documented relative error below 2 %


def users(prefix: str, n: int, start: int = 0) -> list[str]:
    return [f"{prefix}|c-{i // 7}|u-{i}" for i in range(start, start + n)]


def relative_error(estimate: float, true: int) -> float:
    return abs(estimate - true) / true


# ---- hash ------------------------------------------------------------------------------------


def test_hash64_is_stable_and_64_bit() -> None:
    # A fixed value: the hash must not depend on the process (Python's hash() of str does).
    assert hash64("c-1|u-1") == hash64(b"c-1|u-1")
    assert hash64("c-1|u-1") != hash64("c-1|u-2")
    assert all(0 <= hash64(u) < 2**64 for u in users("h", 100))


def test_hash64_known_value() -> None:
    from hashlib import blake2b
    expected = int.from_bytes(blake2b(b"abc", digest_size=8).digest(), "big")
    assert hash64("abc") == expected


# ---- accuracy --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["s0", "s1", "s2", "s3", "s4"])
def test_100k_distinct_users_within_two_percent(seed: str) -> None:
    sketch = HyperLogLog()
    sketch.update(users(seed, 100_000))
    assert relative_error(sketch.count(), 100_000) < TOLERANCE


@pytest.mark.parametrize("n", [1, 2, 3, 10, 50, 100, 500, 1000, 3000, 10_000, 30_000, 60_000,
                               150_000])
def test_error_below_two_percent_across_the_range(n: int) -> None:
    # Small cardinalities are where a plain HLL estimate is badly biased (+70 % near n = 0);
    # the estimator must stay within 2 % from a single user upwards.
    sketch = HyperLogLog()
    sketch.update(users(f"r{n}", n))
    assert relative_error(sketch.count(), n) < TOLERANCE


def test_small_counts_are_exact_to_rounding() -> None:
    for n in (1, 2, 5, 20):
        sketch = HyperLogLog()
        sketch.update(users("small", n))
        assert len(sketch) == n


def test_empty_and_duplicates() -> None:
    sketch = HyperLogLog()
    assert sketch.count() == 0.0 and sketch.is_empty()
    for _ in range(3):
        sketch.update(users("dup", 1000))        # the same 1000 users three times
    assert relative_error(sketch.count(), 1000) < TOLERANCE
    before = bytes(sketch.registers)
    sketch.add("dup|c-0|u-0")
    assert bytes(sketch.registers) == before     # adding a known user changes nothing


def test_add_and_add_hash_agree_with_update() -> None:
    a, b, c = HyperLogLog(), HyperLogLog(), HyperLogLog()
    items = users("agree", 2000)
    for item in items:
        a.add(item)
        b.add_hash(hash64(item))
    c.update(items)
    assert a == b == c


def test_add_hash_rank_of_extremes() -> None:
    sketch = HyperLogLog(p=4)                      # q = 60 rank bits
    sketch.add_hash(0)                             # register 0, all-zero rest: rank q + 1
    sketch.add_hash((3 << 60) | (1 << 59))         # register 3, top rank bit set: rank 1
    assert sketch.registers[0] == 61
    assert sketch.registers[3] == 1
    assert sum(1 for r in sketch.registers if r) == 2


# ---- union -------------------------------------------------------------------------------------


def test_merge_of_disjoint_sets() -> None:
    a, b = HyperLogLog(), HyperLogLog()
    a.update(users("m", 40_000))
    b.update(users("m", 60_000, start=40_000))
    union = a.copy().merge(b)
    assert relative_error(union.count(), 100_000) < TOLERANCE
    whole = HyperLogLog()
    whole.update(users("m", 100_000))
    assert union == whole                          # union is exactly the sketch of the union


def test_merge_of_overlapping_sets() -> None:
    a, b = HyperLogLog(), HyperLogLog()
    a.update(users("o", 70_000))                   # 0 .. 69,999
    b.update(users("o", 70_000, start=30_000))     # 30,000 .. 99,999: 40,000 in common
    union = a.copy().merge(b)
    assert relative_error(union.count(), 100_000) < TOLERANCE
    assert union == b.copy().merge(a)              # commutative
    assert union.copy().merge(a) == union          # idempotent


def test_merge_is_associative() -> None:
    parts = []
    for k in range(3):
        s = HyperLogLog()
        s.update(users(f"as{k}", 5000))
        parts.append(s)
    left = parts[0].copy().merge(parts[1]).merge(parts[2])
    right = parts[0].copy().merge(parts[1].copy().merge(parts[2]))
    assert left == right


def test_merge_refuses_other_precision() -> None:
    with pytest.raises(ValueError):
        HyperLogLog(14).merge(HyperLogLog(12))


# ---- serialisation -----------------------------------------------------------------------------


def test_round_trip_sparse() -> None:
    sketch = HyperLogLog()
    sketch.update(users("sp", 300))
    raw = sketch.to_bytes()
    assert raw[0] == 2                             # sparse
    assert len(raw) == 2 + 3 * sum(1 for r in sketch.registers if r) <= 2 + 3 * 300
    back = HyperLogLog.from_bytes(raw)
    assert back == sketch and back.count() == sketch.count()


def test_round_trip_dense() -> None:
    sketch = HyperLogLog()
    sketch.update(users("de", 50_000))
    raw = sketch.to_bytes()
    assert raw[0] == 1 and len(raw) == 2 + 16384   # dense
    assert HyperLogLog.from_bytes(raw) == sketch


def test_round_trip_empty_and_other_precision() -> None:
    assert HyperLogLog.from_bytes(HyperLogLog().to_bytes()) == HyperLogLog()
    small = HyperLogLog(p=10)
    small.update(users("p10", 5000))
    back = HyperLogLog.from_bytes(small.to_bytes())
    assert back.p == 10 and back == small


@pytest.mark.parametrize("raw", [b"", b"\x01", b"\x09\x0e", b"\x01\x0e\x00", b"\x02\x0e\x00\x01",
                                 b"\x02\x0e\xff\xff\x01", b"\x02\x0e\x00\x01\x63"])
def test_from_bytes_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(ValueError):
        HyperLogLog.from_bytes(raw)


# ---- estimator pieces and speed ----------------------------------------------------------------


def test_sigma_and_tau_limits() -> None:
    assert _sigma(0.0) == 0.0 and _sigma(1.0) == float("inf")
    assert _sigma(0.5) == pytest.approx(0.5 + 0.25 + 0.0625 * 2 + 0.00390625 * 4, rel=1e-3)
    assert _tau(0.0) == 0.0 and _tau(1.0) == 0.0
    assert 0 < _tau(0.5) < 1 / 3


def test_adding_100k_users_is_fast() -> None:
    items = users("speed", 100_000)
    sketch = HyperLogLog()
    start = time.perf_counter()
    sketch.update(items)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"100k adds took {elapsed:.2f} s"
