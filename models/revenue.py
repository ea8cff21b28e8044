"""Revenue: MRR movements per customer, the monthly revenue bridge per scope, churn rate and CLV.

METRICS.md "Revenue". Two pieces of state, kept in two different stages:

* ``CustomerRevenue`` lives with the customer (customer stage). It applies subscription events
  in event-time order and turns each MRR change into one ``Movement``. Every movement carries
  the customer's MRR at the first instant of the movement's month (``month_start_mrr``), so the
  next stage never needs per-customer state to know who was paying when the month began.
* ``MonthBook`` is what the aggregation stage keeps for one scope and one month. It is fed the
  movements of that month (``apply``) and, for months already opened after it, the movements
  of earlier months that arrived late (``carry``). Both are idempotent on ``event_id``.

NRR, GRR and the churned-logo count are computed per customer of the starting cohort from
(MRR at month start, MRR now), which the movement carries. When a starting customer moves at
most once in the month this is exactly the sum of its movements; when it moves several times
(100 -> 150 -> 0, or 100 -> 0 -> 80) it stays bounded: a starter can lose at most what it
started with (GRR stays in [0, 1]) and its numerator contribution is its MRR now.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

# --------------------------------------------------------------------------------------------
# Calendar months (UTC)
# --------------------------------------------------------------------------------------------

_MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def _parse_month(month: str) -> tuple[int, int]:
    match = _MONTH_RE.match(month) if isinstance(month, str) else None
    if match is None:
        raise ValueError(f"not a YYYY-MM month: {month!r}")
    return int(match.group(1)), int(match.group(2))


def month_of(ts: float) -> str:
    """The UTC calendar month ("YYYY-MM") an epoch-seconds instant falls in.

    >>> month_of(1772323200.0)  # 2026-03-01T00:00:00Z
    '2026-03'
    >>> month_of(1772323199.5)
    '2026-02'
    """
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return f"{dt.year:04d}-{dt.month:02d}"


def month_start(month: str) -> float:
    """Epoch seconds of the month's first instant (inclusive)."""
    year, mon = _parse_month(month)
    return datetime(year, mon, 1, tzinfo=UTC).timestamp()


def month_end(month: str) -> float:
    """Epoch seconds of the next month's first instant: the month is [start, end)."""
    return month_start(next_month(month))


def next_month(month: str) -> str:
    """The calendar month after ``month``.

    >>> next_month("2026-12")
    '2027-01'
    """
    year, mon = _parse_month(month)
    return f"{year + 1:04d}-01" if mon == 12 else f"{year:04d}-{mon + 1:02d}"


def prev_month(month: str) -> str:
    """The calendar month before ``month``."""
    year, mon = _parse_month(month)
    return f"{year - 1:04d}-12" if mon == 1 else f"{year:04d}-{mon - 1:02d}"


# --------------------------------------------------------------------------------------------
# Movements
# --------------------------------------------------------------------------------------------

NEW = "new"
REACTIVATION = "reactivation"
EXPANSION = "expansion"
CONTRACTION = "contraction"
CHURN = "churn"
MOVEMENT_KINDS: tuple[str, ...] = (NEW, REACTIVATION, EXPANSION, CONTRACTION, CHURN)
# Sign of each movement in the bridge mrr_end = mrr_start + new + reactivation + expansion
# - contraction - churn.
MOVEMENT_SIGN: dict[str, int] = {NEW: 1, REACTIVATION: 1, EXPANSION: 1,
                                 CONTRACTION: -1, CHURN: -1}


