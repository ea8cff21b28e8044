"""models.revenue: movements, per-customer MRR state, the monthly bridge, churn rate and CLV.

No broker: explicit UTC timestamps only.
"""
from __future__ import annotations

import doctest
import json
import random
from datetime import UTC, datetime

import pytest

from models import revenue
from models.revenue import (
    CustomerRevenue,
    MonthBook,
    Movement,
    UnknownCurrency,
    classify_movement,
    clv,
    clv_to_cac,
    customer_clv,
    identity_holds,
    month_end,
    month_of,
    month_start,
    monthly_churn_rate,
    next_month,
    prev_month,
    to_reporting,
)

STARTED = "subscription_started"
CHANGED = "subscription_changed"
CANCELLED = "subscription_cancelled"


def ts(y: int, m: int, d: int, h: int = 12) -> float:
    return datetime(y, m, d, h, tzinfo=UTC).timestamp()


def roundtrip_json(data):
    return json.loads(json.dumps(data))


def test_doctests() -> None:
    result = doctest.testmod(revenue)
    assert result.failed == 0 and result.attempted > 0


# --- months ---------------------------------------------------------------------------------


def test_month_helpers() -> None:
    assert month_of(ts(2026, 3, 1, 0)) == "2026-03"
    assert month_of(ts(2026, 3, 1, 0) - 0.001) == "2026-02"
    assert month_start("2026-03") == ts(2026, 3, 1, 0)
    assert month_end("2026-02") == ts(2026, 3, 1, 0)            # exclusive end
    assert month_end("2025-12") == ts(2026, 1, 1, 0)
    assert month_end("2024-02") - month_start("2024-02") == 29 * 86400   # leap year
    assert next_month("2025-12") == "2026-01" and next_month("2026-01") == "2026-02"
    assert prev_month("2026-01") == "2025-12"
    for bad in ("2026-13", "2026-3", "26-03", "2026/03", ""):
        with pytest.raises(ValueError):
            month_start(bad)


# --- movement table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "paid_before", "expected"),
    [
        (0, 100, False, ("new", 100.0)),              # 0, never paid -> new, amount = new
        (0, 100, True, ("reactivation", 100.0)),      # 0, paid before -> reactivation
        (100, 130, True, ("expansion", 30.0)),        # > old -> new - old
        (100, 130, False, ("expansion", 30.0)),       # paid_before is irrelevant above 0
        (100, 60, True, ("contraction", 40.0)),       # 0 < new < old -> old - new
        (100, 0, True, ("churn", 100.0)),             # -> 0: amount = old
        (0, 0, False, None),                          # nothing moves
        (0, 0, True, None),
        (100, 100, True, None),
    ],
)
def test_classify_movement_table(old, new, paid_before, expected) -> None:
    assert classify_movement(old, new, paid_before) == expected


def test_classify_rejects_negative_or_nan() -> None:
    with pytest.raises(ValueError):
        classify_movement(-1, 10, False)
    with pytest.raises(ValueError):
        classify_movement(10, float("nan"), False)


# --- per-customer state ---------------------------------------------------------------------


