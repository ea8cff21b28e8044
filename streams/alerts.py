"""Threshold alerts from configured rules: `firing` once when a condition starts, `resolved`
once when it ends (CONTRACT.md vitals.alerts).

Hysteresis keeps an alert from flapping on a metric that hovers at its threshold: a rule fires
once its condition has held ``for_days``, and resolves only when the metric is past the
threshold by ``resolve_margin`` for ``resolve_for_days`` (docs/contract.md, alert rules).

The state of each subject's alerts lives in that subject's own record (the customer record for
customer rules), so the changelog write that persists a figure also persists whether its alert
already fired: a restart neither fires twice nor forgets to resolve.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from models.activity import DAY_SECONDS
from streams.settings import AlertRule
from streams.time import rfc3339

OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


def lookup(figures: Mapping[str, Any], path: str) -> float | None:
    """'health.score' -> figures['health']['score']; None when any part is missing."""
    node: Any = figures
    for part in path.split("."):
        # dict, not typing.Mapping: this runs for every rule of every evaluation, and an
        # isinstance check against a typing alias costs several times more.
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def resolve_threshold(rule: AlertRule, threshold: float) -> float:
    """The value a firing alert must get past to resolve: the threshold moved away from the
    firing side by ``resolve_margin`` (below it for > and >=, above it for < and <=)."""
    return threshold - rule.resolve_margin if rule.op in (">", ">=") else (
        threshold + rule.resolve_margin)


@dataclass(frozen=True)
class Transition:
    rule: str
    status: str          # "firing" | "resolved"
    value: float | None
    threshold: float
    started_at: float
    as_of: float


class AlertBook:
    """Per-subject alert state: rule -> {"since": ts condition first held, "firing": bool}."""

    __slots__ = ("state",)

    def __init__(self, state: dict[str, dict[str, Any]] | None = None) -> None:
        self.state: dict[str, dict[str, Any]] = state or {}

    def firing(self) -> list[str]:
        return [rule for rule, s in self.state.items() if s.get("firing")]

    def evaluate(self, rules: Mapping[str, AlertRule], names: list[str],
                 figures: Mapping[str, Any], segment: str | None, as_of: float,
                 judged_at: Mapping[str, float] | None = None) -> list[Transition]:
        """``judged_at``: per metric, the event-time point its value was fixed at, when that
        is earlier than ``as_of`` (a figure that no longer changes is judged where it became
        final, not where a flush happened to look at it)."""
        out: list[Transition] = []
        for stale in [r for r in self.state if r not in names]:
            del self.state[stale]  # a rule taken out of the configuration
        judged_at = judged_at or {}
        start = as_of
        for name in names:
            rule = rules[name]
            as_of = min(start, judged_at.get(rule.metric, start))
            threshold = rule.threshold_by_segment.get(segment or "", rule.threshold)
            value = lookup(figures, rule.metric)
            entry = self.state.get(name)
            if entry is not None and entry["firing"]:
                t = self._settle(name, rule, entry, value, threshold, as_of)
                if t is not None:
                    out.append(t)
                continue
            if value is not None and OPS[rule.op](value, threshold):
                if entry is None:
                    entry = self.state[name] = {"since": as_of, "firing": False}
                if as_of - entry["since"] >= rule.for_days * DAY_SECONDS:
                    entry["firing"] = True
                    out.append(Transition(name, "firing", value, threshold, entry["since"], as_of))
            elif entry is not None:
                del self.state[name]   # a pending condition that stopped holding: reset
        return out

    def _settle(self, name: str, rule: AlertRule, entry: dict[str, Any], value: float | None,
                threshold: float, as_of: float) -> Transition | None:
        """A firing alert: resolved once the metric is past the threshold by the rule's
        margin and has stayed there ``resolve_for_days`` (hysteresis), or at once when the
        metric has no value."""
        if value is not None:
            if OPS[rule.op](value, resolve_threshold(rule, threshold)):
                entry.pop("clear_since", None)   # still on the firing side of the band
                return None
            clear_since = entry.setdefault("clear_since", as_of)
            if as_of - clear_since < rule.resolve_for_days * DAY_SECONDS:
                return None
        del self.state[name]
        return Transition(name, "resolved", value, threshold, entry["since"], as_of)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return self.state


def alert_record(rule_name: str, rule: AlertRule, t: Transition, subject: dict[str, Any],
                 subject_id: str, explain: dict[str, Any] | None = None) -> dict[str, Any]:
    if t.status == "resolved":
        now = "no longer available" if t.value is None else f"now {t.value:g}"
        summary = (f"Resolved: {rule_name} for {subject_id}: {rule.metric} is {now} "
                   f"(fires when {rule.op} {t.threshold:g})")
    else:
        try:
            summary = rule.summary.format(**subject, value=t.value)
        except (KeyError, ValueError, IndexError, TypeError):
            summary = f"{rule_name} firing for {subject_id}: {rule.metric} = {t.value}"
    record = {
        "alert_id": f"{rule_name}:{subject_id}", "rule": rule_name, "status": t.status,
        "severity": rule.severity, "subject": subject, "metric": rule.metric,
        "value": t.value, "threshold": t.threshold, "started_at": rfc3339(t.started_at),
        "as_of": rfc3339(t.as_of), "summary": summary, "actions": list(rule.actions),
    }
    if explain:
        record["explain"] = explain
    return record
