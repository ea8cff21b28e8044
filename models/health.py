"""Customer health score (METRICS.md, "Health score").

Pure domain math: stdlib only, no Faust/Kafka/Prometheus. Days are integer days since the
Unix epoch (UTC); times are float epoch seconds. Every window is taken relative to an explicit
as-of day D ("last 30 days" = D-29 … D), so re-evaluating the same state at a later day close
lets the score decay while the customer is idle.

Rounding: components, score and trend are published with 2 decimals (`ndigits`), and the grade
is taken from the *published* score, so a reader never sees "70.0, yellow". The score itself is
computed from the unrounded components.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COMPONENTS: tuple[str, ...] = (
    "usage_frequency",
    "feature_adoption",
    "support",
    "payment",
    "engagement",
)

DEFAULT_WEIGHTS: dict[str, float] = {
    "usage_frequency": 0.30,
    "feature_adoption": 0.25,
    "support": 0.20,
    "payment": 0.15,
    "engagement": 0.10,
}
DEFAULT_PRIORITY_WEIGHTS: dict[str, float] = {"low": 0.5, "normal": 1.0, "high": 2.0, "urgent": 4.0}
DEFAULT_GRADES: dict[str, float] = {"green": 70.0, "yellow": 40.0}


@dataclass(frozen=True)
class HealthParams:
    """The `[health]` settings plus the activity window the health windows share."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    target_active_days: float = 20.0
    ticket_tolerance: float = 8.0
    priority_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_PRIORITY_WEIGHTS)
    )
    grades: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_GRADES))
    stickiness_target: float = 0.5
    window_days: int = 30  # tickets and "last 30 days"
    payment_window_days: int = 90
    survey_window_days: int = 90
    history_days: int = 8  # scores of the closes of D-7 … D kept for trend_7d
    max_open_tickets: int = 100  # open-ticket ids kept; the oldest go first beyond this
    max_orphan_closes: int = 50  # closes seen before their open, kept to cancel that open


# ---- components (each 0–100, or None when it has no data) --------------------------------


def usage_frequency(active_days_30d: int, n: int = 30, target: float = 20.0) -> float:
    """100 · min(1, active_days ÷ (target · n ÷ 30)): the target shrinks for young customers.

    n is clamped to 1…30, so a customer on its signup day is judged on one day, not on zero.
    """
    n = max(1, min(30, n))
    scaled = target * n / 30.0
    if scaled <= 0:
        return 100.0
    return 100.0 * min(1.0, active_days_30d / scaled)


def feature_adoption(key_used: int, key_released: int) -> float | None:
    """Share of released key features used in the window; None when nothing is released yet."""
    if key_released <= 0:
        return None
    return 100.0 * min(1.0, key_used / key_released)


def support(weighted_tickets: float, tolerance: float = 8.0) -> float:
    """100 · max(0, 1 − W ÷ tolerance): full marks without tickets, 0 at `tolerance`."""
    if tolerance <= 0:
        return 100.0 if weighted_tickets <= 0 else 0.0
    return 100.0 * max(0.0, 1.0 - weighted_tickets / tolerance)


def payment(succeeded: int, failed: int) -> float | None:
    """Share of successful payments; None without payments (a trial has no payment history)."""
    total = succeeded + failed
    if total <= 0:
        return None
    return 100.0 * succeeded / total


def engagement(
    stickiness: float,
    mau: int | None = None,
    seats: int | None = None,
    nps: float | None = None,
    csat: float | None = None,
    stickiness_target: float = 0.5,
) -> float:
    """100 · mean of the engagement signals available; stickiness is always one of them.

    Signals: min(1, stickiness ÷ target); seat utilisation min(1, mau ÷ seats) when both are
    known; NPS ÷ 10; (CSAT − 1) ÷ 4. Callers pass only NPS/CSAT still valid (90 days).
    """
    signals = [
        min(1.0, stickiness / stickiness_target) if stickiness_target > 0 else 1.0
    ]
    if seats is not None and seats > 0 and mau is not None:
        signals.append(min(1.0, mau / seats))
    if nps is not None:
        signals.append(nps / 10.0)
    if csat is not None:
        signals.append((csat - 1.0) / 4.0)
    return 100.0 * sum(_clamp01(s) for s in signals) / len(signals)