def test_customer_movements_and_status_transitions() -> None:
    c = CustomerRevenue()
    assert c.status == "trial"
    assert c.apply_subscription(ts(2026, 1, 5), "e0", STARTED, 0.0) is None    # free start
    assert c.status == "trial"

    mv = c.apply_subscription(ts(2026, 1, 10), "e1", CHANGED, 100.0)
    assert (mv.kind, mv.amount, mv.old_mrr, mv.new_mrr) == ("new", 100.0, 0.0, 100.0)
    assert (mv.month, mv.event_id, mv.month_start_mrr) == ("2026-01", "e1", 0.0)
    assert c.status == "active"

    mv = c.apply_subscription(ts(2026, 2, 3), "e2", CHANGED, 150.0)
    assert (mv.kind, mv.amount, mv.month, mv.month_start_mrr) == ("expansion", 50.0, "2026-02", 100.0)
    mv = c.apply_subscription(ts(2026, 2, 20), "e3", CHANGED, 120.0)
    assert (mv.kind, mv.amount, mv.month_start_mrr) == ("contraction", 30.0, 100.0)
    assert c.status == "active"

    mv = c.apply_subscription(ts(2026, 3, 2), "e4", CANCELLED)
    assert (mv.kind, mv.amount, mv.month_start_mrr) == ("churn", 120.0, 120.0)
    assert c.status == "churned" and c.mrr == 0.0

    mv = c.apply_subscription(ts(2026, 5, 1), "e5", STARTED, 90.0)
    assert (mv.kind, mv.amount, mv.month_start_mrr) == ("reactivation", 90.0, 0.0)
    assert c.status == "reactivated"
    mv = c.apply_subscription(ts(2026, 5, 9), "e6", CHANGED, 110.0)
    assert mv.kind == "expansion" and c.status == "reactivated"

    assert c.apply_subscription(ts(2026, 6, 1), "e7", CANCELLED) is not None
    assert c.status == "churned"
    assert c.mrr_at_start_of("2026-06") == 110.0 and c.mrr_at_start_of("2026-07") == 0.0


def test_late_subscription_event_never_overrides_newer_mrr() -> None:
    c = CustomerRevenue()
    c.apply_subscription(ts(2026, 3, 1), "a", STARTED, 100.0)
    c.apply_subscription(ts(2026, 3, 10), "b", CHANGED, 200.0)
    # An older change and an older cancellation arrive late: no movement, MRR stays.
    assert c.apply_subscription(ts(2026, 3, 5), "late1", CHANGED, 50.0) is None
    assert c.apply_subscription(ts(2026, 2, 1), "late2", CANCELLED) is None
    assert (c.mrr, c.status, c.ignored_late, c.last_ts) == (200.0, "active", 2, ts(2026, 3, 10))
    # Equal event time is not older: it applies.
    mv = c.apply_subscription(ts(2026, 3, 10), "c", CHANGED, 250.0)
    assert mv is not None and mv.kind == "expansion"
    # A late event never makes a never-paid customer "paid before".
    t = CustomerRevenue()
    t.apply_subscription(ts(2026, 3, 10), "x", STARTED, 0.0)
    assert t.apply_subscription(ts(2026, 3, 1), "y", STARTED, 80.0) is None
    assert t.status == "trial" and not t.paid_before
    mv = t.apply_subscription(ts(2026, 3, 12), "z", CHANGED, 80.0)
    assert mv.kind == "new"


def test_customer_duplicate_event_and_validation() -> None:
    c = CustomerRevenue()
    assert c.apply_subscription(ts(2026, 1, 1), "a", STARTED, 100.0) is not None
    c.apply_subscription(ts(2026, 1, 1), "b", CHANGED, 200.0)      # same instant
    assert c.apply_subscription(ts(2026, 1, 1), "a", STARTED, 100.0) is None   # resend
    assert c.mrr == 200.0
    with pytest.raises(ValueError):
        c.apply_subscription(ts(2026, 1, 2), "c", "payment_succeeded", 10.0)
    with pytest.raises(ValueError):
        c.apply_subscription(ts(2026, 1, 2), "d", CHANGED, None)
    with pytest.raises(ValueError):
        c.apply_subscription(ts(2026, 1, 2), "e", CHANGED, -5.0)


def test_customer_state_roundtrip() -> None:
    c = CustomerRevenue()
    c.apply_subscription(ts(2026, 1, 1), "a", STARTED, 100.0)
    c.apply_subscription(ts(2026, 2, 1), "b", CANCELLED)
    c.apply_subscription(ts(2026, 1, 15), "late", CHANGED, 10.0)
    restored = CustomerRevenue.from_dict(roundtrip_json(c.to_dict()))
    assert restored.to_dict() == c.to_dict()
    assert restored.status == "churned" and restored.ignored_late == 1
    mv = restored.apply_subscription(ts(2026, 2, 10), "c", STARTED, 70.0)
    assert (mv.kind, mv.month_start_mrr) == ("reactivation", 100.0)
    assert Movement.from_dict(roundtrip_json(mv.to_dict())) == mv


