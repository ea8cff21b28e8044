"""The business stage: per scope (`all`, `segment:<s>`) and calendar month, the revenue bridge,
NRR/GRR, CLV and customer aggregates of `vitals.business` (METRICS.md "Revenue").

It is fed by the customer stage through an internal topic keyed by scope, with two kinds of
messages:

- `mv`: one MRR movement of one customer, carrying its event_id, so a movement resent after a
  crash is recognised and booked once (MonthBook keeps the ids);
- `part`: for one customer partition, its watermark and a summary of its customers (health,
  risk, time to value, success, CAC), replacing the previous summary of that partition. The
  summaries do not depend on which worker owns which partition, so neither do the records.

Kept free of Faust; `streams/agents.py` feeds it from a stream and `streams/delivery.py` writes
its flushes to a changelog table keyed by scope.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.revenue import (
    MOVEMENT_KINDS,
    MonthBook,
    Movement,
    clv,
    clv_to_cac,
    month_end,
    month_of,
    monthly_churn_rate,
    next_month,
)
from streams.alerts import AlertBook, alert_record
from streams.settings import Settings
from streams.time import rfc3339

TTV_BIN_DAYS = 0.1  # ttv_median_days is the median of 0.1-day bins (within ±0.05 day)
OPEN_MONTHS_KEPT = 3
PUBLISHED_RATIOS = ("nrr", "grr", "expansion_rate", "logo_retention")
MONTH_SUMMARIES_KEPT = OPEN_MONTHS_KEPT + 1


def empty_summary() -> dict[str, Any]:
    return {"n": 0, "health_n": 0, "health_sum": 0.0, "at_risk": 0, "ttv": {},
            "success": 0, "eligible": 0, "cac_n": 0, "cac_sum": 0.0}


# Sums kept by adding and taking away customers' shares are rounded at every step: float
# rounding errors would otherwise depend on the order of the changes (a restart changes it),
# and a mean of scores of 2 decimals at a rounding boundary would differ in its last digit.
SUM_DIGITS = 6


def add_to_summary(summary: dict[str, Any], e: Any, sign: int) -> None:
    """Add (sign 1) or take away (sign -1) one customer's evaluation from a summary."""
    summary["n"] += sign
    if e.score is not None:
        summary["health_n"] += sign
        summary["health_sum"] = round(summary["health_sum"] + sign * e.score, SUM_DIGITS)
    if e.grade == "red":
        summary["at_risk"] += sign
    if e.ttv_days is not None:
        b = str(int(e.ttv_days / TTV_BIN_DAYS))
        left = summary["ttv"].get(b, 0) + sign
        if left:
            summary["ttv"][b] = left
        else:
            summary["ttv"].pop(b, None)
    if e.eligible:
        summary["eligible"] += sign
        if e.succeeded:
            summary["success"] += sign
    if e.cac is not None:
        summary["cac_n"] += sign
        summary["cac_sum"] = round(summary["cac_sum"] + sign * e.cac, SUM_DIGITS)


def merge_summaries(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out = empty_summary()
    for s in parts:
        for key in ("n", "health_n", "health_sum", "at_risk", "success", "eligible",
                    "cac_n", "cac_sum"):
            out[key] += s.get(key, 0)
        for key in ("health_sum", "cac_sum"):
            out[key] = round(out[key], SUM_DIGITS)
        for b, n in s.get("ttv", {}).items():
            out["ttv"][b] = out["ttv"].get(b, 0) + n
    return out


def ttv_median(hist: dict[str, int]) -> float | None:
    total = sum(hist.values())
    if total == 0:
        return None
    bins = sorted((int(b), n) for b, n in hist.items())
    seen = 0
    lower = upper = None
    for b, n in bins:
        if lower is None and seen + n >= (total + 1) // 2:
            lower = b
        if seen + n >= total // 2 + 1:
            upper = b
            break
        seen += n
    assert lower is not None and upper is not None
    return round((lower + upper) / 2 * TTV_BIN_DAYS + TTV_BIN_DAYS / 2, 4)


@dataclass
class ScopeState:
    """Everything about one scope; one changelog record."""
    scope: str
    books: dict[str, MonthBook] = field(default_factory=dict)         # open months
    closed: dict[str, dict[str, Any]] = field(default_factory=dict)   # final revenue records
    samples: dict[str, list[int]] = field(default_factory=dict)       # month -> [churned, start]
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)    # partition -> {wm, sum}
    alerts: AlertBook = field(default_factory=AlertBook)
    final: list[str] = field(default_factory=list)    # open months already published as final
    # month -> partition -> summary at the month's end (customer aggregates of its records)
    month_parts: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "books": [b.to_dict() for b in self.books.values()],
                "closed": self.closed, "samples": self.samples, "parts": self.parts,
                "alerts": self.alerts.to_dict(), "final": self.final,
                "month_parts": self.month_parts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScopeState:
        return cls(data["scope"], {b["month"]: MonthBook.from_dict(b) for b in data["books"]},
                   data.get("closed", {}), data.get("samples", {}), data.get("parts", {}),
                   AlertBook(data.get("alerts")), list(data.get("final", ())),
                   data.get("month_parts", {}))


