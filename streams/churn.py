"""Churn prediction in the service: snapshots and scores at day close, one learner, one model.

The customer stage snapshots every paying customer at each day close, scores it with the latest
published model, and keeps the snapshot in the customer's record until its label is known
(`models.churn.LabelBook`). Labelled snapshots go to a single-partition topic, so exactly one
worker (the owner of that partition) learns, whatever the spread of customer partitions; it
publishes versioned model snapshots to a compacted topic that every worker reads.

Those snapshots are data, never code (docs/churn.md "Snapshot format and trust"): the logistic
model is JSON numbers, the forest a pickle signed with ``churn.model_secret``. A worker refuses
anything else (logged, counted in ``ChurnScorer.refused``) and keeps the model it had.

Exactly once: a flush awaits the delivery of its labelled snapshots before it writes the
customer records that no longer hold them, so a crash can only resend a snapshot, never lose
one; the learner remembers the last learnt snapshot day per customer and skips resends. Its
state (model, metrics, those days) is one changelog-backed table entry, written before the
examples that changed it are acknowledged. That entry is a pickle (River's optimiser state has
no other lossless form): the table's changelog topic must be writable by the service only.
"""
from __future__ import annotations

import heapq
import logging
import pickle
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from models.activity import DAY_SECONDS, ActivityWindow
from models.alert_quality import MIN_JUDGED_FIRINGS, RuleTally
from models.churn import (
    REFUSAL_REASONS,
    AucComparison,
    ChurnModel,
    Example,
    LabelBook,
    ModelSnapshot,
    PlattCalibrator,
    ProgressiveMetrics,
    SnapshotRefused,
    bounded,
    choose_champion,
    churn_record,
    compare_aucs,
    decode,
    decode_snapshot,
    encode,
    encode_snapshot,
    health_calibrator,
    logit,
    model_calibrator,
    platt,
    snapshot_vector,
)
from models.health import SupportAndPayments
from models.revenue import CustomerRevenue
from streams.settings import ChurnSettings

log = logging.getLogger(__name__)


class CustomerView(Protocol):
    """What churn reads of a customer's record (streams/state.py, which holds a ChurnTrack:
    named here by its shape, so that neither module imports the other)."""
    segment: str | None
    signup_ts: float | None
    first_ts: float | None
    activity: ActivityWindow
    support: SupportAndPayments
    revenue: CustomerRevenue
    features: dict[str, int]
    churn: ChurnTrack

MRR_HISTORY_DAYS = 31


BASELINE_DAYS = 60     # mean life (days) of the long-run usage baseline
BASELINE_LAG = 8       # the baseline takes in day D-8 at the close as of D: never the last 7


def raw_figures(state: CustomerView, record: Mapping[str, Any], day: int) -> dict[str, Any]:
    """The raw per-customer inputs of a snapshot (METRICS.md "Churn prediction").

    ``day`` is the as-of day d0 (the day close's midnight): day d0 itself has barely begun,
    so the activity windows are the full days before it (d0-7 … d0-1 for the last 7 days).
    """
    as_of = day * DAY_SECONDS
    first = state.signup_ts if state.signup_ts is not None else state.first_ts
    activity = record.get("activity") or {}
    health = record.get("health") or {}
    components = health.get("components") or {}
    last_7 = prev_7 = users_7 = users_28 = 0
    last_active = None
    for d, m in state.activity.masks.items():
        if not m:
            continue
        if last_active is None or d > last_active:
            last_active = d
        age = day - d
        if age < 1 or age > 28:
            continue
        n = m.bit_count()
        users_28 += n
        if age <= 7:
            last_7 += 1
            users_7 += n
        elif age <= 14:
            prev_7 += 1
    support = state.support
    tickets, weighted = support.tickets_30d(day)
    tickets_7 = sum(sum(per.values()) for d, per in support.tickets.items() if d >= day - 7)
    tenure = 0.0 if first is None else max(0.0, (as_of - first) / DAY_SECONDS)
    mrr = state.revenue.mrr
    yesterday = state.activity.masks.get(day - 1, 0)
    return {
        "tenure_days": tenure,
        "segment": state.segment or "unknown",
        "mrr": mrr,
        "mrr_change_30d": mrr - mrr_days_ago(state.churn.mrr, day, 30),
        "dau": yesterday.bit_count(), "wau": activity.get("wau"), "mau": activity.get("mau"),
        "stickiness": activity.get("stickiness"),
        "active_days_7d": last_7, "active_days_prev_7d": prev_7,
        "active_days_30d": activity.get("active_days_30d"),
        "active_user_days_7d": users_7, "active_user_days_28d": users_28,
        "history_days": tenure, "usage_baseline": state.churn.baseline_mean(),
        "feature_breadth": sum(1 for d in state.features.values() if d >= day - 29),
        "tickets_7d": tickets_7, "tickets_30d": tickets, "weighted_tickets_30d": weighted,
        "open_urgent_tickets": support.open_tickets("urgent"),
        "failed_payments_90d": support.payments_90d(day)[1],
        "days_since_activity": (day - last_active) if last_active is not None else tenure,
        "stage": (record.get("onboarding") or {}).get("stage"),
        "health_score": health.get("score"), "health_trend_7d": health.get("trend_7d"),
        **{c: components.get(c) for c in ("usage_frequency", "feature_adoption", "support",
                                             "payment", "engagement")},
    }


