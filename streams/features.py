"""The feature stage: merges every customer partition's daily contribution per feature.

Keyed by feature on `topics.feature_internal`, so each feature is owned by one worker whatever
the number of workers. A feature's state (`models.features.FeatureBook` plus its alert state)
is one changelog record; a contribution only replaces the same partition's older one, so a
resend after a restart changes nothing.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from models.activity import DAY_SECONDS
from models.features import (
    FeatureBook,
    FeatureContribution,
    adoption_30d_after_release,
    after_release_fix_day,
    feature_record,
    stickiness_days,
)
from streams.alerts import AlertBook, alert_record
from streams.business import StageFlush, count_alert
from streams.evaluate import release_times
from streams.settings import Settings
from streams.time import rfc3339

OTHER = "other"
log = logging.getLogger(__name__)


@dataclass
class FeatureState:
    book: FeatureBook
    alerts: AlertBook = field(default_factory=AlertBook)

    def to_dict(self) -> dict[str, Any]:
        return {"book": self.book.to_state(), "alerts": self.alerts.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureState:
        return cls(FeatureBook.from_state(data["book"]), AlertBook(data.get("alerts")))


def encode_feature(state: FeatureState) -> bytes:
    return orjson.dumps(state.to_dict())


def decode_feature(raw: bytes) -> FeatureState:
    return FeatureState.from_dict(orjson.loads(raw))


class FeatureAggregator:
    def __init__(self, settings: Settings, store: Any) -> None:
        self.settings = settings
        self.store = store
        self.partitions = settings.app.partitions
        self.min_group = settings.features.min_group
        self.lateness_days = settings.time.lateness_days
        self.released = release_times(settings.features.released)
        self.rules = settings.alerts.rules
        self.feature_rules = list(settings.alerts.feature_rules)
        self.labelled = set(settings.features.configured)
        self.live: dict[str, FeatureState] = {}
        self.dirty: set[str] = set()
        self.latest: dict[str, dict[str, Any]] = {}   # feature -> last record (gauges)
        self.alert_counts: dict[tuple[str, str], int] = {}   # (rule, status) -> transitions

    def apply(self, feature: str, message: Mapping[str, Any]) -> None:
        state = self.live.get(feature)
        if state is None:
            state = self.store.get(feature) or FeatureState(FeatureBook(feature))
            self.live[feature] = state
        if state.book.update(int(message["p"]), FeatureContribution.from_state(message["c"]),
                             message.get("b")):
            self.dirty.add(feature)

    def record(self, state: FeatureState) -> dict[str, Any] | None:
        book = state.book
        merged = book.merged()
        if merged is None:
            return None
        released = book.released_at(self.released.get(book.feature))
        as_of = (merged.day + 1) * DAY_SECONDS
        fixed = book.after_release
        counts = book.after_release_counts(released, partitions=self.partitions,
                                           lateness_days=self.lateness_days)
        if book.after_release is not fixed and book.by_days:
            log.warning("feature %s: adoption_30d_after_release of %s counts partitions %s by "
                        "UTC days (they learnt of the feature after dropping its release day)",
                        book.feature, None if released is None else rfc3339(released),
                        list(book.by_days))
        after = None if counts is None else adoption_30d_after_release(
            counts[0], counts[1], as_of, released, self.lateness_days)
        return feature_record(book.feature, rfc3339(as_of),
                              None if released is None else rfc3339(released), merged,
                              n_days=stickiness_days(merged.day, released),
                              after_release=after, min_group=self.min_group)

    def flush(self) -> StageFlush:
        out = StageFlush()
        for feature in sorted(self.dirty):
            state = self.live[feature]
            record = self.record(state)
            if record is None:
                continue
            self.latest[feature] = record
            out.records.append((feature, orjson.dumps(record)))
            self._alerts(state, record, out)
        for feature, state in self.live.items():
            self.store[feature] = state
            out.changelog.append((feature, state))
        self.dirty = set()
        self.live = {}
        return out

    def _alerts(self, state: FeatureState, record: dict[str, Any], out: StageFlush) -> None:
        if not self.feature_rules:
            return
        as_of = datetime.fromisoformat(record["as_of"]).timestamp()
        # The after-release figure is fixed at one close and never changes after it: judged
        # there, whichever later close the flush merged first.
        judged_at = {}
        released = state.book.released_at(self.released.get(state.book.feature))
        if record.get("adoption_30d_after_release") is not None and released is not None:
            fixed = after_release_fix_day(released, self.lateness_days)
            judged_at["feature.adoption_30d_after_release"] = (fixed + 1) * DAY_SECONDS
        for t in state.alerts.evaluate(self.rules, self.feature_rules, {"feature": record},
                                       None, as_of, judged_at):
            subject = {"feature": record["feature"]}
            alert = alert_record(t.rule, self.rules[t.rule], t, subject, record["feature"])
            out.alerts.append((alert["alert_id"], orjson.dumps(alert)))
            count_alert(self.alert_counts, t.rule, t.status)

    def revoke(self, features: set[str]) -> None:
        """Unflushed contributions were not acknowledged: the new owner replays them."""
        for feature in features:
            self.live.pop(feature, None)
            self.dirty.discard(feature)
            self.latest.pop(feature, None)

    def gauges(self) -> list[Any]:
        """Adoption and stickiness per configured feature; the others averaged as `other`.

        Like the alerts firing, only the features this worker owns (those it flushed since it
        was last revoked), so that sum() across workers is right."""
        from streams.exporters.metrics import alert_counter, gauge

        out: dict[str, dict[tuple[str, ...], float]] = {"adoption_rate": {}, "stickiness": {},
                                                         "retention_impact": {}}
        for name, values in out.items():
            others = [r[name] for f, r in self.latest.items()
                      if f not in self.labelled and r[name] is not None]
            for f, r in self.latest.items():
                if f in self.labelled and r[name] is not None:
                    values[(f,)] = r[name]
            if others:
                values[(OTHER,)] = sum(others) / len(others)
        firing: dict[tuple[str, ...], float] = {}
        for feature in self.latest:
            state = self.live.get(feature) or self.store.get(feature)
            for rule in state.alerts.firing() if state is not None else ():
                if rule in self.rules:
                    key = (rule, self.rules[rule].severity)
                    firing[key] = firing.get(key, 0.0) + 1.0
        return [
            gauge("vitals_alerts_firing", "Alerts currently firing", ("rule", "severity"),
                  firing),
            alert_counter(self.alert_counts, self.feature_rules),
            gauge("vitals_feature_adoption_ratio",
                  "Users of the feature over active users, last 30 days", ("feature",),
                  out["adoption_rate"]),
            gauge("vitals_feature_stickiness_ratio",
                  "Mean daily users of the feature over its 30-day users", ("feature",),
                  out["stickiness"]),
            gauge("vitals_feature_retention_impact_ratio",
                  "90-day retention of customers who used the feature minus of those who did not",
                  ("feature",), out["retention_impact"]),
        ]