def encode_scope(state: ScopeState) -> bytes:
    return orjson.dumps(state.to_dict())


def decode_scope(raw: bytes) -> ScopeState:
    return ScopeState.from_dict(orjson.loads(raw))


@dataclass
class StageFlush:
    """What a keyed aggregation stage (business, features) hands to the transport."""
    changelog: list[tuple[str, Any]] = field(default_factory=list)     # (key, state)
    records: list[tuple[str, bytes]] = field(default_factory=list)
    alerts: list[tuple[str, bytes]] = field(default_factory=list)


class BusinessAggregator:
    def __init__(self, settings: Settings, store: Any) -> None:
        self.settings = settings
        self.store = store
        self.lateness = settings.time.lateness_days * 86400.0
        self.partitions = settings.app.partitions
        self.live: dict[str, ScopeState] = {}
        self.dirty: dict[str, set[str]] = {}      # scope -> months to publish
        self.rules = settings.alerts.rules
        self.scope_rules = list(settings.alerts.business_rules)
        # Progressive validation of the churn model, for scope all (set by the app).
        self.churn_model: Callable[[], dict[str, Any] | None] = lambda: None
        # Scopes whose messages this worker consumed since it was last revoked: the gauges
        # export these only (a store may also hold standby or handed-over scopes). After a
        # rebalance every customer partition reports to every scope, so owners show up at once.
        self.owned: set[str] = set()
        self.alert_counts: dict[tuple[str, str], int] = {}   # (rule, status) -> transitions

    # -- feeding ---------------------------------------------------------------------------

    def apply(self, messages: Iterable[dict[str, Any]]) -> None:
        for msg in messages:
            self.owned.add(msg["scope"])
            state = self._load(msg["scope"])
            kind = msg["t"]
            if kind == "mv":
                self._movement(state, Movement.from_dict(msg["mv"]))
            elif kind == "me":
                self._month_end(state, str(msg["p"]), msg["month"], msg["sum"])
            else:
                self._part(state, str(msg["p"]), msg["wm"], msg["sum"])

    def _load(self, scope: str) -> ScopeState:
        state = self.live.get(scope)
        if state is None:
            state = self.store.get(scope) or ScopeState(scope)
            self.live[scope] = state
        return state

    def _months(self, state: ScopeState, upto: str) -> None:
        """Open books up to `upto`, walking the calendar (a month with no movement still has
        a start, an end and its customers)."""
        if not state.books:
            state.books[upto] = MonthBook(upto)
            return
        last = max(state.books)
        while last < upto:
            book = state.books[last].next_month()
            state.books[book.month] = book
            last = book.month
            self._touch(state, last)

    def _movement(self, state: ScopeState, mv: Movement) -> None:
        if mv.month in state.closed or (state.closed and mv.month < min(state.closed)):
            # A correction to a month already closed: reopen is not possible (its books are
            # gone); carry it into the open months so their balances stay right.
            for month, book in state.books.items():
                if book.carry(mv):
                    self._touch(state, month)
            return
        if state.books and mv.month < min(state.books):
            # The first movements can arrive after a partition's clock opened a later month:
            # nothing was booked before, so the earlier months open with the same balance.
            first = state.books[min(state.books)]
            month = mv.month
            while month < first.month:
                state.books[month] = first.opening_like(month)
                self._touch(state, month)
                month = next_month(month)
        self._months(state, mv.month)
        if state.books[mv.month].apply(mv):
            self._touch(state, mv.month)
            for month in sorted(state.books):
                if month > mv.month and state.books[month].carry(mv):
                    self._touch(state, month)

    def _part(self, state: ScopeState, partition: str, wm: float | None,
              summary: dict[str, Any]) -> None:
        old = state.parts.get(partition)
        if old is not None and wm is not None and old.get("wm") is not None and wm < old["wm"]:
            return  # an older report resent after a restart
        before = self.as_of(state)
        state.parts[partition] = {"wm": wm, "sum": summary}
        current = self.as_of(state)
        if current is not None and state.books:  # months start with a scope's first movement
            self._months(state, month_of(current))
            self._touch(state, max(state.books))
            for month in state.books:
                end = month_end(month)
                # Published again when its `as_of` (capped at its end) moved: touching only
                # the latest month left an earlier one's last record as of whichever report
                # came before the next month opened (make chaos: 2026-02-19 against 03-01).
                moved = current != before and (before is None or end > before)
                if month not in state.final and current >= end + self.lateness:
                    state.final.append(month)  # becomes final: published once more
                    moved = True
                if moved:
                    self._touch(state, month)

    def _month_end(self, state: ScopeState, partition: str, month: str,
                   summary: dict[str, Any]) -> None:
        parts = state.month_parts.setdefault(month, {})
        if parts.get(partition) != summary:
            parts[partition] = summary
            if month in state.books or month in state.closed:
                self._touch(state, month)
        for old in sorted(state.month_parts)[:-MONTH_SUMMARIES_KEPT]:
            del state.month_parts[old]

    def summary(self, state: ScopeState, month: str) -> dict[str, Any]:
        """The customer aggregates of a month's record: as of the month's end once every
        partition has closed it, else the partitions' latest day closes."""
        ended = state.month_parts.get(month, {})
        if len(ended) >= self.partitions:
            return merge_summaries(ended.values())
        return merge_summaries(p["sum"] for p in state.parts.values())

    def _touch(self, state: ScopeState, month: str) -> None:
        self.dirty.setdefault(state.scope, set()).add(month)

    # -- figures ---------------------------------------------------------------------------

    def as_of(self, state: ScopeState) -> float | None:
        """The oldest watermark of the customer partitions; None until every one reported.

        A partition that has not reported yet may still hold movements of any month: on a
        replay one partition's backlog can be read far ahead of another's, and months must not
        be opened, closed or called final on the fast partition's word alone.
        """
        marks = [p["wm"] for p in state.parts.values() if p.get("wm") is not None]
        if len(marks) < self.partitions:
            return None
        return min(marks)

    def churn_rate(self, state: ScopeState, before: str) -> float:
        """Mean monthly logo churn over the complete months before `before`, floored."""
        samples = dict(state.samples)
        for month, book in state.books.items():
            samples[month] = list(book.churn_sample())
        history = [tuple(v) for m, v in sorted(samples.items()) if m < before]
        r = self.settings.revenue
        return monthly_churn_rate(history, r.churn_rate_months, r.min_churn_rate)  # type: ignore[arg-type]

    def record(self, state: ScopeState, month: str) -> dict[str, Any]:
        as_of = self.as_of(state)
        final = as_of is not None and as_of >= month_end(month) + self.lateness
        revenue = self._revenue(state, month)
        summary = self.summary(state, month)
        r = self.settings.revenue
        c = self.churn_rate(state, month)
        scope_clv = clv(revenue["arpa"], r.gross_margin, c)
        mean_cac = summary["cac_sum"] / summary["cac_n"] if summary["cac_n"] else None
        return {
            "scope": state.scope, "period": month,
            "as_of": None if as_of is None else rfc3339(min(as_of, month_end(month))),
            "final": final, **revenue,
            "clv": scope_clv,
            "clv_to_cac": None if scope_clv is None else _round(clv_to_cac(scope_clv, mean_cac)),
            "churn_rate": round(c, 4),
            "avg_health": (round(summary["health_sum"] / summary["health_n"], 2)
                           if summary["health_n"] else None),
            "at_risk_customers": summary["at_risk"],
            "ttv_median_days": ttv_median(summary["ttv"]),
            "success_rate_90d": (round(summary["success"] / summary["eligible"], 4)
                                 if summary["eligible"] else None),
            "churn_model": self.churn_model() if state.scope == "all" else None,
        }

    def on_model(self) -> None:
        """A new churn model version: re-emit the current month of scope all (owner only)."""
        if "all" not in self.live and self.store.get("all") is None:
            return
        state = self._load("all")
        if state.books:
            self.dirty.setdefault("all", set()).add(max(state.books))

    # -- flushing --------------------------------------------------------------------------

    def flush(self) -> StageFlush:
        out = StageFlush()
        for scope, months in self.dirty.items():
            state = self.live[scope]
            for month in sorted(months):
                record = self.record(state, month)
                out.records.append((f"{scope}|{month}", orjson.dumps(record)))
                if record["final"] and self.scope_rules:
                    self._alerts(state, record, out)  # monthly figures: judged once final
            self._close_months(state)
        for scope, state in self.live.items():
            self.store[scope] = state
            out.changelog.append((scope, state))
        self.dirty = {}
        self.live = {}
        return out

    def revoke(self, scopes: set[str]) -> None:
        """Unflushed messages of these scopes were not acknowledged: their new owner replays
        them (movements are deduplicated by event id, summaries replace each other)."""
        for scope in scopes:
            self.owned.discard(scope)
            self.live.pop(scope, None)
            self.dirty.pop(scope, None)

    def _close_months(self, state: ScopeState) -> None:
        """Final months leave the open books: their record and churn sample stay."""
        as_of = self.as_of(state)
        if as_of is None:
            return
        # The last few months stay open even when final: a late correction re-emits them.
        for month in sorted(state.books)[:-OPEN_MONTHS_KEPT]:
            if as_of >= month_end(month) + self.lateness:
                book = state.books.pop(month)
                if month in state.final:
                    state.final.remove(month)
                state.samples[month] = list(book.churn_sample())
                state.closed[month] = book.to_record()

    def _alerts(self, state: ScopeState, record: dict[str, Any], out: StageFlush) -> None:
        as_of = self.as_of(state) or 0.0
        figures = {"business": record}
        segment = state.scope.split(":", 1)[1] if ":" in state.scope else None
        for t in state.alerts.evaluate(self.rules, self.scope_rules, figures, segment, as_of):
            subject = {"scope": state.scope, "period": record["period"]}
            alert = alert_record(t.rule, self.rules[t.rule], t, subject, state.scope)
            out.alerts.append((alert["alert_id"], orjson.dumps(alert)))
            count_alert(self.alert_counts, t.rule, t.status)

    # -- gauges ----------------------------------------------------------------------------

    def last_final_month(self, state: ScopeState) -> str | None:
        """The latest month of a scope whose figures are final (closed, or open but past its
        end plus the lateness): what the business alert rules judge."""
        as_of = self.as_of(state)
        finals = list(state.closed)
        if as_of is not None:
            finals += [m for m in state.books if as_of >= month_end(m) + self.lateness]
        return max(finals) if finals else None

    def _revenue(self, state: ScopeState, month: str) -> dict[str, Any]:
        """A month's revenue figures as published: ratios to 4 decimals, money unrounded."""
        revenue = (state.books[month].to_record() if month in state.books
                   else dict(state.closed[month]))
        for name in PUBLISHED_RATIOS:
            revenue[name] = _round(revenue.get(name))
        return revenue

    def _model_gauges(self) -> list[Any]:
        """The churn model's candidates, from the owner of scope all (as its record is)."""
        from streams.exporters.metrics import gauge

        model = self.churn_model() if "all" in self.owned else None
        baseline: dict[tuple[str, ...], float] = {}
        champion: dict[tuple[str, ...], float] = {}
        if model:
            if model.get("health_auc") is not None:
                baseline[()] = model["health_auc"]
            if model.get("champion") is not None:
                champion[(model["champion"],)] = 1.0
        return [
            gauge("vitals_churn_model_baseline_auc",
                  "Progressive ROC AUC of the calibrated health score as a churn predictor",
                  (), baseline),
            gauge("vitals_churn_model_champion",
                  "Which churn predictor gives the published probability (1 = champion)",
                  ("champion",), champion),
        ]

    def gauges(self) -> list[Any]:
        """The scopes this worker owns, so that sum() across workers is right.

        Per-segment families carry real segments only: sum(vitals_mrr) is the mrr_end of scope
        all. Scope all's ratios, which no sum over segments rebuilds, go to the
        vitals_company_* families (docs/metrics-prometheus.md).
        """
        from streams.exporters.metrics import alert_counter, gauge

        mrr: dict[tuple[str, ...], float] = {}
        moves: dict[tuple[str, ...], float] = {}
        ratios: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in SCOPE_FIGURES}
        company: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in SCOPE_FIGURES}
        final: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in FINAL_FIGURES}
        company_final: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in FINAL_FIGURES}
        firing: dict[tuple[str, ...], float] = {}
        for scope in sorted(self.owned):
            state = self.live.get(scope) or self.store.get(scope)
            if state is None:
                continue
            is_all = scope == "all"
            key = () if is_all else (scope_label(scope),)
            if state.books:
                record = self.record(state, max(state.books))
                if not is_all:
                    mrr[key] = record["mrr_end"]
                    for kind in MOVEMENT_KINDS:
                        moves[(*key, kind)] = record[kind]
                for name, values in (company if is_all else ratios).items():
                    if record[name] is not None:
                        values[key] = record[name]
            month = self.last_final_month(state)
            if month is not None:
                revenue = self._revenue(state, month)
                for name, values in (company_final if is_all else final).items():
                    if revenue[name] is not None:
                        values[key] = revenue[name]
            for rule in state.alerts.firing():
                if rule in self.rules:
                    k = (rule, self.rules[rule].severity)
                    firing[k] = firing.get(k, 0.0) + 1.0
        seg = ("segment",)
        out = [
            *self._model_gauges(),
            gauge("vitals_mrr", "MRR now, by segment (sums to the whole company)", seg, mrr),
            gauge("vitals_mrr_movement", "MRR movements of the current month",
                  ("segment", "movement"), moves),
        ]
        for name, (metric, doc) in SCOPE_FIGURES.items():
            out.append(gauge(metric, f"{doc}, by segment", seg, ratios[name]))
            out.append(gauge(company_metric(metric), f"{doc}, whole company", (), company[name]))
        for name, (metric, doc) in FINAL_FIGURES.items():
            out.append(gauge(metric, f"{doc}, by segment", seg, final[name]))
            out.append(gauge(company_metric(metric), f"{doc}, whole company", (),
                             company_final[name]))
        out.append(gauge("vitals_alerts_firing", "Alerts currently firing", ("rule", "severity"),
                         firing))
        out.append(alert_counter(self.alert_counts, self.scope_rules))
        return out