def mrr_days_ago(history: list[list[float]], day: int, days: int) -> float:
    """MRR at the day close `days` before `day`, from the [day, mrr] changes kept (0 before the
    customer's first day close: it was not a customer yet)."""
    value = 0.0
    for d, mrr in history:
        if d > day - days:
            break
        value = mrr
    return value


def remember_mrr(history: list[list[float]], day: int, mrr: float) -> None:
    """Keep the MRR changes seen at day closes, enough of them to look 30 days back."""
    if not history or history[-1][1] != mrr:
        history.append([day, mrr])
    while len(history) > 1 and history[1][0] <= day - MRR_HISTORY_DAYS:
        del history[0]


def example_value(cid: str, example: Example) -> dict[str, Any]:
    """A labelled snapshot on the examples topic (vector as a list in FEATURES order)."""
    x = example.encoded if example.encoded is not None else encode(example.vector)
    out = {"c": cid, "d": example.day, "x": x, "y": example.label,
           "p": example.probability, "v": example.model_version}
    if example.scores is not None:
        out["s"] = list(example.scores)
    if example.alerts:
        out["a"] = list(example.alerts)
    if example.lead_days is not None:
        out["l"] = example.lead_days
    return out


class ChurnScorer:
    """The latest published model, held by every worker."""

    def __init__(self, settings: ChurnSettings) -> None:
        self.settings = settings
        self.current: ModelSnapshot | None = None
        # Refused snapshots by reason (REFUSAL_REASONS); each reason is logged once at WARNING.
        self.refused: Counter[str] = Counter()

    @property
    def version(self) -> int:
        return 0 if self.current is None else self.current.version

    @property
    def ready(self) -> bool:
        return self.current is not None and self.current.learned >= self.settings.min_labelled

    def update(self, blob: bytes) -> bool:
        """Take a published snapshot if it is trusted and newer than the one held.

        A refused one (not JSON, e.g. a pickle; a bad field; a missing or wrong signature)
        changes nothing: the model held stays, the refusal is counted and logged.
        """
        try:
            snap = decode_snapshot(blob, self.settings.model_secret)
        except SnapshotRefused as exc:
            first = exc.reason not in self.refused
            self.refused[exc.reason] += 1
            log.log(logging.WARNING if first else logging.DEBUG,
                    "churn model snapshot refused, model version %s stays: %s",
                    self.version, exc)
            return False
        if self.current is not None and snap.version <= self.current.version:
            return False
        self.current = snap
        return True

    def gauges(self) -> list[Any]:
        """``vitals_churn_model_refused_total`` by reason (for ``Metrics.add_gauge_source``)."""
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("vitals_churn_model_refused",
                                     "Published churn model snapshots this worker refused",
                                     labels=["reason"])
        for reason in REFUSAL_REASONS:
            family.add_metric([reason], float(self.refused.get(reason, 0)))
        return [family]

    def score(self, vector: Mapping[str, float]) -> dict[str, Any]:
        """The `churn` block of a customer record; no model yet gives a null probability.

        Both candidates are scored: the River model (calibrated once the learner has a
        calibration for it) and the health score turned into a probability by its own
        calibration. The published probability is the champion's (the model's while the
        health score has no calibration yet). ``scores`` = [model raw, model calibrated,
        health calibrated] is kept with the snapshot, so the learner can judge each
        candidate on the label when it comes.
        """
        if self.current is None:
            return {"probability": None, "risk": None, "model_ready": False, "drivers": [],
                    "model_version": 0, "scores": None}
        snap = self.current
        raw, drivers = snap.model.predict_explained(vector, 3)
        cal = snap.calibration
        model_p = None if cal["model"] is None else platt(cal["model"], logit(raw))
        health_p = (None if cal["health"] is None
                    else platt(cal["health"], float(vector.get("health_score", 50.0))))
        p = health_p if snap.champion == "health" else model_p
        if p is None:
            # The champion has no calibration yet: an uncalibrated probability is not
            # published (nor alerted on); the raw score is kept to learn the calibration.
            return {"probability": None, "risk": None, "model_ready": False, "drivers": [],
                    "model_version": snap.version, "scores": [raw, model_p, health_p]}
        bands = self.settings.bands
        # churn_record bands the rounded probability: a record never says "0.5, medium".
        return {**churn_record(bounded(p), self.ready, drivers, bands["high"], bands["medium"]),
                "model_version": snap.version, "scores": [raw, model_p, health_p]}

    def model_record(self) -> dict[str, Any] | None:
        """`churn_model` of the business record (scope all)."""
        return None if self.current is None else dict(self.current.metrics)


