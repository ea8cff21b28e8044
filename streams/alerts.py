"""Threshold alerts from configured rules: `firing` once when a condition starts, `resolved`
once when it ends (CONTRACT.md vitals.alerts).

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
                 figures: Mapping[str, Any], segment: str | None, as_of: float
                 ) -> list[Transition]:
        out: list[Transition] = []
        for stale in [r for r in self.state if r not in names]:
            del self.state[stale]  # a rule taken out of the configuration
        for name in names:
            rule = rules[name]
            threshold = rule.threshold_by_segment.get(segment or "", rule.threshold)
            value = lookup(figures, rule.metric)
            holds = value is not None and OPS[rule.op](value, threshold)
            entry = self.state.get(name)
            if holds:
                if entry is None:
                    entry = self.state[name] = {"since": as_of, "firing": False}
                if not entry["firing"] and as_of - entry["since"] >= rule.for_days * DAY_SECONDS:
                    entry["firing"] = True
                    out.append(Transition(name, "firing", value, threshold, entry["since"], as_of))
            elif entry is not None:
                if entry["firing"]:
                    out.append(Transition(name, "resolved", value, threshold, entry["since"],
                                          as_of))
                del self.state[name]
        return out

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
