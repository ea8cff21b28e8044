"""How much an alert rule is worth to the people it pages: precision, lead time, recall, flaps.

Pure: the stdlib only. Times are seconds since the Unix epoch. The input is what the rule did
(``firing`` and ``resolved`` transitions per customer) and what happened (when each customer
churned); ``alert_quality`` compares the two over a horizon (30 days for churn).

Definitions (docs/churn.md, "Alert quality"):

- A firing is *judged* when its outcome is known: the customer churned within ``horizon`` after
  it, or ``horizon`` of observed time followed it without a churn. A firing at or after the
  customer's churn is not a prediction and is left out.
- Firing precision: the share of judged firings followed by a churn within the horizon.
- Customer precision: the share of customers with a judged firing for whom one of those
  firings was followed by a churn within the horizon.
- Lead time: for each churner caught (a firing within the horizon before its churn), the days
  from the earliest such firing to the churn; the median over churners.
- Recall: the share of churners (churned inside the observed span) that were caught.
- Flap: a firing that follows a resolution of the same rule for the same customer
  (firing -> resolved -> firing). Reported as the mean per flagged customer per quarter of
  observed time, and as the most flaps of any one customer within any quarter.
"""
from __future__ import annotations

import bisect
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DAY_SECONDS = 86_400.0
QUARTER_DAYS = 365.25 / 4


@dataclass(frozen=True)
class Episode:
    """One firing of a rule for one customer, until it resolved (None: still firing)."""
    fired_at: float
    resolved_at: float | None = None


def episodes(transitions: Iterable[tuple[str, str, float]]) -> dict[str, list[Episode]]:
    """``(customer, status, as_of)`` transitions of one rule, in time order, into episodes.

    A ``resolved`` without an open firing (the firing came before the observed span) and a
    second ``firing`` while one is open (it cannot happen from one alert book) are ignored.
    """
    out: dict[str, list[Episode]] = {}
    open_at: dict[str, float] = {}
    for customer, status, at in transitions:
        if status == "firing":
            open_at.setdefault(customer, at)
        elif status == "resolved" and customer in open_at:
            out.setdefault(customer, []).append(Episode(open_at.pop(customer), at))
    for customer, at in open_at.items():
        out.setdefault(customer, []).append(Episode(at))
    for eps in out.values():
        eps.sort(key=lambda e: e.fired_at)
    return out


@dataclass(frozen=True)
class AlertQuality:
    customers: int                   # customers observed
    flagged: int                     # customers with at least one firing before their churn
    firings: int                     # firings before the customer's churn
    judged: int                      # of those, firings whose outcome is known
    precision: float | None          # firing precision
    customer_precision: float | None
    churners: int                    # customers who churned inside the observed span
    caught: int                      # churners with a firing within the horizon before churn
    recall: float | None
    lead_days_median: float | None
    flaps: int
    flaps_per_quarter: float | None  # per flagged customer per quarter of observed time
    max_flaps_in_quarter: int        # the most flaps of one customer within any quarter

    @property
    def flagged_share(self) -> float | None:
        return self.flagged / self.customers if self.customers else None


