"""A zoo of churn profiles for the churn benchmark: each with its own cause of churn.

Independent of ``streams/simulator.py`` on purpose: the churn model was tuned on that
simulator, so it is judged here on histories it was not shaped on. Same output shape as the
simulator (``(family, event dict)`` in non-decreasing event time, CONTRACT.md section 1), so
``tests.inprocess.valid_events`` and the customer stage take them as they are.

Every profile shares the same base life of a customer (users active on weekdays more than at
weekends, value actions, features, monthly payments on the anniversary, a few tickets with
good CSAT, 2 % of payments failing once) and the same churn hazard (a cancellation day drawn
from an exponential law, about 9 % of paying customers a month). They differ only in what
comes before the cancellation:

- ``usage_decline``: activity fades to about a tenth over the 3-5 weeks before cancelling;
- ``payment_failures``: the last one or two payments fail (retries fail too) before cancelling;
- ``support_pain``: tickets (high, urgent) and bad CSAT over the last month, usage unchanged;
- ``silent``: dormant (no activity at all) from 3-8 weeks before the cancellation, which
  happens at the next billing anniversary: paying until renewal;
- ``seasonal``: half of the customers have a yearly low season (activity at a quarter for
  5-7 weeks) that is not churn; churners fade as in ``usage_decline``;
- ``chance``: nothing comes before the cancellation; churn is pure chance.
"""
from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

PROFILES: tuple[str, ...] = ("usage_decline", "payment_failures", "support_pain", "silent",
                             "seasonal", "chance")
DAY = 86_400
HOUR = 3_600
START = 1_767_225_600          # 2026-01-01T00:00:00Z
SEGMENTS = ("enterprise", "mid_market", "smb", "solo")
MONTHLY_CHURN = 0.09           # the hazard of every profile: churn within 30 days ~ 9 %
ACTIONS = ("report_created", "message_sent", "file_uploaded", "dashboard_viewed")
FEATURES = ("reports", "exports", "alerts", "sso", "api")


@dataclass
class Customer:
    cid: str
    segment: str
    users: list[str]
    mrr: float
    signup_day: int
    pay_day: int
    cancel_day: int | None
    activity: float                         # chance that a user is active on a weekday
    season: tuple[int, int] | None = None   # low-season days [start, end)
    dormant_from: int | None = None
    failing_from: int | None = None         # payments fail from this day (payment_failures)
    pain_from: int | None = None            # support pain from this day
    decline: tuple[int, int] | None = None  # usage fades over [start, cancel_day)
    events: int = 0
    tickets: int = 0
    retry: int | None = None
    failures_left: int = 0
    extra: dict = field(default_factory=dict)


def _ts(second: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(second)))


def _plan(profile: str, n: int, days: int, rng: random.Random) -> list[Customer]:
    out = []
    daily = -math.log(1.0 - MONTHLY_CHURN) / 30.0
    for i in range(n):
        # A third sign up in the first days, the rest over the first 60 % of the period (the
        # stage's watermark moves at most a day per event: no back-dated history).
        signup = rng.randint(0, 3) if i < n // 3 else rng.randint(0, int(days * 0.6))
        pay = signup + rng.randint(1, 5)
        wait = rng.expovariate(daily)
        cancel = pay + 3 + int(wait)
        if cancel >= days:
            cancel = None
        segment = rng.choice(SEGMENTS)
        size = {"enterprise": 8, "mid_market": 5, "smb": 3, "solo": 1}[segment]
        users = [f"u{i}-{k}" for k in range(max(1, size + rng.randint(-1, 2)))]
        mrr = round({"enterprise": 3000, "mid_market": 800, "smb": 120, "solo": 30}[segment]
                    * rng.uniform(0.6, 1.6), 2)
        c = Customer(f"z{i:04d}", segment, users, mrr, signup, pay, cancel,
                     rng.uniform(0.35, 0.8))
        if profile in ("usage_decline", "seasonal") and cancel is not None:
            c.decline = (cancel - rng.randint(21, 35), cancel)
        if profile == "seasonal" and rng.random() < 0.5:
            start = rng.randint(20, max(21, days - 50))
            c.season = (start, start + rng.randint(35, 49))
        if profile == "payment_failures" and cancel is not None:
            c.failing_from = cancel - rng.randint(20, 45)
        if profile == "support_pain" and cancel is not None:
            c.pain_from = cancel - rng.randint(20, 35)
        if profile == "silent" and cancel is not None:
            dormant = cancel - rng.randint(21, 56)
            # cancelled at the first billing anniversary after 3 dormant weeks
            anniversary = pay + 30 * math.ceil((dormant + 21 - pay) / 30)
            c.dormant_from = dormant
            c.cancel_day = anniversary if anniversary < days else None
        out.append(c)
    return out