# record field -> (per-segment metric, HELP); scope all's metric is company_metric(metric).
SCOPE_FIGURES: dict[str, tuple[str, str]] = {
    "nrr": ("vitals_nrr_ratio", "Net revenue retention of the current month so far"),
    "grr": ("vitals_grr_ratio", "Gross revenue retention of the current month so far"),
    "logo_retention": ("vitals_logo_retention_ratio",
                       "Logo retention of the current month so far"),
    "clv": ("vitals_clv", "Customer lifetime value (reporting currency)"),
    "clv_to_cac": ("vitals_clv_to_cac_ratio", "CLV over mean acquisition cost"),
    "success_rate_90d": ("vitals_success_rate_ratio",
                         "Share of customers reaching eureka within 90 days of signup"),
}
# Figures of the last final month (the month the business alert rules judge).
FINAL_FIGURES: dict[str, tuple[str, str]] = {
    "nrr": ("vitals_nrr_final_ratio", "Net revenue retention of the last finished month"),
    "grr": ("vitals_grr_final_ratio", "Gross revenue retention of the last finished month"),
}


def company_metric(metric: str) -> str:
    """vitals_nrr_ratio -> vitals_company_nrr_ratio: the whole-company family of a figure."""
    return "vitals_company_" + metric.removeprefix("vitals_")


def count_alert(counts: dict[tuple[str, str], int], rule: str, status: str) -> None:
    """One alert transition, for vitals_alerts_total (see exporters.metrics.alert_counter)."""
    counts[(rule, status)] = counts.get((rule, status), 0) + 1


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def scope_label(scope: str) -> str:
    return scope.split(":", 1)[1] if ":" in scope else scope


__all__ = ["BusinessAggregator", "ScopeState", "MOVEMENT_KINDS", "next_month", "scope_label"]