# --- currency -------------------------------------------------------------------------------


def test_to_reporting_currency() -> None:
    rates = {"USD": 1.0, "EUR": 1.08}
    assert to_reporting(100.0, "EUR", rates, "USD") == pytest.approx(108.0)
    assert to_reporting(100.0, "eur", rates, "USD") == pytest.approx(108.0)
    assert to_reporting(100.0, None, rates, "USD") == 100.0
    assert to_reporting(100.0, "USD", {}, "USD") == 100.0      # reporting currency needs no rate
    with pytest.raises(UnknownCurrency) as err:
        to_reporting(100.0, "GBP", rates, "USD")
    assert err.value.currency == "GBP"
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnknownCurrency):
        to_reporting(100.0, "JPY", {"JPY": 0.0}, "USD")          # unusable rate


# --- month book -----------------------------------------------------------------------------


def feed(book: MonthBook, mv: Movement | None) -> None:
    assert mv is not None
    assert book.apply(mv)


def test_month_book_hand_computed() -> None:
    customers = {k: CustomerRevenue() for k in "ABCDEF"}
    feb = MonthBook("2026-02")
    # February: A 1000, B 500, C 300, D 200 start paying; F pays 150 and churns.
    for k, mrr in (("A", 1000.0), ("B", 500.0), ("C", 300.0), ("D", 200.0), ("F", 150.0)):
        feed(feb, customers[k].apply_subscription(ts(2026, 2, 2), f"{k}-start", STARTED, mrr))
    feed(feb, customers["F"].apply_subscription(ts(2026, 2, 20), "F-cancel", CANCELLED))
    assert identity_holds(feb)
    assert (feb.mrr_end, feb.customers_end) == (2000.0, 4)

    mar = feb.next_month()
    # mrr_start = 1000 + 500 + 300 + 200 = 2000, customers_start = 4 (A, B, C, D).
    assert (mar.month, mar.mrr_start, mar.customers_start) == ("2026-03", 2000.0, 4)
    feed(mar, customers["A"].apply_subscription(ts(2026, 3, 3), "A1", CHANGED, 1200.0))  # expansion 200
    feed(mar, customers["B"].apply_subscription(ts(2026, 3, 4), "B1", CHANGED, 400.0))   # contraction 100
    feed(mar, customers["C"].apply_subscription(ts(2026, 3, 5), "C1", CANCELLED))        # churn 300
    feed(mar, customers["E"].apply_subscription(ts(2026, 3, 6), "E1", STARTED, 250.0))   # new 250
    feed(mar, customers["E"].apply_subscription(ts(2026, 3, 20), "E2", CHANGED, 350.0))  # expansion 100 (not in NRR)
    feed(mar, customers["F"].apply_subscription(ts(2026, 3, 7), "F1", STARTED, 150.0))   # reactivation 150
    # D: no movement.

    # Bridge (all customers): new 250, reactivation 150, expansion 200 + 100 = 300,
    # contraction 100, churn 300.
    assert (mar.new, mar.reactivation, mar.expansion, mar.contraction, mar.churn) == (
        250.0, 150.0, 300.0, 100.0, 300.0)
    # mrr_end = 2000 + 250 + 150 + 300 - 100 - 300 = 2300 = A1200 + B400 + D200 + E350 + F150.
    assert mar.mrr_end == 2300.0 and identity_holds(mar)
    assert mar.mrr_end == sum(c.mrr for c in customers.values())
    # Starting cohort only: expansion 200 (A), contraction 100 (B), churn 300 (C).
    # NRR = (2000 + 200 - 100 - 300) / 2000 = 1800 / 2000 = 0.9
    # GRR = (2000 - 100 - 300) / 2000 = 1600 / 2000 = 0.8
    # expansion_rate = 200 / 2000 = 0.1
    assert mar.nrr() == pytest.approx(0.9)
    assert mar.grr() == pytest.approx(0.8)
    assert mar.expansion_rate() == pytest.approx(0.1)
    # customers_churned = 1 (C) of 4 starters: logo_retention = 1 - 1/4 = 0.75.
    # customers_end = A, B, D, E, F = 5: arpa = 2300 / 5 = 460.
    assert (mar.customers_churned, mar.customers_end) == (1, 5)
    assert mar.logo_retention() == pytest.approx(0.75)
    assert mar.arpa() == pytest.approx(460.0)
    record = mar.to_record()
    assert record["nrr"] == pytest.approx(0.9) and record["arpa"] == pytest.approx(460.0)
    assert record["mrr_end"] == (record["mrr_start"] + record["new"] + record["reactivation"]
                                 + record["expansion"] - record["contraction"] - record["churn"])
    # The book survives its changelog.
    restored = MonthBook.from_dict(roundtrip_json(mar.to_dict()))
    assert restored.to_dict() == mar.to_dict() and restored.nrr() == pytest.approx(0.9)