def _activity(c: Customer, day: int) -> float:
    """The chance a user is active today: the customer's normal, changed by its profile."""
    p = c.activity
    if c.season and c.season[0] <= day < c.season[1]:
        p *= 0.25
    if c.decline and c.decline[0] <= day:
        start, end = c.decline
        p *= max(0.1, 1.0 - 0.9 * (day - start) / max(1, end - start))
    if c.dormant_from is not None and day >= c.dormant_from:
        p = 0.0
    return p


def generate(profile: str, customers: int = 250, days: int = 150, seed: int = 1
             ) -> Iterator[tuple[str, dict]]:
    """The events of one profile, day by day, in non-decreasing event time."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; one of {PROFILES}")
    rng = random.Random(f"{profile}/{seed}")
    plan = _plan(profile, customers, days, rng)
    later: list[tuple[float, int, str, dict]] = []   # events of days to come (ticket closes)
    seq = 0
    for day in range(days):
        today: list[tuple[float, str, dict]] = []
        weekend = (day + 3) % 7 >= 5            # 2026-01-01 is a Thursday
        for c in plan:
            _customer_day(c, day, weekend, rng, today)
        end = START + (day + 1) * DAY
        for at, family, event in today:
            seq += 1
            heapq.heappush(later, (at, seq, family, event))
        while later and later[0][0] < end:
            _, _, family, event = heapq.heappop(later)
            yield family, event


def _emit(c: Customer, out: list, at: float, family: str, **fields: object) -> None:
    c.events += 1
    out.append((at, family, {"event_id": f"{c.cid}-{c.events}", "customer_id": c.cid,
                             "ts": _ts(at), **fields}))


def _customer_day(c: Customer, day: int, weekend: bool, rng: random.Random,
                  out: list) -> None:
    base = START + day * DAY
    if day < c.signup_day:
        return
    if day == c.signup_day:
        _emit(c, out, base + 8 * HOUR, "signup", segment=c.segment, plan="standard",
              seats=len(c.users), user_id=c.users[0])
    if c.cancel_day is not None and day > c.cancel_day:
        return
    paying = day >= c.pay_day
    at = base + 11 * HOUR + rng.randint(0, 3600)
    if day == c.pay_day:
        _emit(c, out, at, "billing", type="subscription_started", mrr=c.mrr,
              seats=len(c.users))
    if c.cancel_day == day:
        _emit(c, out, at + 60, "billing", type="subscription_cancelled", mrr=0.0)
        return
    if paying and day > c.pay_day and (day - c.pay_day) % 30 == 0:
        failing = c.failing_from is not None and day >= c.failing_from
        if failing or rng.random() < 0.02:
            _emit(c, out, at, "billing", type="payment_failed", amount=c.mrr)
            c.retry, c.failures_left = day + 3, (rng.randint(1, 3) if failing else 0)
        else:
            _emit(c, out, at, "billing", type="payment_succeeded", amount=c.mrr)
    elif paying and c.retry == day:
        if c.failures_left > 0:
            _emit(c, out, at, "billing", type="payment_failed", amount=c.mrr)
            c.failures_left -= 1
            c.retry = day + 3
        else:
            _emit(c, out, at, "billing", type="payment_succeeded", amount=c.mrr)
            c.retry = None
    _usage(c, day, weekend, rng, out, base)
    _support(c, day, weekend, rng, out, base)


def _usage(c: Customer, day: int, weekend: bool, rng: random.Random, out: list,
           base: float) -> None:
    p = _activity(c, day) * (0.25 if weekend else 1.0)
    for user in c.users:
        if rng.random() >= p:
            continue
        t = base + rng.uniform(7, 19) * HOUR
        _emit(c, out, t, "usage", user_id=user, action="login")
        for _ in range(1 + (rng.random() < 0.5)):
            t += rng.uniform(60, 900)
            _emit(c, out, t, "usage", user_id=user, action=rng.choice(ACTIONS))
        if rng.random() < 0.4:
            _emit(c, out, t + 120, "feature", user_id=user, feature=rng.choice(FEATURES))


def _support(c: Customer, day: int, weekend: bool, rng: random.Random, out: list,
             base: float) -> None:
    pain = c.pain_from is not None and day >= c.pain_from
    rate = (0.35 if pain else 0.02) * (0.3 if weekend else 1.0)
    if rng.random() >= rate:
        return
    c.tickets += 1
    ticket = f"{c.cid}-t{c.tickets}"
    priority = rng.choice(("high", "urgent", "high")) if pain else rng.choice(
        ("low", "normal", "normal"))
    t = base + rng.uniform(8, 18) * HOUR
    user = rng.choice(c.users)
    _emit(c, out, t, "support", type="ticket_opened", ticket_id=ticket, priority=priority,
          user_id=user)
    closed = t + rng.uniform(2, 30) * HOUR
    _emit(c, out, closed, "support", type="ticket_closed", ticket_id=ticket,
          priority=priority, user_id=user)
    if rng.random() < 0.5:
        score = rng.choice((1, 1, 2)) if pain else rng.choice((4, 5, 5))
        _emit(c, out, closed + HOUR, "support", type="csat", score=score, ticket_id=ticket,
              user_id=user)
