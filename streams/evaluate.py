"""Evaluates one customer as of an event time: activity, onboarding, health, alert transitions.

Everything a `vitals.customer` record shows is derived here from the stored state and the as-of
time, so re-evaluating later (a day close, an HTTP request) gives figures that decay correctly
without any new event.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from models.activity import DAY_SECONDS, day_of, is_close, last_day, window_days
from models.health import HealthParams, weakest_components
from models.onboarding import MilestoneParams, success_eligible
from models.revenue import clv_to_cac, customer_clv
from streams.alerts import Transition, alert_record
from streams.records import customer_record, customer_status
from streams.settings import Settings
from streams.state import CustomerState


@dataclass
class Evaluation:
    record: dict[str, Any]
    alerts: list[dict[str, Any]]
    segment: str
    status: str
    stickiness: float
    grade: str | None
    score: float | None
    ttv_days: float | None
    succeeded: bool = False      # eureka within success_days of signup
    eligible: bool = False       # signed up at least success_days before as_of
    cac: float | None = None


def release_times(released: Mapping[str, str]) -> dict[str, float]:
    return {f: datetime.fromisoformat(ts).timestamp() for f, ts in released.items()}


class Evaluator:
    def __init__(self, settings: Settings) -> None:
        m, h = settings.milestones, settings.health
        self.window = settings.activity.window_days
        self.milestones = MilestoneParams(
            account_setup_usage=m.account_setup_usage,
            account_setup_billing=m.account_setup_billing,
            value_actions=m.value_actions, feature_events_are_value=m.feature_events_are_value,
            eureka_days=m.eureka_days, habit_weeks=m.habit_weeks, success_days=m.success_days)
        self.health = HealthParams(
            weights=h.weights, target_active_days=h.target_active_days,
            ticket_tolerance=h.ticket_tolerance, priority_weights=h.priority_weights,
            grades=h.grades, stickiness_target=h.engagement_stickiness_target,
            window_days=self.window, payment_window_days=h.payment_window_days,
            survey_window_days=h.survey_window_days)
        self.rules = settings.alerts.rules
        self.customer_rules = list(settings.alerts.customer_rules)
        self.key_features = set(settings.features.key)
        self.seen_delay = settings.time.lateness_days * DAY_SECONDS
        self.released = release_times(settings.features.released)
        self.currency = settings.app.reporting_currency
        self.gross_margin = settings.revenue.gross_margin
        self.min_churn_rate = settings.revenue.min_churn_rate

    def attach(self, state: CustomerState) -> CustomerState:
        """Parameters are configuration, not state: give restored records the current ones."""
        state.onboarding.params = self.milestones
        state.support.params = self.health
        return state

    def key_released(self, catalog: Mapping[str, float], as_of: float) -> set[str]:
        """Key features released by as_of: the configured ones, else every feature seen (on
        the customer's partition: ``catalog`` maps each to its first event time there)."""
        names = self.key_features or set(catalog) | set(self.released)
        out = set()
        for f in names:
            configured = self.released.get(f)
            if configured is not None:
                if configured <= as_of:
                    out.add(f)
                continue
            first = catalog.get(f)
            # A feature first seen at t counts once the allowed lateness after t has passed:
            # an event within the lateness can arrive after a close it precedes, and the
            # close must not depend on whether it did (docs/metrics.md, feature_adoption).
            if first is not None and first + self.seen_delay < as_of:
                out.add(f)
        return out

    def evaluate(self, state: CustomerState, as_of: float, catalog: Mapping[str, float],
                 remember: bool = True, alerts: bool = True,
                 churn_rates: Mapping[str, float] | None = None) -> Evaluation:
        """The customer as of `as_of`. A close (as_of = D+1 00:00) covers the complete days
        D-29 … D and keeps its score for trend_7d; an in-day as_of covers the days ending
        with its own day so far (models/activity.py `last_day`)."""
        # Windows end with last_day(as_of): D for a close stamped D+1 00:00, else as_of's day.
        # The state may already hold events after as_of (the event that closed the day), so
        # every window is bounded by that day explicitly.
        day = last_day(as_of)
        first = state.signup_ts if state.signup_ts is not None else state.first_ts
        first_day = None if first is None else day_of(first)
        act = state.activity.figures(day, first_day, self.window)
        n = window_days(day, first_day, self.window)
        released = self.key_released(catalog, as_of)
        used = sum(1 for f in released
                   if state.feature_use.window(f, day, window=self.window)[0] > 0)
        # Only a close's score is kept: trend_7d compares closes exactly 7 days apart.
        health = state.support.evaluate(
            day, active_days_30d=act.active_days_30d, n=n, stickiness=act.stickiness,
            mau=act.mau, key_used=used, key_released=len(released), seats=state.seats,
            remember=remember and is_close(as_of))
        onboarding = state.onboarding.to_record()
        status = customer_status(state)
        segment = state.segment or "unknown"
        record = customer_record(state, as_of, act, status)
        record["onboarding"] = onboarding
        record["health"] = health
        record["revenue"] = self._revenue(state, segment, churn_rates or {})
        churn = state.churn.last
        record["churn"] = None if churn is None else {
            k: churn[k] for k in ("probability", "risk", "model_ready", "drivers")}
        ob = state.onboarding
        out = Evaluation(record, [], segment, status, act.stickiness, health["grade"],
                         health["score"], onboarding["ttv_days"], ob.succeeded(),
                         success_eligible(ob.signed_up, as_of, self.milestones.success_days),
                         state.cac)
        if alerts and self.customer_rules:
            figures = {"activity": record["activity"], "health": health,
                       "onboarding": {**onboarding,
                                      "days_without_aha": self._days_without_aha(state, as_of)},
                       "payments": {"failed_30d": self._failed_30d(state, day)},
                       # Before the model has learnt enough, its probability alerts nobody.
                       "churn": {"probability": churn["probability"]}
                       if churn is not None and churn["model_ready"] else {}}
            transitions = state.alerts.evaluate(self.rules, self.customer_rules, figures,
                                                state.segment, as_of)
            out.alerts = [self._alert(state, t, health) for t in transitions]
        return out

    def _revenue(self, state: CustomerState, segment: str, churn_rates: Mapping[str, float]
                 ) -> dict[str, Any]:
        """Customer CLV = MRR x margin / monthly churn rate of its segment (floored).

        Money is published unrounded (docs/precision.md); the ratio to CAC to 4 places.
        """
        rate = churn_rates.get(f"segment:{segment}", self.min_churn_rate)
        mrr = state.revenue.mrr
        value = customer_clv(mrr, self.gross_margin, rate) if mrr > 0 else 0.0
        ratio = clv_to_cac(value, state.cac)
        return {"mrr": mrr, "currency": self.currency, "clv": value, "cac": state.cac,
                "clv_to_cac": None if ratio is None else round(ratio, 4)}

    def _alert(self, state: CustomerState, t: Transition, health: dict[str, Any]) -> dict[str, Any]:
        components = health.get("components") or {}
        explain = {"components": components,
                   "pulled_down_by": weakest_components(components, 2, self.health.weights)}
        if state.churn.last is not None and self.rules[t.rule].metric.startswith("churn."):
            explain["drivers"] = state.churn.last["drivers"]
        subject = {"customer_id": state.customer_id, "segment": state.segment}
        return alert_record(t.rule, self.rules[t.rule], t, subject, state.customer_id, explain)

    @staticmethod
    def _days_without_aha(state: CustomerState, as_of: float) -> float | None:
        ob = state.onboarding
        if ob.aha is not None or ob.signed_up is None:
            return None
        return (as_of - ob.signed_up) / DAY_SECONDS

    def _failed_30d(self, state: CustomerState, day: int) -> int:
        first = day - self.window + 1
        return sum(v[1] for d, v in state.support.payments.items() if first <= d <= day)