def test_first_month_ratios_are_null() -> None:
    book = MonthBook("2026-01")
    assert (book.nrr(), book.grr(), book.expansion_rate(), book.logo_retention(),
            book.arpa()) == (None, None, None, None, None)
    c = CustomerRevenue()
    feed(book, c.apply_subscription(ts(2026, 1, 3), "n", STARTED, 100.0))
    feed(book, c.apply_subscription(ts(2026, 1, 9), "x", CHANGED, 180.0))
    # mrr_start = 0: NRR/GRR/expansion_rate stay null even with new and expansion MRR.
    assert (book.nrr(), book.grr(), book.expansion_rate()) == (None, None, None)
    assert book.arpa() == 180.0 and identity_holds(book)


def test_starter_with_several_movements_stays_bounded() -> None:
    # Cohort figures are net per starting customer: a starter loses at most its start.
    a, b = CustomerRevenue(), CustomerRevenue()
    jan = MonthBook("2026-01")
    feed(jan, a.apply_subscription(ts(2026, 1, 1), "a0", STARTED, 100.0))
    feed(jan, b.apply_subscription(ts(2026, 1, 1), "b0", STARTED, 100.0))
    feb = jan.next_month()
    feed(feb, a.apply_subscription(ts(2026, 2, 2), "a1", CHANGED, 150.0))   # +50
    feed(feb, a.apply_subscription(ts(2026, 2, 9), "a2", CANCELLED))         # -150
    feed(feb, b.apply_subscription(ts(2026, 2, 2), "b1", CANCELLED))         # -100
    feed(feb, b.apply_subscription(ts(2026, 2, 9), "b2", STARTED, 80.0))     # reactivation 80
    # Bridge: expansion 50, churn 250, reactivation 80: 200 + 50 + 80 - 250 = 80.
    assert (feb.expansion, feb.churn, feb.reactivation, feb.mrr_end) == (50.0, 250.0, 80.0, 80.0)
    assert identity_holds(feb)
    # Cohort: A now 0 -> churn 100 (its start); B now 80 -> contraction 20.
    # NRR = (200 - 20 - 100) / 200 = 0.4 = (0 + 80) / 200; GRR = 0.4; A is the one lost logo.
    assert (feb.nrr_expansion, feb.nrr_contraction, feb.nrr_churn) == (0.0, 20.0, 100.0)
    assert feb.nrr() == pytest.approx(0.4) and feb.grr() == pytest.approx(0.4)
    assert feb.customers_churned == 1 and feb.logo_retention() == pytest.approx(0.5)


