"""HyperLogLog: a mergeable, restorable distinct count in 16 KiB (METRICS.md "Features").

Why our own: River's sketch hashes with Python's ``hash()``, salted per process for strings, so
a sketch restored from a changelog no longer matches new hashes, and it has no union. Here the
hash is a 64-bit blake2b digest, identical in every process and on every machine.

* Precision p = 14: m = 16384 one-byte registers, standard error 1.04 / sqrt(m) = 0.81 %.
* Estimator: Ertl's "improved raw estimator" (O. Ertl, *New cardinality estimation algorithms
  for HyperLogLog sketches*, 2017, algorithm 6). It works on the histogram of register values
  and is unbiased from 0 to far beyond 2^50 items without empirical bias tables or a switch
  between linear counting and the raw estimate: its sigma term *is* linear counting when most
  registers are empty, its tau term corrects the top end.
* Error: 2 % is about 2.5 standard errors, so about 99 % of sketches are within it. Measured
  at 100,000 distinct users over 20 seeds: rms 0.65 %, worst 1.71 %; below a few hundred items
  the count is exact to rounding. ``tests/unit/test_sketch.py`` checks 2 % at 100,000 users
  (5 seeds) and at 13 cardinalities from 1 to 150,000. If a tighter bound is ever needed,
  p = 16 gives 0.41 % for 64 KiB.
* Speed (pure Python): ``update`` of 100,000 strings about 0.2 s, ``add_hash`` 0.5 us,
  ``count`` and ``merge`` about 1-4 ms.
* Union is the register-wise maximum: associative, commutative, idempotent. Adding the same
  item twice, or merging the same sketch twice, changes nothing, so a resent update is harmless.
* Serialisation (``to_bytes``): one format byte, one precision byte, then either all m
  registers (dense, m + 2 bytes) or, when fewer than m / 3 registers are set, 3 bytes per set
  register (index as 2 bytes big-endian, value) in index order (sparse). A sketch of a few
  hundred users is a few hundred bytes to store or send.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from hashlib import blake2b

DEFAULT_P = 14
_DENSE = 1
_SPARSE = 2
_ALPHA_INF = 1 / (2 * math.log(2))


def hash64(item: str | bytes) -> int:
    """Stable 64-bit hash (blake2b, 8-byte digest); str is hashed as UTF-8."""
    data = item.encode() if isinstance(item, str) else item
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def _sigma(x: float) -> float:
    """sigma(x) = x + sum_k x^(2^k) 2^(k-1): the empty-register (linear counting) term."""
    if x == 1.0:
        return math.inf
    y = 1.0
    z = x
    while True:
        x *= x
        z_old = z
        z += x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    """tau(x) = (1 - x - sum_k (1 - x^(2^-k))^2 2^-k) / 3: the saturated-register term."""
    if x == 0.0 or x == 1.0:
        return 0.0
    y = 1.0
    z = 1.0 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == z_old:
            return z / 3.0


class HyperLogLog:
    """Distinct count of strings or 64-bit hashes, mergeable by register max."""

    __slots__ = ("p", "m", "q", "registers")

    def __init__(self, p: int = DEFAULT_P) -> None:
        if not 4 <= p <= 16:
            raise ValueError(f"precision must be in 4..16, got {p}")
        self.p = p
        self.m = 1 << p
        self.q = 64 - p                       # bits left for the rank
        self.registers = bytearray(self.m)

    # -- updates --------------------------------------------------------------------------

    def add_hash(self, h: int) -> None:
        """Add a 64-bit hash: the top p bits pick the register, the rest give the rank."""
        q = self.q
        w = h & ((1 << q) - 1)
        rank = q - w.bit_length() + 1          # leading zeros of the q-bit rest, plus one
        index = h >> q
        if rank > self.registers[index]:
            self.registers[index] = rank

    def add(self, item: str | bytes) -> None:
        self.add_hash(hash64(item))

    def update(self, items: Iterable[str | bytes]) -> None:
        """Add many items; the loop is inlined because this is the hot path."""
        q = self.q
        low = (1 << q) - 1
        regs = self.registers
        for item in items:
            data = item.encode() if isinstance(item, str) else item
            h = int.from_bytes(blake2b(data, digest_size=8).digest(), "big")
            rank = q - (h & low).bit_length() + 1
            index = h >> q
            if rank > regs[index]:
                regs[index] = rank

    def merge(self, other: HyperLogLog) -> HyperLogLog:
        """Union in place (register max); returns self."""
        if other.p != self.p:
            raise ValueError(f"cannot merge precision {other.p} into {self.p}")
        self.registers = bytearray(map(max, self.registers, other.registers))
        return self

    def copy(self) -> HyperLogLog:
        sketch = HyperLogLog(self.p)
        sketch.registers = bytearray(self.registers)
        return sketch

    # -- estimate -------------------------------------------------------------------------

    def count(self) -> float:
        """Estimated number of distinct items added (Ertl's improved raw estimator)."""
        m = self.m
        q = self.q
        hist = [0] * (q + 2)
        for value in self.registers:
            hist[value] += 1
        if hist[0] == m:
            return 0.0
        z = m * _tau(1.0 - hist[q + 1] / m)
        for k in range(q, 0, -1):
            z = 0.5 * (z + hist[k])
        z += m * _sigma(hist[0] / m)
        return _ALPHA_INF * m * m / z

    def __len__(self) -> int:
        return round(self.count())

    def is_empty(self) -> bool:
        return not any(self.registers)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, HyperLogLog) and self.p == other.p
                and self.registers == other.registers)

    def __repr__(self) -> str:
        return f"HyperLogLog(p={self.p}, count~{self.count():.1f})"

    # -- serialisation --------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Sparse (3 bytes per set register) when under m/3 registers are set, else dense."""
        regs = self.registers
        set_indices = [i for i, v in enumerate(regs) if v]
        if 3 * len(set_indices) < self.m:
            out = bytearray((_SPARSE, self.p))
            for i in set_indices:
                out += bytes((i >> 8, i & 0xFF, regs[i]))
            return bytes(out)
        return bytes((_DENSE, self.p)) + bytes(regs)

    @classmethod
    def from_bytes(cls, data: bytes) -> HyperLogLog:
        if len(data) < 2:
            raise ValueError("not a serialised HyperLogLog: too short")
        kind, p = data[0], data[1]
        sketch = cls(p)
        body = data[2:]
        if kind == _DENSE:
            if len(body) != sketch.m:
                raise ValueError(f"dense HyperLogLog needs {sketch.m} registers, got {len(body)}")
            sketch.registers = bytearray(body)
        elif kind == _SPARSE:
            if len(body) % 3:
                raise ValueError("sparse HyperLogLog body is not a multiple of 3 bytes")
            regs = sketch.registers
            for j in range(0, len(body), 3):
                index = body[j] << 8 | body[j + 1]
                if index >= sketch.m:
                    raise ValueError(f"register index {index} out of range")
                regs[index] = body[j + 2]
        else:
            raise ValueError(f"unknown HyperLogLog format {kind}")
        if max(sketch.registers, default=0) > sketch.q + 1:
            raise ValueError("register value out of range")
        return sketch