def _ratio(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _max_in_window(times: list[float], width: float) -> int:
    """The most of ``times`` (sorted) inside any half-open window [t, t + width)."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + width, lo=i) - i)
    return best


def _judge(eps: list[Episode], churn: float | None, end: float, horizon: float
           ) -> tuple[int, list[float]]:
    """How many of one customer's firings are judged, and the times of those that were hits."""
    hits: list[float] = []
    judged = 0
    for e in eps:
        if churn is not None and churn - e.fired_at <= horizon:
            hits.append(e.fired_at)
            judged += 1
        elif e.fired_at + horizon <= end:
            judged += 1
    return judged, hits


def alert_quality(by_customer: Mapping[str, list[Episode]], churned_at: Mapping[str, float],
                  observed: Mapping[str, tuple[float, float]], horizon_days: float = 30.0
                  ) -> AlertQuality:
    """Precision, recall, lead time and flaps of one rule.

    ``observed``: every customer that could have been flagged, with the span ``(start, end)``
    of time it was watched (``end`` is the end of the data, not the churn). ``churned_at``: the
    churn time of those who churned. ``by_customer``: the rule's episodes (``episodes``).
    """
    horizon = horizon_days * DAY_SECONDS
    quarter = QUARTER_DAYS * DAY_SECONDS
    firings = judged = hits = flagged = judged_customers = hit_customers = flaps = 0
    leads: list[float] = []
    max_flaps = 0
    flagged_seconds = 0.0
    for customer, (start, end) in observed.items():
        churn = churned_at.get(customer)
        eps = [e for e in by_customer.get(customer, ()) if churn is None or e.fired_at < churn]
        if not eps:
            continue
        flagged += 1
        flagged_seconds += (end if churn is None else min(end, churn)) - start
        firings += len(eps)
        judged_here, hit_times = _judge(eps, churn, end, horizon)
        judged += judged_here
        hits += len(hit_times)
        if judged_here:
            judged_customers += 1
            hit_customers += bool(hit_times)
        if hit_times and churn is not None:
            leads.append((churn - min(hit_times)) / DAY_SECONDS)
        refired = [eps[i].fired_at for i in range(1, len(eps))
                   if eps[i - 1].resolved_at is not None]
        flaps += len(refired)
        max_flaps = max(max_flaps, _max_in_window(refired, quarter))
    churners = sum(1 for c, at in churned_at.items()
                   if c in observed and observed[c][0] <= at <= observed[c][1])
    return AlertQuality(
        customers=len(observed), flagged=flagged, firings=firings, judged=judged,
        precision=_ratio(hits, judged),
        customer_precision=_ratio(hit_customers, judged_customers),
        churners=churners, caught=len(leads), recall=_ratio(len(leads), churners),
        lead_days_median=statistics.median(leads) if leads else None, flaps=flaps,
        flaps_per_quarter=(flaps / (flagged_seconds / quarter)
                           if flagged_seconds > 0 else None),
        max_flaps_in_quarter=max_flaps)


# --------------------------------------------------------------------------------------------
# The live figures: firings judged one labelled snapshot at a time (the churn learner)
# --------------------------------------------------------------------------------------------

# Below this many judged firings a rule's precision is not published (null, no gauge): a
# ratio of a handful of firings says nothing and would swing at every label.
MIN_JUDGED_FIRINGS = 20


def histogram_median(counts: Mapping[int, int]) -> float | None:
    """The median of the values counted in ``counts`` (value -> how many), as
    ``statistics.median`` would give it over the values spelt out; None when empty."""
    n = sum(counts.values())
    if n <= 0:
        return None
    lower_rank, upper_rank = (n - 1) // 2, n // 2
    seen = 0
    lower: int | None = None
    for value in sorted(counts):
        seen += counts[value]
        if lower is None and seen > lower_rank:
            lower = value
        if seen > upper_rank:
            assert lower is not None
            return (lower + value) / 2
    raise AssertionError("unreachable: the ranks are below the total")


@dataclass
class RuleTally:
    """One rule's firings judged on the churn labels, as they come (docs/churn.md).

    ``judged``: firings whose snapshot was labelled; ``hits``: those labelled churn (within the
    horizon); ``leads``: lead days (churn day - firing day) -> churners caught, counting each
    churner once, at its earliest firing within the horizon. Lead days are whole days below the
    horizon, so the histogram is small and its median exact (no sample needed).
    """
    judged: int = 0
    hits: int = 0
    leads: dict[int, int] = field(default_factory=dict)

    def judge(self, churned: bool) -> None:
        self.judged += 1
        self.hits += int(churned)

    def caught(self, lead_days: int) -> None:
        """A churner whose earliest firing within the horizon came ``lead_days`` before."""
        self.leads[lead_days] = self.leads.get(lead_days, 0) + 1

    @property
    def churners_caught(self) -> int:
        return sum(self.leads.values())

    def precision(self, min_judged: int = MIN_JUDGED_FIRINGS) -> float | None:
        """hits / judged, or None below ``min_judged`` judged firings."""
        return self.hits / self.judged if self.judged and self.judged >= min_judged else None

    def median_lead_days(self) -> float | None:
        return histogram_median(self.leads)

    def to_record(self, min_judged: int = MIN_JUDGED_FIRINGS) -> dict[str, float | int | None]:
        """The rule's entry in ``churn_model.alerts``."""
        p = self.precision(min_judged)
        return {"firings": self.judged, "hits": self.hits,
                "precision": None if p is None else round(p, 4),
                "churners_caught": self.churners_caught,
                "median_lead_days": self.median_lead_days()}

    def to_state(self) -> list[Any]:
        return [self.judged, self.hits, sorted([d, n] for d, n in self.leads.items())]

    @classmethod
    def from_state(cls, state: Sequence[Any]) -> RuleTally:
        judged, hits, leads = state
        return cls(int(judged), int(hits), {int(d): int(n) for d, n in leads})