@dataclass
class ChurnTrack:
    """Churn part of a customer's record: pending snapshots, recent MRR, the last score, and
    the long-run usage baseline ``usage`` = [mean daily active users, days taken in, last
    day taken in] (an exponential mean, ``BASELINE_DAYS`` mean life, of days up to D-8)."""
    book: LabelBook = field(default_factory=LabelBook)
    mrr: list[list[float]] = field(default_factory=list)
    last: dict[str, Any] | None = None
    usage: list[float] = field(default_factory=list)

    def remember_usage(self, state: CustomerView, day: int) -> None:
        """At the day close as of ``day``: take day - BASELINE_LAG into the baseline, once.

        Days before the customer's first activity are not taken in (a young customer's
        baseline is the mean of the days it had).
        """
        target = day - BASELINE_LAG
        if self.usage and self.usage[2] >= target:
            return
        masks = state.activity.masks
        active = masks.get(target, 0).bit_count()
        if not self.usage:
            if not active:
                return
            self.usage = [float(active), 1.0, float(target)]
            return
        mean, n, _ = self.usage
        n += 1.0
        mean += (active - mean) / min(n, BASELINE_DAYS)
        self.usage = [round(mean, 4), n, float(target)]

    def baseline_mean(self) -> float | None:
        return self.usage[0] if self.usage else None

    def to_dict(self) -> dict[str, Any]:
        out = {"b": self.book.to_state(), "m": self.mrr, "s": self.last}
        if self.usage:
            out["u"] = self.usage
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChurnTrack:
        book = data.get("b")
        return cls(LabelBook() if book is None else LabelBook.from_state(book),
                   [list(x) for x in data.get("m", ())], data.get("s"),
                   [float(v) for v in data.get("u", ())])