def _clamp01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def score(
    components: Mapping[str, float | None], weights: Mapping[str, float] | None = None
) -> float | None:
    """Σ wᵢ·cᵢ ÷ Σ wᵢ over the non-null weighted components: missing data is left out,
    not scored 0. None when no weighted component has a value.
    """
    weights = DEFAULT_WEIGHTS if weights is None else weights
    num = den = 0.0
    for name, value in components.items():
        w = weights.get(name, 0.0)
        if value is None or w <= 0:
            continue
        num += w * value
        den += w
    if den <= 0:
        return None
    return num / den


def grade(score_: float | None, grades: Mapping[str, float] | None = None) -> str | None:
    """green ≥ grades.green, yellow ≥ grades.yellow, red below; None without a score."""
    if score_ is None:
        return None
    grades = DEFAULT_GRADES if grades is None else grades
    if score_ >= grades["green"]:
        return "green"
    if score_ >= grades["yellow"]:
        return "yellow"
    return "red"


def trend_7d(score_now: float | None, score_7d_ago: float | None) -> float | None:
    """score(D) − score at the close of D−7; None when either is missing (no invented trend)."""
    if score_now is None or score_7d_ago is None:
        return None
    return score_now - score_7d_ago


def weakest_components(
    components: Mapping[str, float | None],
    n: int = 2,
    weights: Mapping[str, float] | None = None,
) -> list[str]:
    """Names of the components that cost the score the most points, worst first.

    Cost is wᵢ·(100 − cᵢ) (the points lost from a perfect score), so a low-weight component
    at 0 can rank below a heavy one at 50; with weights=None the raw value ranks. Null and
    perfect components never appear: they did not pull the score down. Ties go by name so
    that alert texts are stable.
    """
    costs: list[tuple[float, str]] = []
    for name, value in components.items():
        if value is None or value >= 100.0:
            continue
        w = 1.0 if weights is None else weights.get(name, 0.0)
        if w <= 0:
            continue
        costs.append((w * (100.0 - value), name))
    costs.sort(key=lambda c: (-c[0], c[1]))
    return [name for _, name in costs[: max(0, n)]]


def _round(x: float | None, ndigits: int) -> float | None:
    return None if x is None else round(x, ndigits)


def components(
    *,
    active_days_30d: int,
    n: int,
    stickiness: float,
    key_used: int,
    key_released: int,
    weighted_tickets: float,
    payments_succeeded: int,
    payments_failed: int,
    mau: int | None = None,
    seats: int | None = None,
    nps: float | None = None,
    csat: float | None = None,
    params: HealthParams | None = None,
) -> dict[str, float | None]:
    """All five components, unrounded, from already-windowed inputs."""
    p = params or HealthParams()
    return {
        "usage_frequency": usage_frequency(active_days_30d, n, p.target_active_days),
        "feature_adoption": feature_adoption(key_used, key_released),
        "support": support(weighted_tickets, p.ticket_tolerance),
        "payment": payment(payments_succeeded, payments_failed),
        "engagement": engagement(stickiness, mau, seats, nps, csat, p.stickiness_target),
    }


def health_record(
    comps: Mapping[str, float | None],
    params: HealthParams | None = None,
    score_7d_ago: float | None = None,
    ndigits: int = 2,
) -> dict[str, Any]:
    """The CONTRACT's `health` object: score, grade (of the published score), trend_7d and
    components, rounded to `ndigits`, null for components without data."""
    p = params or HealthParams()
    s = _round(score(comps, p.weights), ndigits)
    return {
        "score": s,
        "grade": grade(s, p.grades),
        "trend_7d": _round(trend_7d(s, score_7d_ago), ndigits),
        "components": {name: _round(comps.get(name), ndigits) for name in COMPONENTS},
    }


# ---- per-customer state ------------------------------------------------------------------