def test_month_book_is_idempotent_on_event_id() -> None:
    c = CustomerRevenue()
    book = MonthBook("2026-01")
    mv = c.apply_subscription(ts(2026, 1, 3), "e1", STARTED, 100.0)
    assert book.apply(mv) is True
    before = book.to_dict()
    assert book.apply(mv) is False                 # resent delta: dropped
    assert book.to_dict() == before and book.mrr_end == 100.0 and book.seen("e1")
    # The next month inherits the record: carrying a resent January movement is a no-op too.
    feb = book.next_month()
    assert feb.carry(mv) is False and feb.mrr_start == 100.0
    # The record is bounded.
    small = MonthBook("2026-01", max_ids=3)
    for i in range(5):
        small.apply(Movement("new", 1.0, ts(2026, 1, 2), 0.0, 1.0, "2026-01", f"id{i}", 0.0))
    assert len(small.to_dict()["ids"]) == 3 and not small.seen("id0") and small.seen("id4")
    with pytest.raises(ValueError):
        small.apply(Movement("new", 1.0, ts(2026, 2, 2), 0.0, 1.0, "2026-02", "x", 0.0))


def test_late_movement_is_carried_into_later_months() -> None:
    a, b = CustomerRevenue(), CustomerRevenue()
    jan = MonthBook("2026-01")
    feed(jan, a.apply_subscription(ts(2026, 1, 2), "a0", STARTED, 100.0))
    feb = jan.next_month()
    mar = feb.next_month()
    # A January movement reaches aggregation after February and March were opened.
    late = b.apply_subscription(ts(2026, 1, 30), "b0", STARTED, 40.0)
    assert jan.apply(late)
    assert feb.carry(late) and mar.carry(late)
    assert not feb.carry(late)                     # resend: no-op
    assert (jan.mrr_end, jan.customers_end) == (140.0, 2)
    assert (feb.mrr_start, feb.mrr_end, feb.customers_start) == (140.0, 140.0, 2)
    assert (mar.mrr_start, mar.customers_start) == (140.0, 2)
    assert all(identity_holds(b_) for b_ in (jan, feb, mar))
    with pytest.raises(ValueError):
        jan.carry(late)                            # carry only into later months


def _random_subscriptions(rng: random.Random, t0: float, t_end: float, customers: int
                          ) -> list[tuple[float, int, float, str, str, float | None]]:
    """(arrival key, customer, ts, event_id, kind, mrr) of random subscription histories, in
    arrival order: event time plus up to 4 days of delay, so some arrive late."""
    events = []
    for cid in range(customers):
        t, mrr, n = t0, 0.0, 0
        while True:
            t += rng.expovariate(1 / (12 * 86400))
            if t >= t_end:
                break
            n += 1
            r = rng.random()
            if mrr == 0:
                kind, new = (STARTED, rng.choice([0.0, 50.0, 100.0, 250.0, 999.5])) if r < 0.7 \
                    else (CANCELLED, None)
            elif r < 0.2:
                kind, new = CANCELLED, None
            else:
                kind, new = CHANGED, round(mrr * rng.choice([0.5, 0.8, 1.0, 1.25, 2.0]), 2)
            if kind != CANCELLED:
                mrr = new
            else:
                mrr = 0.0
            # Arrival order: event time plus up to 4 days of delay, so some arrive late.
            events.append((t + rng.uniform(0, 4 * 86400), cid, t, f"c{cid}-e{n}", kind, new))
    events.sort()
    return events