class ChurnLearner:
    """The single learner: learns each labelled snapshot once and scores its prediction.

    Besides the model it keeps, on the same delayed labels: progressive metrics of the
    published probability and of each candidate (the calibrated model, the calibrated health
    score), the two online calibrations, a window of recent labelled predictions of both
    candidates, and the champion chosen on that window (``choose_champion``).
    """

    def __init__(self, settings: ChurnSettings, blob: bytes | None = None) -> None:
        if settings.model == "forest" and not settings.model_secret:
            # Its snapshots are pickles: unsigned, no worker may load them (docs/churn.md).
            raise ValueError("churn.model = 'forest' needs churn.model_secret (e.g. "
                             "VITALS_CHURN__MODEL_SECRET): forest snapshots travel only signed")
        self.settings = settings
        if blob:
            data = pickle.loads(blob)
            self.model = ChurnModel.loads(data["model"])
            self.metrics = ProgressiveMetrics.from_state(data["metrics"])
            self.last_day: dict[str, int] = data["last"]
            self.version: int = data["version"]
            trust = data.get("trust") or {}
            quality = data.get("alerts") or {}
        else:
            self.model = ChurnModel.create(settings.model)
            self.metrics = ProgressiveMetrics()
            self.last_day = {}
            self.version = 0
            trust = {}
            quality = {}
        self.metrics_model = ProgressiveMetrics.from_state(trust.get("mm"))
        self.metrics_health = ProgressiveMetrics.from_state(trust.get("mh"))
        self.cal_model: PlattCalibrator = (PlattCalibrator.from_state(trust["cm"])
                                           if "cm" in trust else model_calibrator())
        self.cal_health: PlattCalibrator = (PlattCalibrator.from_state(trust["ch"])
                                            if "ch" in trust else health_calibrator())
        # (model's calibrated probability, health score's calibrated probability, label,
        # customer) of the latest labelled predictions, as published at their snapshots. The
        # customer makes its snapshots one unit in the champion's test; a state without it
        # (older versions) starts the window afresh.
        self.window: deque[tuple[float, float, int, str]] = deque(
            (tuple(w) for w in trust.get("w", ()) if len(w) == 4),
            maxlen=settings.champion_window)
        # Labelled churners waiting until the non-churners of their snapshot day are labelled
        # too: (day, order, encoded vector, [raw, model, health], customer), and the latest
        # snapshot day with a non-churner labelled (see _mature).
        self.waiting: list[tuple[int, int, list[float | int], Any, str | None]] = [
            (int(w[0]), i, w[1], w[2], w[3] if len(w) > 3 else None)
            for i, w in enumerate(trust.get("q", ()))]
        heapq.heapify(self.waiting)
        self._order = len(self.waiting)
        self.frontier: int | None = trust.get("f")
        # The health score is the incumbent: the model has to beat it first.
        self.champion: str = trust.get("champion", "health")
        # What the last published version applies (fitted at each publish).
        self.calibration: dict[str, list[float] | None] = trust.get(
            "cal", {"model": None, "health": None})
        # Alert quality on the same labels (docs/churn.md "Alert quality, live"): rule -> its
        # judged firings, and customer -> [churn day, rules whose lead was taken for that
        # churn] while that customer's snapshots labelled by it may still come.
        self.alert_tallies: dict[str, RuleTally] = {
            rule: RuleTally.from_state(t) for rule, t in quality.get("rules", {}).items()}
        self.caught: dict[str, tuple[int, list[str]]] = {
            cid: (int(dc), list(rules)) for cid, (dc, rules) in quality.get("caught", {}).items()}
        self.min_judged_firings = MIN_JUDGED_FIRINGS
        self.duplicates = 0
        self.changed = False
        self.published_at = 0.0
        self.unpublished = False

    def apply(self, examples: list[dict[str, Any]]) -> int:
        """Learn the examples not learnt before; returns how many were new."""
        new = 0
        matured: list[tuple[int, int, list[float | int], Any, str | None]] = []
        for ex in examples:
            cid, day = ex["c"], ex["d"]
            if self.last_day.get(cid, -1) >= day:
                self.duplicates += 1
                continue
            self.last_day[cid] = day
            y = ex["y"]
            self._judge_alerts(cid, day, y, ex.get("a") or (), ex.get("l"))
            if ex["p"] is not None:
                self.metrics.update(ex["p"], y)
            scores = ex.get("s")
            if scores:
                _, model_p, health_p = scores
                if model_p is not None:
                    self.metrics_model.update(model_p, y)
                if health_p is not None:
                    self.metrics_health.update(health_p, y)
            self._order += 1
            item = (int(day), self._order, ex["x"], scores, cid)
            if y:
                heapq.heappush(self.waiting, item)
            else:
                matured.append(item)
                self.frontier = day if self.frontier is None else max(self.frontier, day)
            new += 1
        for item in matured:
            self._mature(item, 0)
        if matured and self.caught:
            self._forget_old_churns()
        n = len(matured)
        while self.waiting and self.frontier is not None and self.waiting[0][0] <= self.frontier:
            self._mature(heapq.heappop(self.waiting), 1)
            n += 1
        if n:
            factor = 0.5 ** (n / self.settings.calibration_half_life)
            self.cal_model.decay(factor)
            self.cal_health.decay(factor)
        if new:
            self.changed = self.unpublished = True
        return new

    def _judge_alerts(self, cid: str, day: int, label: int, rules: Sequence[str],
                      lead_days: int | None) -> None:
        """Judge the firings carried by one labelled snapshot (learnt once, in snapshot-day
        order per customer): a hit when the label is churn. A churner's lead is taken once
        per rule, at its earliest firing within the horizon, which is the first hit of that
        churn to come (the customer's snapshots come in day order)."""
        held = self.caught.get(cid)
        if held is not None and day > held[0]:
            del self.caught[cid]      # past that churn: no snapshot of it can come any more
            held = None
        for rule in rules:
            tally = self.alert_tallies.get(rule)
            if tally is None:
                tally = self.alert_tallies[rule] = RuleTally()
            tally.judge(bool(label))
            if not label or lead_days is None:
                continue
            churn_day = day + int(lead_days)
            if held is None or held[0] != churn_day:
                held = self.caught[cid] = (churn_day, [])
            if rule not in held[1]:
                held[1].append(rule)
                tally.caught(int(lead_days))

    def _forget_old_churns(self) -> None:
        """Drop the leads held for churns so old that none of their snapshots can still come:
        a churn's snapshots are sent when its event is processed, and a non-churner of a day
        a whole horizon and settling time after it has since been labelled."""
        if self.frontier is None:
            return
        s = self.settings
        last = self.frontier - s.horizon_days - s.settle_days
        for cid in [c for c, (dc, _) in self.caught.items() if dc < last]:
            del self.caught[cid]

    def alert_quality(self) -> dict[str, dict[str, Any]]:
        """``churn_model.alerts``: per rule, firings judged, hits, precision (null below
        ``min_judged_firings``), churners caught and their median lead in days."""
        return {rule: t.to_record(self.min_judged_firings)
                for rule, t in sorted(self.alert_tallies.items())}

    def gauges(self) -> list[Any]:
        """The learner's series: model AUC, labels learnt, and the alert rules' quality."""
        from streams.exporters.metrics import gauge

        rec = self.metrics_record()
        return [gauge("vitals_churn_model_auc", "Progressive ROC AUC of the churn model", (),
                      {} if rec["auc"] is None else {(): rec["auc"]}),
                gauge("vitals_churn_model_labelled", "Labelled snapshots the churn model learnt",
                      (), {(): float(self.learned)}),
                *self.alert_gauges()]

    def alert_gauges(self) -> list[Any]:
        """Per customer alert rule: ``vitals_alert_precision_ratio`` (absent below
        ``min_judged_firings``), ``vitals_alert_firings_judged_total`` and
        ``vitals_alert_lead_time_seconds`` (the churners' median lead). Exported by the one
        worker holding the learner only, so a sum over workers is right."""
        from prometheus_client.core import CounterMetricFamily

        from streams.exporters.metrics import gauge

        precision: dict[tuple[str, ...], float] = {}
        lead: dict[tuple[str, ...], float] = {}
        judged = CounterMetricFamily(
            "vitals_alert_firings_judged",
            "Customer alert firings whose 30-day churn outcome is known", labels=["rule"])
        for rule, t in sorted(self.alert_tallies.items()):
            judged.add_metric([rule], float(t.judged))
            p = t.precision(self.min_judged_firings)
            if p is not None:
                precision[(rule,)] = p
            median = t.median_lead_days()
            if median is not None:
                lead[(rule,)] = median * DAY_SECONDS
        return [gauge("vitals_alert_precision_ratio",
                      "Share of judged firings of a customer alert rule followed by a churn "
                      "within the horizon", ("rule",), precision),
                judged,
                gauge("vitals_alert_lead_time_seconds",
                      "Median time from a churner's earliest firing within the horizon to its "
                      "churn, per customer alert rule", ("rule",), lead)]

    def _mature(self, item: tuple[int, int, list[float | int], Any, str | None],
                label: int) -> None:
        """Learn one labelled snapshot: the model, the calibrations, the champion's window.

        Labels come late and unevenly: a churn labels its snapshots within days, a "no churn"
        only after the horizon (33 days). Fed as they come, the calibrations would see the
        churners of the last month without their non-churners, over-estimate the churn rate
        and drift, and the window would compare recent churners with older non-churners. So a
        churner waits until a non-churner of its snapshot day (or a later one) was labelled:
        both classes then go in snapshot-day order. The same holds for the model: learning the
        churners a month before their non-churners made its probabilities swing high, then
        low. A churner waits at most the horizon plus ``churn.settle_days``.
        """
        _, _, encoded, scores, cid = item
        x = decode(encoded)
        # The model's calibration learns the current model's score of the snapshot, given
        # just before the model learns it (out of sample, prequential). The score made at the
        # snapshot came from a model version a month or more older (the label takes the
        # horizon): the versions since have moved its scale, and a calibration fitted over
        # mixed scales flattened to a constant.
        if self.model.learned:
            self.cal_model.learn(logit(self.model.predict(x)), label)
        self.model.learn(x, label)
        health_score = x["health_score"]
        self.cal_health.learn(health_score, label)
        # The champion's window: what each candidate published at the snapshot, calibrated
        # (the calibration puts the versions' scores on one scale). Not the current model's
        # score: it has just learnt the same customer's snapshots of the days before, with
        # the same label, and ranks better than any published probability could.
        model_p, health_p = (scores[1], scores[2]) if scores else (None, None)
        if model_p is not None and health_p is not None and cid is not None:
            self.window.append((float(model_p), float(health_p), label, cid))

    def to_bytes(self) -> bytes:
        self.changed = False
        trust = {"mm": self.metrics_model.to_state(), "mh": self.metrics_health.to_state(),
                 "cm": self.cal_model.to_state(), "ch": self.cal_health.to_state(),
                 "w": [list(w) for w in self.window], "champion": self.champion,
                 "q": [[d, x, sc, c] for d, _, x, sc, c in sorted(self.waiting)],
                 "f": self.frontier,
                 "cal": self.calibration}
        quality = {"rules": {r: t.to_state() for r, t in self.alert_tallies.items()},
                   "caught": {c: [dc, list(rules)] for c, (dc, rules) in self.caught.items()}}
        return pickle.dumps({"model": self.model.dumps(), "metrics": self.metrics.to_state(),
                             "last": self.last_day, "version": self.version, "trust": trust,
                             "alerts": quality})

    def publish(self, now: float | None = None) -> bytes | None:
        """A new model version when something was learnt and the interval has passed."""
        now = time.monotonic() if now is None else now
        if not self.unpublished or now - self.published_at < self.settings.publish_interval_seconds:
            return None
        self.version += 1
        self.changed = True  # the version is part of the learner's state
        self.unpublished = False
        self.published_at = now
        self.refresh()
        return encode_snapshot(self.version, self.model, self.metrics_record(),
                               self.settings.model_secret, self.calibration,
                               self.published_champion)

    def window_comparison(self) -> AucComparison:
        """Both AUCs over the window of recent labelled predictions, on the calibrated
        probabilities each candidate gave at the snapshot, and the error of their difference
        with customers as the units (``compare_aucs``)."""
        w = self.window
        return compare_aucs([x[0] for x in w], [x[1] for x in w], [x[2] for x in w],
                            [x[3] for x in w])

    def refresh(self) -> None:
        """Fit both calibrations and choose the champion (at each publish)."""
        self.calibration = {"model": self.cal_model.fit(), "health": self.cal_health.fit()}
        s = self.settings
        self.champion = choose_champion(self.champion, self.window_comparison(),
                                        len(self.window), s.champion_min_labels,
                                        s.champion_margin)

    @property
    def published_champion(self) -> str:
        """The champion scorers apply."""
        return self.champion

    @property
    def learned(self) -> int:
        """Labelled snapshots taken in, each once: learnt by the model, or churners queued to
        be learnt in snapshot-day order (``waiting``). The model's own count, which decides
        ``model_ready``, is ``model.learned``."""
        return self.model.learned + len(self.waiting)

    def metrics_record(self) -> dict[str, Any]:
        """The ``churn_model`` block: the published probability's progressive figures
        (``labelled`` = predictions scored, ``learned`` = labels learnt), the champion, each
        candidate's progressive AUC, log loss and calibration error, the window's AUCs, and
        each customer alert rule's quality (``alerts``)."""
        rec = self.metrics.to_record()
        rec["learned"] = self.learned
        rec["champion"] = self.published_champion
        for name, m in (("model", self.metrics_model), ("health", self.metrics_health)):
            part = m.to_record()
            for key in ("auc", "log_loss", "ece", "labelled"):
                rec[f"{name}_{key}"] = part[key]
        c = self.window_comparison()
        rec["window_labelled"] = len(self.window)
        rec["window_model_auc"] = None if c.auc_model is None else round(c.auc_model, 4)
        rec["window_health_auc"] = None if c.auc_health is None else round(c.auc_health, 4)
        rec["alerts"] = self.alert_quality()
        return rec


def snapshot(state: CustomerView, record: Mapping[str, Any], day: int,
             scorer: ChurnScorer, fired: Sequence[str] = ()) -> list[Example]:
    """Score a paying customer at day close and keep its snapshot until the label is known,
    with the customer alert rules that went to firing at that close (``fired``), so that
    the label judges them too; returns the examples the book settled on the way."""
    vector = snapshot_vector(raw_figures(state, record, day))
    block = scorer.score(vector)
    state.churn.last = block
    return state.churn.book.add(day, vector, block["probability"], block["model_version"],
                                block.get("scores"), fired)