def _check_mrr(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def classify_movement(old_mrr: float, new_mrr: float,
                      paid_before: bool) -> tuple[str, float] | None:
    """Kind and (positive) amount of the MRR change old -> new; None when MRR does not move.

    ``paid_before`` only matters from 0: it separates a first-time payer (new) from a
    returning one (reactivation), which the bridge keeps apart.

    >>> classify_movement(0, 100, False), classify_movement(0, 100, True)
    (('new', 100.0), ('reactivation', 100.0))
    >>> classify_movement(100, 150, True), classify_movement(100, 60, True)
    (('expansion', 50.0), ('contraction', 40.0))
    >>> classify_movement(100, 0, True), classify_movement(0, 0, True)
    (('churn', 100.0), None)
    """
    old = _check_mrr(old_mrr, "old_mrr")
    new = _check_mrr(new_mrr, "new_mrr")
    if new == old:
        return None
    if old == 0.0:
        return (REACTIVATION if paid_before else NEW), new
    if new == 0.0:
        return CHURN, old
    if new > old:
        return EXPANSION, new - old
    return CONTRACTION, old - new


@dataclass(frozen=True, slots=True)
class Movement:
    """One MRR change of one customer, as sent on to aggregation.

    Customer-free on purpose: the streaming layer attaches customer_id and segment. The
    ``event_id`` of the billing event that caused it lets an aggregation stage drop a resent
    delta; ``month_start_mrr`` (the customer's MRR at the first instant of ``month``) tells it
    whether the customer belongs to the month's starting cohort (NRR/GRR) without a lookup.
    """

    kind: str
    amount: float
    ts: float
    old_mrr: float
    new_mrr: float
    month: str
    event_id: str
    month_start_mrr: float

    @property
    def signed_amount(self) -> float:
        """The movement's contribution to mrr_end (negative for contraction and churn)."""
        return MOVEMENT_SIGN[self.kind] * self.amount

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Movement:
        kind = str(data["kind"])
        if kind not in MOVEMENT_SIGN:
            raise ValueError(f"unknown movement kind {kind!r}")
        return cls(kind=kind, amount=float(data["amount"]), ts=float(data["ts"]),
                   old_mrr=float(data["old_mrr"]), new_mrr=float(data["new_mrr"]),
                   month=str(data["month"]), event_id=str(data["event_id"]),
                   month_start_mrr=float(data["month_start_mrr"]))


# --------------------------------------------------------------------------------------------
# Currency
# --------------------------------------------------------------------------------------------


class UnknownCurrency(ValueError):
    """An amount's currency has no configured rate: the event is rejected (dead-lettered)."""

    def __init__(self, currency: str, reporting_currency: str) -> None:
        super().__init__(f"no rate configured for {currency!r} -> {reporting_currency!r}")
        self.currency = currency
        self.reporting_currency = reporting_currency


def to_reporting(amount: float, currency: str | None, rates: Mapping[str, float],
                 reporting_currency: str) -> float:
    """Convert ``amount`` to the reporting currency.

    ``rates`` are units of reporting currency per unit of the key currency
    (``[revenue.currency_rates]``). No currency, or the reporting currency itself, needs no
    rate; anything else without a usable (finite, > 0) rate raises ``UnknownCurrency`` rather
    than guessing, because a silently wrong MRR poisons every scope it is summed into.
    """
    reporting = reporting_currency.strip().upper()
    if currency is None or currency.strip().upper() in ("", reporting):
        return float(amount)
    code = currency.strip().upper()
    rate = rates.get(code)
    if rate is None:
        rate = next((r for k, r in rates.items() if k.strip().upper() == code), None)
    if rate is None or not math.isfinite(float(rate)) or float(rate) <= 0:
        raise UnknownCurrency(code, reporting)
    return float(amount) * float(rate)


# --------------------------------------------------------------------------------------------
# Per-customer state
# --------------------------------------------------------------------------------------------

SUBSCRIPTION_STARTED = "subscription_started"
SUBSCRIPTION_CHANGED = "subscription_changed"
SUBSCRIPTION_CANCELLED = "subscription_cancelled"
SUBSCRIPTION_KINDS: frozenset[str] = frozenset(
    {SUBSCRIPTION_STARTED, SUBSCRIPTION_CHANGED, SUBSCRIPTION_CANCELLED})

TRIAL = "trial"
ACTIVE = "active"
CHURNED = "churned"
REACTIVATED = "reactivated"

# Recent subscription event ids kept per customer: a safety net behind the customer stage's
# own lifetime dedup (an exact resend is already a no-op: same ts, same MRR).
_CUSTOMER_IDS = 16


class CustomerRevenue:
    """MRR, status and month-start MRR of one customer.

    Subscription events are applied in event-time order. One older than the latest applied
    subscription event (strictly older; equal times apply in arrival order) never overrides the
    current MRR: it produces no movement and changes neither MRR, status nor ``paid_before``.
    What is still recorded for it: its event_id (so a resend is recognised) and the
    ``ignored_late`` counter, so the stage can count it.
    """

    __slots__ = ("mrr", "paid_before", "churns", "last_ts", "month", "month_start_mrr",
                 "ignored_late", "recent_ids")

    def __init__(self) -> None:
        self.mrr: float = 0.0
        self.paid_before: bool = False
        self.churns: int = 0                 # churn movements so far (status "reactivated")
        self.last_ts: float | None = None    # ts of the latest applied subscription event
        self.month: str | None = None        # month of last_ts
        self.month_start_mrr: float = 0.0    # MRR at the first instant of ``month``
        self.ignored_late: int = 0
        self.recent_ids: list[str] = []

    @property
    def status(self) -> str:
        """trial (never paid), active, churned (0 after paying), reactivated (pays after churn)."""
        if self.mrr > 0:
            return REACTIVATED if self.churns else ACTIVE
        return CHURNED if self.paid_before else TRIAL

    def mrr_at_start_of(self, month: str) -> float:
        """MRR at ``month``'s first instant, as far as this state knows (months >= ``month``)."""
        if self.month is None or month > self.month:
            return self.mrr
        if month == self.month:
            return self.month_start_mrr
        raise ValueError(f"{month} is before the latest applied subscription month {self.month}")

    def apply_subscription(self, ts: float, event_id: str, kind: str,
                           mrr: float | None = None) -> Movement | None:
        """Apply one subscription event (MRR is already in the reporting currency).

        Returns the movement it causes, or None: no MRR change, a duplicate event_id, or an
        event older than the latest applied one (see the class docstring).
        """
        if kind not in SUBSCRIPTION_KINDS:
            raise ValueError(f"not a subscription event type: {kind!r}")
        if kind == SUBSCRIPTION_CANCELLED:
            new = 0.0
        elif mrr is None:
            raise ValueError(f"{kind} needs an mrr")
        else:
            new = _check_mrr(mrr, "mrr")
        ts = float(ts)
        if event_id in self.recent_ids:
            return None
        self._remember(event_id)
        if self.last_ts is not None and ts < self.last_ts:
            self.ignored_late += 1
            return None

        month = month_of(ts)
        if month != self.month:             # applied events are time-ordered: a later month
            self.month = month
            self.month_start_mrr = self.mrr
        self.last_ts = ts
        old = self.mrr
        moved = classify_movement(old, new, self.paid_before)
        self.mrr = new
        if new > 0:
            self.paid_before = True
        if moved is None:
            return None
        kind_, amount = moved
        if kind_ == CHURN:
            self.churns += 1
        return Movement(kind=kind_, amount=amount, ts=ts, old_mrr=old, new_mrr=new,
                        month=month, event_id=event_id, month_start_mrr=self.month_start_mrr)

    def _remember(self, event_id: str) -> None:
        self.recent_ids.append(event_id)
        if len(self.recent_ids) > _CUSTOMER_IDS:
            del self.recent_ids[: len(self.recent_ids) - _CUSTOMER_IDS]

    def to_dict(self) -> dict[str, Any]:
        return {"mrr": self.mrr, "paid": self.paid_before, "churns": self.churns,
                "ts": self.last_ts, "month": self.month, "m0": self.month_start_mrr,
                "late": self.ignored_late, "ids": list(self.recent_ids)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerRevenue:
        state = cls()
        state.mrr = float(data.get("mrr", 0.0))
        state.paid_before = bool(data.get("paid", state.mrr > 0))
        state.churns = int(data.get("churns", 0))
        ts = data.get("ts")
        state.last_ts = None if ts is None else float(ts)
        month = data.get("month")
        state.month = None if month is None else str(month)
        state.month_start_mrr = float(data.get("m0", 0.0))
        state.ignored_late = int(data.get("late", 0))
        state.recent_ids = [str(i) for i in data.get("ids", ())][-_CUSTOMER_IDS:]
        return state


# --------------------------------------------------------------------------------------------
# Per-scope, per-month book
# --------------------------------------------------------------------------------------------

DEFAULT_BOOK_IDS = 4096
# Money in a book is summed as integers of 1e-6 of the reporting currency. Float addition is
# not associative, so float sums would depend on the order movements arrive in, and that order
# depends on how customer partitions are spread over workers and interleaved: one worker and two
# workers would publish 30640.199999999997 and 30640.2 for the same month. Each movement is
# rounded once to a micro-unit (far below a cent), after which every sum is exact and the same
# in any order.
MONEY_SCALE = 1_000_000


def to_units(amount: float) -> int:
    """An amount in micro-units of the reporting currency (rounded once, half to even)."""
    return round(float(amount) * MONEY_SCALE)


def from_units(units: int) -> float:
    """The float nearest to ``units`` micro-units (the same float for the same units)."""
    return units / MONEY_SCALE


def _cohort(mrr: int, start: int) -> tuple[int, int, int, int]:
    """(expansion, contraction, churn, churned logo) of one starting-cohort customer, in units.

    Net of the month so far: a starter now at 0 lost exactly its start, one below its start
    contracted by the difference, one above expanded. Customers not paying at the month's start
    are outside the cohort and contribute nothing (new and reactivated MRR never count).
    """
    if start <= 0:
        return 0, 0, 0, 0
    if mrr <= 0:
        return 0, 0, start, 1
    if mrr < start:
        return 0, start - mrr, 0, 0
    return mrr - start, 0, 0, 0


def _ratio(num: int, den: int) -> float | None:
    return None if den <= 0 else num / den


class MonthBook:
    """Revenue bridge of one scope (all, a segment) for one calendar month.

    Feeding, per scope (see also ``carry``):

    * the first book of a scope is ``MonthBook(month)`` (nothing paying before it), or opened
      with a known balance ``MonthBook(month, mrr_start=..., customers_start=...)``;
    * the next month's book is ``book.next_month()`` (repeat across empty months);
    * each movement of month M goes to ``book(M).apply(mv)``, then, only if that returned True
      (or if book(M) is no longer held), to ``book(M2).carry(mv)`` for every held M2 > M, so
      later months' opening balances include a late movement.

    ``apply`` and ``carry`` remember the last ``max_ids`` event ids (the record is inherited by
    ``next_month``), so feeding the same movement twice changes nothing. ``mrr_end`` is kept from
    the customers' MRR deltas (new_mrr - old_mrr) and the bridge from the movement amounts:
    ``identity_holds`` checks the two agree.

    Money is held in integer micro-units (``MONEY_SCALE``), so the figures do not depend on
    the order the movements arrive in; the float attributes are views of those integers.
    """

    __slots__ = ("month", "start_units", "end_units", "customers_start", "customers_end",
                 "customers_churned", "movement_units", "cohort_units", "max_ids", "_ids")

    def __init__(self, month: str, mrr_start: float = 0.0, customers_start: int = 0,
                 max_ids: int = DEFAULT_BOOK_IDS) -> None:
        _parse_month(month)
        if max_ids < 1:
            raise ValueError("max_ids must be >= 1")
        self.month = month
        self.start_units = to_units(mrr_start)
        self.end_units = self.start_units
        self.customers_start = int(customers_start)
        self.customers_end = int(customers_start)
        self.customers_churned = 0
        self.movement_units: dict[str, int] = {k: 0 for k in MOVEMENT_KINDS}
        # Starting-cohort parts of the movements (what NRR/GRR/expansion_rate use):
        # [expansion, contraction, churn].
        self.cohort_units = [0, 0, 0]
        self.max_ids = int(max_ids)
        self._ids: dict[str, None] = {}      # insertion-ordered set, oldest first

    def opening_like(self, month: str) -> MonthBook:
        """An empty book of ``month`` that opens with this book's opening balance."""
        book = MonthBook(month, 0.0, self.customers_start, self.max_ids)
        book.start_units = book.end_units = self.start_units
        return book

    # -- feeding ---------------------------------------------------------------------------

    def seen(self, event_id: str) -> bool:
        """Whether a movement with this event_id was already applied or carried here."""
        return event_id in self._ids

    def _mark(self, event_id: str) -> bool:
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        while len(self._ids) > self.max_ids:
            del self._ids[next(iter(self._ids))]
        return True

    def apply(self, mv: Movement) -> bool:
        """Book a movement of this month; False (and no change) for an already seen event_id."""
        if mv.month != self.month:
            raise ValueError(f"movement of {mv.month} applied to the book of {self.month}")
        if mv.kind not in MOVEMENT_SIGN:
            raise ValueError(f"unknown movement kind {mv.kind!r}")
        if not self._mark(mv.event_id):
            return False
        old, new, start = to_units(mv.old_mrr), to_units(mv.new_mrr), to_units(mv.month_start_mrr)
        self.movement_units[mv.kind] += to_units(mv.amount)
        self.end_units += new - old
        self.customers_end += (new > 0) - (old > 0)
        before = _cohort(old, start)
        after = _cohort(new, start)
        for i in range(3):
            self.cohort_units[i] += after[i] - before[i]
        self.customers_churned += after[3] - before[3]
        return True

    def carry(self, mv: Movement) -> bool:
        """Shift this later month's opening balance by a (late) movement of an earlier month.

        The customer had no movement in this month yet (the customer stage ignores subscription
        events older than its latest one), so it only moves the start, and the end with it.
        """
        if not mv.month < self.month:
            raise ValueError(f"carry of a {mv.month} movement into {self.month}: not earlier")
        if not self._mark(mv.event_id):
            return False
        delta = to_units(mv.new_mrr) - to_units(mv.old_mrr)
        count = (mv.new_mrr > 0) - (mv.old_mrr > 0)
        self.start_units += delta
        self.end_units += delta
        self.customers_start += count
        self.customers_end += count
        return True

    def next_month(self) -> MonthBook:
        """The following month's book: it opens with this month's closing MRR and customers."""
        book = MonthBook(next_month(self.month), 0.0, self.customers_end, self.max_ids)
        book.start_units = book.end_units = self.end_units
        book._ids = dict(self._ids)          # a resend of this month's movement is no carry
        return book

    # -- figures ---------------------------------------------------------------------------

    @property
    def mrr_start(self) -> float:
        return from_units(self.start_units)

    @property
    def mrr_end(self) -> float:
        return from_units(self.end_units)

    @property
    def movements(self) -> dict[str, float]:
        return {k: from_units(v) for k, v in self.movement_units.items()}

    @property
    def nrr_expansion(self) -> float:
        return from_units(self.cohort_units[0])

    @property
    def nrr_contraction(self) -> float:
        return from_units(self.cohort_units[1])

    @property
    def nrr_churn(self) -> float:
        return from_units(self.cohort_units[2])

    @property
    def new(self) -> float:
        return from_units(self.movement_units[NEW])

    @property
    def reactivation(self) -> float:
        return from_units(self.movement_units[REACTIVATION])

    @property
    def expansion(self) -> float:
        return from_units(self.movement_units[EXPANSION])

    @property
    def contraction(self) -> float:
        return from_units(self.movement_units[CONTRACTION])

    @property
    def churn(self) -> float:
        return from_units(self.movement_units[CHURN])

    def bridge_end(self) -> float:
        """mrr_start + new + reactivation + expansion - contraction - churn."""
        return from_units(self.start_units + sum(MOVEMENT_SIGN[k] * v
                                                 for k, v in self.movement_units.items()))

    def nrr(self) -> float | None:
        """(mrr_start + expansion - contraction - churn) / mrr_start over the starting cohort."""
        exp, con, chu = self.cohort_units
        return _ratio(self.start_units + exp - con - chu, self.start_units)

    def grr(self) -> float | None:
        """(mrr_start - contraction - churn) / mrr_start over the starting cohort."""
        _, con, chu = self.cohort_units
        return _ratio(self.start_units - con - chu, self.start_units)

    def expansion_rate(self) -> float | None:
        """Starting-cohort expansion / mrr_start."""
        return _ratio(self.cohort_units[0], self.start_units)

    def logo_retention(self) -> float | None:
        """1 - customers_churned / customers_start; None without starting customers."""
        if self.customers_start <= 0:
            return None
        return 1.0 - self.customers_churned / self.customers_start

    def arpa(self) -> float | None:
        """mrr_end / customers_end; None without paying customers."""
        if self.customers_end <= 0:
            return None
        return _ratio(self.end_units, self.customers_end * MONEY_SCALE)

    def churn_sample(self) -> tuple[int, int]:
        """(customers_churned, customers_start): one entry of ``monthly_churn_rate``'s history."""
        return self.customers_churned, self.customers_start

    def to_record(self) -> dict[str, Any]:
        """The revenue fields of a ``vitals.business`` record (the caller adds scope, period,
        as_of, final, clv and the non-revenue fields). new/expansion/... are the whole bridge
        (every customer) so that the identity holds on the record; nrr/grr/expansion_rate use
        the starting cohort only, published as nrr_expansion/nrr_contraction/nrr_churn."""
        return {
            "mrr_start": self.mrr_start, "mrr_end": self.mrr_end,
            "new": self.new, "expansion": self.expansion, "contraction": self.contraction,
            "churn": self.churn, "reactivation": self.reactivation,
            "nrr": self.nrr(), "grr": self.grr(), "expansion_rate": self.expansion_rate(),
            "customers_start": self.customers_start, "customers_end": self.customers_end,
            "customers_churned": self.customers_churned,
            "logo_retention": self.logo_retention(), "arpa": self.arpa(),
            "nrr_expansion": self.nrr_expansion, "nrr_contraction": self.nrr_contraction,
            "nrr_churn": self.nrr_churn,
        }

    # -- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Money as integer micro-units, marked by ``"u"`` (records without it hold floats)."""
        return {"month": self.month, "u": MONEY_SCALE, "s": self.start_units,
                "e": self.end_units, "cs": self.customers_start, "ce": self.customers_end,
                "cc": self.customers_churned,
                "mv": [self.movement_units[k] for k in MOVEMENT_KINDS],
                "nrr": list(self.cohort_units), "max": self.max_ids, "ids": list(self._ids)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonthBook:
        units = (lambda v: int(v)) if data.get("u") == MONEY_SCALE else to_units
        book = cls(str(data["month"]), 0.0, int(data.get("cs", 0)),
                   int(data.get("max", DEFAULT_BOOK_IDS)))
        book.start_units = units(data.get("s", 0))
        book.end_units = units(data.get("e", data.get("s", 0)))
        book.customers_end = int(data.get("ce", book.customers_start))
        book.customers_churned = int(data.get("cc", 0))
        # A record without "mv" holds no movements: they stay at zero.
        for kind, value in zip(MOVEMENT_KINDS, data.get("mv", ()), strict=False):
            book.movement_units[kind] = units(value)
        book.cohort_units = [units(v) for v in (list(data.get("nrr", ())) + [0, 0, 0])[:3]]
        book._ids = dict.fromkeys(str(i) for i in data.get("ids", ()))
        while len(book._ids) > book.max_ids:
            del book._ids[next(iter(book._ids))]
        return book


def identity_holds(book: MonthBook, tol: float = 1e-6) -> bool:
    """mrr_end == mrr_start + new + reactivation + expansion - contraction - churn (within tol,
    relative to the size of the figures), and the customer counts are consistent."""
    scale = max(1.0, abs(book.mrr_start), abs(book.mrr_end), *map(abs, book.movements.values()))
    return (abs(book.mrr_end - book.bridge_end()) <= tol * scale
            and book.customers_end >= 0
            and 0 <= book.customers_churned <= max(book.customers_start, 0))


# --------------------------------------------------------------------------------------------
# Churn rate and CLV
# --------------------------------------------------------------------------------------------


def monthly_churn_rate(history: Iterable[tuple[int, int]], months: int = 3,
                       floor: float = 0.005) -> float:
    """Monthly logo churn rate c for CLV.

    ``history`` is (customers_churned, customers_start) per complete month, oldest first. c is
    the mean of churned/start over the last ``months`` of them (fewer if younger), skipping
    months that started with no customers; floored so that CLV = value / c stays finite.
    """
    if months < 1:
        raise ValueError("months must be >= 1")
    recent = list(history)[-months:]
    rates = [churned / start for churned, start in recent if start > 0]
    if not rates:
        return floor
    return max(sum(rates) / len(rates), floor)


def clv(arpa: float | None, gross_margin: float, churn_rate: float) -> float | None:
    """Scope CLV = arpa * gross_margin / c (lifespan 1/c months); None without arpa."""
    if arpa is None:
        return None
    if churn_rate <= 0:
        raise ValueError("churn_rate must be > 0 (floor it)")
    return arpa * gross_margin / churn_rate


def customer_clv(mrr: float, gross_margin: float, churn_rate: float) -> float:
    """Customer CLV = its MRR * gross_margin / c of its segment."""
    if churn_rate <= 0:
        raise ValueError("churn_rate must be > 0 (floor it)")
    return mrr * gross_margin / churn_rate


def clv_to_cac(clv: float | None, cac: float | None) -> float | None:
    """CLV / CAC; None when either is unknown or CAC is 0 (no meaningful ratio)."""
    if clv is None or cac is None or cac == 0:
        return None
    return clv / cac