def _assert_books_follow_the_timelines(books: dict[str, MonthBook],
                                       timeline: dict[int, list[tuple[float, float]]]) -> None:
    """Every month's book holds the start, end, churn and retention the MRR timelines give."""

    def mrr_at(cid: int, instant: float) -> float:
        value = 0.0
        for t, m in timeline[cid]:
            if t is not None and t < instant:
                value = m
        return value

    customers = list(timeline)
    first = min(books)
    for month in sorted(books):
        book = books[month]
        assert identity_holds(book), month
        if month != first:
            prev = books[prev_month(month)]
            assert book.mrr_start == pytest.approx(prev.mrr_end)
            assert book.customers_start == prev.customers_end
        start = {cid: mrr_at(cid, month_start(month)) for cid in customers}
        end = {cid: mrr_at(cid, month_end(month)) for cid in customers}
        starters = [cid for cid in customers if start[cid] > 0]
        assert book.mrr_start == pytest.approx(sum(start.values()))
        assert book.mrr_end == pytest.approx(sum(end.values()))
        assert book.customers_start == len(starters)
        assert book.customers_end == sum(1 for v in end.values() if v > 0)
        assert book.customers_churned == sum(1 for cid in starters if end[cid] == 0)
        if book.mrr_start > 0:
            assert book.nrr() == pytest.approx(sum(end[c] for c in starters) / book.mrr_start)
            assert book.grr() == pytest.approx(
                sum(min(end[c], start[c]) for c in starters) / book.mrr_start)
            assert 0.0 <= book.grr() <= 1.0 + 1e-9
        else:
            assert book.nrr() is None
        assert identity_holds(MonthBook.from_dict(roundtrip_json(book.to_dict())))


def _aggregate(books: dict[str, MonthBook], mv: Movement, counts: dict[str, int]) -> None:
    """The business stage's part: the movement's month, and every later month it carries to."""
    if not books:
        books[mv.month] = MonthBook(mv.month)
    latest = max(books)
    while latest < mv.month:                   # roll forward across empty months
        books[next_month(latest)] = books[latest].next_month()
        latest = next_month(latest)
    target = books.get(mv.month)
    if target is None:                         # before the first book: start earlier
        raise AssertionError("movements arrive no earlier than the first book here")
    if target.apply(mv):
        for m, book in books.items():
            if m > mv.month:
                counts["carried"] += book.carry(mv)


def test_identity_on_random_history() -> None:
    """50 customers, 12 months, events arriving out of order, resent deltas, late carries."""
    rng = random.Random(20260301)
    months = ["2025-01"]
    while len(months) < 12:
        months.append(next_month(months[-1]))
    t0, t_end = month_start(months[0]), month_end(months[-1])

    events = _random_subscriptions(rng, t0, t_end, 50)

    customers = {cid: CustomerRevenue() for cid in range(50)}
    timeline: dict[int, list[tuple[float, float]]] = {cid: [] for cid in range(50)}
    books: dict[str, MonthBook] = {}
    emitted: list[Movement] = []
    counts = {"carried": 0, "dropped": 0}

    for _, cid, t, eid, kind, mrr in events:
        state = customers[cid]
        mv = state.apply_subscription(t, eid, kind, mrr)
        if rng.random() < 0.05:                    # the customer stage sees a resend
            assert state.apply_subscription(t, eid, kind, mrr) is None
        timeline[cid].append((state.last_ts, state.mrr))
        if mv is not None:
            emitted.append(mv)
            _aggregate(books, mv, counts)
        if emitted and rng.random() < 0.1:         # a resent delta reaches aggregation
            old = rng.choice(emitted[-20:])
            target = books[old.month]
            if not target.apply(old):
                counts["dropped"] += 1
                for m, book in books.items():
                    if m > old.month:
                        assert book.carry(old) is False
    assert sum(c.ignored_late for c in customers.values()) > 0   # late events did happen
    assert counts["carried"] > 0 and counts["dropped"] > 0, counts
    while max(books) < months[-1]:
        books[next_month(max(books))] = books[max(books)].next_month()

    _assert_books_follow_the_timelines(books, timeline)


def test_identity_holds_detects_a_broken_bridge() -> None:
    book = MonthBook("2026-01")
    book.apply(Movement("new", 90.0, ts(2026, 1, 2), 0.0, 100.0, "2026-01", "bad", 0.0))
    assert not identity_holds(book)