@dataclass
class SupportAndPayments:
    """What the health score needs beyond activity: tickets, payments, surveys, score history.

    Bounded: day buckets only inside their windows (30 days of tickets, 90 of payments, 8 of
    scores) once `prune` runs at day close; at most `max_open_tickets` open tickets and
    `max_orphan_closes` early closes; one NPS and one CSAT answer. Windows are always filtered
    by the as-of day too, so results do not depend on when pruning ran.
    """

    tickets: dict[int, dict[str, int]] = field(default_factory=dict)  # day -> priority -> n
    open: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> (priority, ts)
    orphan_closes: dict[str, float] = field(default_factory=dict)  # id -> close ts
    payments: dict[int, list[int]] = field(default_factory=dict)  # day -> [succeeded, failed]
    nps: tuple[float, float] | None = None  # (score, ts) of the latest answer by event time
    csat: tuple[float, float] | None = None
    scores: dict[int, float] = field(default_factory=dict)  # closed day D -> score at its close
    params: HealthParams = field(default_factory=HealthParams, compare=False, repr=False)

    # ---- events -------------------------------------------------------------------------

    def on_ticket_opened(self, ticket_id: str, ts: float, priority: str = "normal") -> None:
        """Count the ticket on its day and track it as open (unless its close came first).

        A repeated open of a ticket that is still open is the same ticket and is not counted
        twice; an open after its close (reopen) is counted again.
        """
        if ticket_id in self.open:
            return
        day = int(ts // 86400)
        per_day = self.tickets.setdefault(day, {})
        per_day[priority] = per_day.get(priority, 0) + 1
        closed_at = self.orphan_closes.get(ticket_id)
        if closed_at is not None and closed_at >= ts:
            del self.orphan_closes[ticket_id]  # closed before we heard of it: not open
            return
        self.open[ticket_id] = (priority, ts)
        if len(self.open) > self.params.max_open_tickets:
            oldest = min(self.open, key=lambda k: self.open[k][1])
            del self.open[oldest]

    def on_ticket_closed(self, ticket_id: str, ts: float) -> None:
        """Close an open ticket; a close that arrives before its open is remembered."""
        if self.open.pop(ticket_id, None) is not None:
            return
        self.orphan_closes[ticket_id] = ts
        if len(self.orphan_closes) > self.params.max_orphan_closes:
            oldest = min(self.orphan_closes, key=self.orphan_closes.__getitem__)
            del self.orphan_closes[oldest]

    def on_payment(self, ts: float, ok: bool) -> None:
        """Count a `payment_succeeded` (ok) or `payment_failed` on its day."""
        bucket = self.payments.setdefault(int(ts // 86400), [0, 0])
        bucket[0 if ok else 1] += 1

    def on_nps(self, score_: float, ts: float) -> None:
        """Keep the latest answer by event time: a late older answer never overrides."""
        if self.nps is None or ts >= self.nps[1]:
            self.nps = (float(score_), ts)

    def on_csat(self, score_: float, ts: float) -> None:
        """Keep the latest answer by event time: a late older answer never overrides."""
        if self.csat is None or ts >= self.csat[1]:
            self.csat = (float(score_), ts)

    # ---- windows ------------------------------------------------------------------------

    def tickets_30d(self, as_of_day: int) -> tuple[int, float]:
        """(tickets opened, priority-weighted tickets) in D-29 … D."""
        pw = self.params.priority_weights
        default = pw.get("normal", 1.0)
        first = as_of_day - self.params.window_days + 1
        count, weighted = 0, 0.0
        for day, per in self.tickets.items():
            if first <= day <= as_of_day:
                for prio, k in per.items():
                    count += k
                    weighted += k * pw.get(prio, default)
        return count, weighted

    def payments_90d(self, as_of_day: int) -> tuple[int, int]:
        """(succeeded, failed) payments in D-89 … D."""
        first = as_of_day - self.params.payment_window_days + 1
        ok = failed = 0
        for day, (s, f) in self.payments.items():
            if first <= day <= as_of_day:
                ok += s
                failed += f
        return ok, failed

    def open_tickets(self, priority: str | None = None) -> int:
        """Open tickets now, optionally of one priority (churn feature "open urgent tickets")."""
        if priority is None:
            return len(self.open)
        return sum(1 for p, _ in self.open.values() if p == priority)

    def _survey(self, answer: tuple[float, float] | None, as_of_day: int) -> float | None:
        # Valid when answered on D-89 or later. Only the latest answer is kept, so one from
        # after D (at most the ingest skew ahead) is used rather than falling back to none.
        if answer is None:
            return None
        if int(answer[1] // 86400) < as_of_day - self.params.survey_window_days + 1:
            return None
        return answer[0]

    def nps_90d(self, as_of_day: int) -> float | None:
        """Latest NPS if answered within the survey window, else None."""
        return self._survey(self.nps, as_of_day)

    def csat_90d(self, as_of_day: int) -> float | None:
        """Latest CSAT if answered within the survey window, else None."""
        return self._survey(self.csat, as_of_day)

    # ---- score ---------------------------------------------------------------------------

    def score_on(self, day: int) -> float | None:
        """Published score at the close of day `day` (over D-29 … D), if it was kept."""
        return self.scores.get(day)

    def record_score(self, day: int, score_: float | None) -> None:
        """Remember the score of the close of `day` for later trends (a re-close replaces it)."""
        if score_ is not None:
            self.scores[day] = score_

    def evaluate(
        self,
        as_of_day: int,
        *,
        active_days_30d: int,
        n: int,
        stickiness: float,
        mau: int,
        key_used: int,
        key_released: int,
        seats: int | None = None,
        remember: bool = True,
        ndigits: int = 2,
    ) -> dict[str, Any]:
        """The `health` record over the days ending with D, activity figures supplied by the
        caller.

        trend_7d subtracts the score kept for the close of D-7 (over D-36 … D-7), so a close
        of D compares two closes exactly 7 days apart. Pass `remember` only when evaluating
        the close of D (the record stamped D+1 00:00): its score is kept for D, and an in-day
        evaluation must not replace it with a score of a partial day.
        """
        _, weighted = self.tickets_30d(as_of_day)
        ok, failed = self.payments_90d(as_of_day)
        comps = components(
            active_days_30d=active_days_30d,
            n=n,
            stickiness=stickiness,
            key_used=key_used,
            key_released=key_released,
            weighted_tickets=weighted,
            payments_succeeded=ok,
            payments_failed=failed,
            mau=mau,
            seats=seats,
            nps=self.nps_90d(as_of_day),
            csat=self.csat_90d(as_of_day),
            params=self.params,
        )
        record = health_record(comps, self.params, self.score_on(as_of_day - 7), ndigits)
        if remember:
            self.record_score(as_of_day, record["score"])
        return record

    def prune(self, as_of_day: int) -> None:
        """Drop what has left every window ending with D (call at the close of D, before its
        evaluation; D only moves forward). Keeps the scores of the closes of D-7 … D."""
        p = self.params
        first_ticket = as_of_day - p.window_days + 1
        self.tickets = {d: v for d, v in self.tickets.items() if d >= first_ticket}
        close_horizon = first_ticket * 86400.0
        self.orphan_closes = {
            k: t for k, t in self.orphan_closes.items() if t >= close_horizon
        }
        first_pay = as_of_day - p.payment_window_days + 1
        self.payments = {d: v for d, v in self.payments.items() if d >= first_pay}
        first_survey = as_of_day - p.survey_window_days + 1
        if self.nps is not None and int(self.nps[1] // 86400) < first_survey:
            self.nps = None
        if self.csat is not None and int(self.csat[1] // 86400) < first_survey:
            self.csat = None
        first_score = as_of_day - p.history_days + 1
        self.scores = {d: s for d, s in self.scores.items() if d >= first_score}

    # ---- persistence --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-friendly form: short keys, empty parts omitted.

        t [[day, {priority: n}]], o [[ticket_id, priority, ts]], x [[ticket_id, close_ts]],
        p [[day, succeeded, failed]], n [score, ts], c [score, ts], h [[day, score]].
        """
        out: dict[str, Any] = {}
        if self.tickets:
            out["t"] = [[d, dict(v)] for d, v in sorted(self.tickets.items())]
        if self.open:
            out["o"] = [[k, p, t] for k, (p, t) in self.open.items()]
        if self.orphan_closes:
            out["x"] = [[k, t] for k, t in self.orphan_closes.items()]
        if self.payments:
            out["p"] = [[d, s, f] for d, (s, f) in sorted(self.payments.items())]
        if self.nps is not None:
            out["n"] = list(self.nps)
        if self.csat is not None:
            out["c"] = list(self.csat)
        if self.scores:
            out["h"] = [[d, s] for d, s in sorted(self.scores.items())]
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], params: HealthParams | None = None
    ) -> SupportAndPayments:
        """Inverse of `to_dict`; params are configuration, not state, so they come separately."""
        n = data.get("n")
        c = data.get("c")
        return cls(
            tickets={int(d): {str(p): int(k) for p, k in v.items()} for d, v in data.get("t", ())},
            open={str(k): (str(p), float(t)) for k, p, t in data.get("o", ())},
            orphan_closes={str(k): float(t) for k, t in data.get("x", ())},
            payments={int(d): [int(s), int(f)] for d, s, f in data.get("p", ())},
            nps=None if n is None else (float(n[0]), float(n[1])),
            csat=None if c is None else (float(c[0]), float(c[1])),
            scores={int(d): float(s) for d, s in data.get("h", ())},
            params=params or HealthParams(),
        )