def test_month_book_figures_do_not_depend_on_the_order_movements_arrive_in() -> None:
    # Float sums depend on the order of the terms (0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1); the
    # business stage receives movements in an order that depends on how customer partitions
    # are spread over workers, so a book must give the very same record in any order.
    rng = random.Random(7)
    moves = []
    for i in range(300):
        c = CustomerRevenue()
        c.apply_subscription(ts(2026, 1, 5), f"s{i}", STARTED, round(rng.uniform(1, 500), 2))
        for j in range(rng.randint(1, 3)):
            kind = rng.choice((CHANGED, CHANGED, CANCELLED))
            mrr = round(rng.uniform(0.01, 900), 2) * rng.choice((1.0, 1.0837))
            mv = c.apply_subscription(ts(2026, 2, 2 + j), f"c{i}-{j}", kind, mrr)
            if mv is not None:
                moves.append(mv)
    records = set()
    for _ in range(5):
        rng.shuffle(moves)
        book = MonthBook("2026-02", 12345.67, 300)
        for mv in moves:
            book.apply(mv)
        records.add(json.dumps(book.to_record(), sort_keys=True))
        assert identity_holds(book)
    assert len(records) == 1


def test_month_book_reads_a_changelog_record_with_float_money() -> None:
    # Records written before money was kept in micro-units hold floats and no "u".
    old = {"month": "2026-03", "s": 2000.0, "e": 2300.0, "cs": 4, "ce": 5, "cc": 1,
           "mv": [250.0, 150.0, 300.0, 100.0, 300.0], "nrr": [200.0, 100.0, 300.0],
           "max": 4096, "ids": ["A1"]}
    book = MonthBook.from_dict(old)
    assert (book.mrr_start, book.mrr_end, book.new, book.churn) == (2000.0, 2300.0, 250.0, 300.0)
    assert book.nrr() == pytest.approx(0.9) and book.seen("A1")
    assert MonthBook.from_dict(roundtrip_json(book.to_dict())).to_dict() == book.to_dict()
    assert book.to_dict()["s"] == 2_000_000_000


# --- churn rate and CLV ---------------------------------------------------------------------


def test_monthly_churn_rate() -> None:
    # Three months: (2/100 + 1/50 + 3/60) / 3 = (0.02 + 0.02 + 0.05) / 3 = 0.03
    assert monthly_churn_rate([(9, 10), (2, 100), (1, 50), (3, 60)]) == pytest.approx(0.03)
    # Fewer than three months: the one there is, 1/40 = 0.025.
    assert monthly_churn_rate([(1, 40)]) == pytest.approx(0.025)
    # A month that started with no customers is skipped: (3/100 + 1/50) / 2 = 0.025.
    assert monthly_churn_rate([(1, 4), (0, 0), (3, 100), (1, 50)]) == pytest.approx(0.025)
    # Floored at 0.005; nothing to go on -> the floor.
    assert monthly_churn_rate([(0, 100), (0, 100)]) == 0.005
    assert monthly_churn_rate([(1, 1000)], floor=0.005) == 0.005        # 0.001 < floor
    assert monthly_churn_rate([]) == 0.005
    assert monthly_churn_rate([(1, 10), (1, 100)], months=1, floor=0.0) == pytest.approx(0.01)


def test_clv_numbers() -> None:
    # Scope: arpa 460, margin 0.8, c 0.02 -> 460 * 0.8 / 0.02 = 18400
    assert clv(460.0, 0.8, 0.02) == pytest.approx(18400.0)
    assert clv(None, 0.8, 0.02) is None
    # Customer (CONTRACT example): 499 * 0.8 / (1/30) = 11976; / cac 800 = 14.97
    value = customer_clv(499.0, 0.8, 1 / 30)
    assert value == pytest.approx(11976.0)
    assert clv_to_cac(value, 800.0) == pytest.approx(14.97)
    assert clv_to_cac(value, None) is None and clv_to_cac(value, 0.0) is None
    assert clv_to_cac(None, 800.0) is None
    with pytest.raises(ValueError):
        clv(460.0, 0.8, 0.0)
