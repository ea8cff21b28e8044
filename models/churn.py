"""30-day churn prediction with an online River model (METRICS.md, "Churn prediction").

Pure: River and the stdlib only, no Faust/Kafka/Prometheus. Days are integer days since the
Unix epoch (UTC). Four pieces, each owned by a different part of the service:

* ``snapshot_vector`` turns the raw per-customer figures of a day close into the model's
  feature dict. The key set never changes (``FEATURES``), so a snapshot can be stored as a
  bare list of floats in that order (``encode``/``decode``).
* ``LabelBook`` lives in the customer's state. It keeps the day-close snapshots of one
  customer until their label is known (delayed labels) and hands each one out exactly once
  as an ``Example``; the service sends those to the single-partition topic of labelled
  snapshots.
* ``ChurnModel`` is the one model of the service. The learner (the only consumer of that
  topic) calls ``learn``; ``encode_snapshot`` gives the bytes the learner publishes, under a
  version number of its own, to the compacted model topic from which every worker
  ``decode_snapshot``s and scores. Learning therefore never depends on how customer
  partitions are spread over workers. A published snapshot is data only: the logistic model
  as JSON numbers, the forest (which only pickles) as a pickle signed with HMAC-SHA256 and
  never unpickled unless the signature holds. ``dumps``/``loads`` (pickle) are for the
  learner's own state only.
* ``ProgressiveMetrics`` scores, when its label arrives, the prediction that was made at the
  snapshot (delayed progressive validation), in constant memory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import pickle
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from river import base, compose, forest, linear_model, optim, preprocessing, utils
from scipy.special import stdtrit

# --------------------------------------------------------------------------------------------
# Feature vector
# --------------------------------------------------------------------------------------------

SEGMENTS: tuple[str, ...] = ("solo", "smb", "mid_market", "enterprise", "unknown")
# "none" before signup is known, then the onboarding funnel (models/onboarding.py STAGES).
STAGES: tuple[str, ...] = ("none", "signed_up", "account_setup", "aha", "eureka", "habit")
HEALTH_COMPONENTS: tuple[str, ...] = (
    "usage_frequency", "feature_adoption", "support", "payment", "engagement",
)

NUMERIC_FEATURES: tuple[str, ...] = (
    "log_tenure_days",
    "log_mrr",
    "mrr_change_ratio",
    "dau",
    "wau",
    "mau",
    "stickiness",
    "active_days_7d",
    "active_days_prev_7d",
    "active_days_trend",
    "active_days_30d",
    "active_user_days_7d",
    "usage_7d_vs_28d",
    "usage_vs_baseline",
    "feature_breadth",
    "tickets_7d",
    "tickets_30d",
    "weighted_tickets_30d",
    "open_urgent_tickets",
    "failed_payments_90d",
    "days_since_activity",
    "health_score",
    "health_trend_7d",
    *(f"health_{c}" for c in HEALTH_COMPONENTS),
)
# The model's features, in the fixed order a stored snapshot uses. Changing this list (or the
# meaning of an entry) must bump FEATURES_VERSION: stored books of another version are dropped.
FEATURES: tuple[str, ...] = (
    *NUMERIC_FEATURES,
    *(f"segment={s}" for s in SEGMENTS),
    *(f"stage={s}" for s in STAGES),
)
FEATURES_VERSION = 2
_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURES)}

# What a missing health figure stands for. No payments yet and no tickets are not bad news
# (100); an unknown score, adoption or engagement sits in the middle rather than at 0, which
# would read as "terrible" to the model; usage frequency is never null in a health record, so
# its absence means no usage data at all (0).
HEALTH_DEFAULTS: dict[str, float] = {
    "health_score": 50.0,
    "health_usage_frequency": 0.0,
    "health_feature_adoption": 50.0,
    "health_support": 100.0,
    "health_payment": 100.0,
    "health_engagement": 50.0,
}
MAX_DAYS_SINCE_ACTIVITY = 90.0  # beyond a quarter idle, more idle days tell nothing new
MRR_CHANGE_RATIO_BOUNDS = (-1.0, 5.0)  # -1 = all MRR lost; from ~0 the ratio would explode


def _num(raw: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    """A finite float from raw[key]; missing, None, non-numeric, NaN or inf give `default`."""
    value = raw.get(key)
    if value is None or isinstance(value, str):
        return default
    try:
        x = float(value)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def snapshot_vector(raw: Mapping[str, Any]) -> dict[str, float]:
    """The model's feature dict (exactly the keys of ``FEATURES``) from raw day-close figures.

    Raw keys (each may be missing or None): tenure_days, segment, mrr, mrr_change_30d (MRR now
    minus MRR 30 days ago), dau, wau, mau, stickiness, active_days_7d, active_days_prev_7d,
    active_days_30d, active_user_days_7d and active_user_days_28d (sums of daily active users
    over the last 7 / 28 full days), history_days (how many of those 28 days the customer
    existed), usage_baseline (the customer's long-run mean of daily active users, before the
    last 7 days), feature_breadth, tickets_7d, tickets_30d, weighted_tickets_30d,
    open_urgent_tickets, failed_payments_90d, days_since_activity, stage, health_score,
    health_trend_7d and the health components (usage_frequency, feature_adoption, support,
    payment, engagement; 0-100).

    Derived on purpose: log1p of tenure and MRR (heavy tails; a year more tenure matters less
    than the first month), ``mrr_change_ratio`` = change ÷ max(MRR 30 days ago, 1) clipped to
    [-1, 5] (relative contraction, not dollars), ``active_days_trend`` = last 7 days minus the
    7 before (the decline before cancelling), ``usage_7d_vs_28d`` = daily active users of the
    last 7 days ÷ those of the last 28 and ``usage_vs_baseline`` = the same ÷ the customer's
    long-run mean (a decline measured against the customer's own normal, whatever its size;
    1 = as usual, 0 = nobody left, capped at 3; 1 without a history to compare with),
    ``days_since_activity`` capped at 90 (None = never active: the tenure, capped), and
    one-hot segment and stage (unknown values go to ``segment=unknown`` / ``stage=none``).
    Names are human-readable because they are shown as ``drivers``.
    """
    num = _num
    tenure = max(0.0, num(raw, "tenure_days"))
    mrr = max(0.0, num(raw, "mrr"))
    change = num(raw, "mrr_change_30d")
    lo, hi = MRR_CHANGE_RATIO_BOUNDS
    ratio = min(hi, max(lo, change / max(mrr - change, 1.0)))
    active_7d = max(0.0, num(raw, "active_days_7d"))
    active_prev_7d = max(0.0, num(raw, "active_days_prev_7d"))
    idle = raw.get("days_since_activity")
    idle_days = tenure if idle is None else max(0.0, num(raw, "days_since_activity"))
    user_days_7d = max(0.0, num(raw, "active_user_days_7d"))
    per_day_7d = user_days_7d / 7.0
    user_days_28d = max(0.0, num(raw, "active_user_days_28d"))
    history = min(28.0, max(7.0, num(raw, "history_days", 28.0)))
    baseline = max(0.0, num(raw, "usage_baseline"))

    out: dict[str, float] = {
        "log_tenure_days": math.log1p(tenure),
        "log_mrr": math.log1p(mrr),
        "mrr_change_ratio": ratio,
        "dau": max(0.0, num(raw, "dau")),
        "wau": max(0.0, num(raw, "wau")),
        "mau": max(0.0, num(raw, "mau")),
        "stickiness": max(0.0, num(raw, "stickiness")),
        "active_days_7d": active_7d,
        "active_days_prev_7d": active_prev_7d,
        "active_days_trend": active_7d - active_prev_7d,
        "active_days_30d": max(0.0, num(raw, "active_days_30d")),
        "active_user_days_7d": user_days_7d,
        "usage_7d_vs_28d": _usage_ratio(per_day_7d, user_days_28d / history),
        "usage_vs_baseline": _usage_ratio(per_day_7d, baseline),
        "feature_breadth": max(0.0, num(raw, "feature_breadth")),
        "tickets_7d": max(0.0, num(raw, "tickets_7d")),
        "tickets_30d": max(0.0, num(raw, "tickets_30d")),
        "weighted_tickets_30d": max(0.0, num(raw, "weighted_tickets_30d")),
        "open_urgent_tickets": max(0.0, num(raw, "open_urgent_tickets")),
        "failed_payments_90d": max(0.0, num(raw, "failed_payments_90d")),
        "days_since_activity": min(MAX_DAYS_SINCE_ACTIVITY, idle_days),
        "health_score": num(raw, "health_score", HEALTH_DEFAULTS["health_score"]),
        "health_trend_7d": num(raw, "health_trend_7d"),
    }
    for comp, name in _HEALTH_NAMES:
        out[name] = num(raw, comp, HEALTH_DEFAULTS[name])
    segment = raw.get("segment")
    if segment not in _SEGMENT_SET:
        segment = "unknown"
    for s, name in _SEGMENT_NAMES:
        out[name] = 1.0 if s == segment else 0.0
    stage = raw.get("stage")
    if stage not in _STAGE_SET:
        stage = "none"
    for s, name in _STAGE_NAMES:
        out[name] = 1.0 if s == stage else 0.0
    return out


USAGE_RATIO_CAP = 3.0
_HEALTH_NAMES = tuple((c, f"health_{c}") for c in HEALTH_COMPONENTS)
_SEGMENT_SET = frozenset(SEGMENTS)
_SEGMENT_NAMES = tuple((s, f"segment={s}") for s in SEGMENTS)
_STAGE_SET = frozenset(STAGES)
_STAGE_NAMES = tuple((s, f"stage={s}") for s in STAGES)


def _usage_ratio(recent: float, normal: float) -> float:
    """recent ÷ normal usage, capped; 1 (as usual) when there is no normal to compare with."""
    if normal <= 0.0:
        return 1.0
    return min(USAGE_RATIO_CAP, recent / normal)


_EXACT = float(2**53)


def encode(vector: Mapping[str, float]) -> list[float | int]:
    """Compact list form of a feature dict, in ``FEATURES`` order (missing keys -> 0).

    Whole numbers become ints and other values are rounded to 4 decimals: a snapshot is
    stored for about 35 days for every paying customer, so its size matters more than the
    5th decimal of a feature. ("0" instead of "0.0" and "3.4012" instead of
    "3.4011973816621555" in every stored snapshot.)
    """
    get = vector.get
    out: list[float | int] = []
    append = out.append
    for name in FEATURES:
        x = float(get(name, 0.0))
        append(int(x) if x.is_integer() and -_EXACT < x < _EXACT else round(x, 4))
    return out


def decode(values: Sequence[float]) -> dict[str, float]:
    """Inverse of ``encode`` (up to its rounding)."""
    if len(values) != len(FEATURES):
        raise ValueError(f"expected {len(FEATURES)} values, got {len(values)}")
    return {name: float(v) for name, v in zip(FEATURES, values, strict=True)}


# --------------------------------------------------------------------------------------------
# Delayed labels
# --------------------------------------------------------------------------------------------

HORIZON_DAYS = 30
DEFAULT_SETTLE_DAYS = 3  # lateness (2 days) plus one: a late churn event still finds its snapshots


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled snapshot, to be learnt once and scored once.

    Customer-free: the book does not know its customer, the service adds the id. ``probability``
    is the prediction made at the snapshot (None when no model existed then) and
    ``model_version`` the version that made it (0 = none).
    """

    day: int
    vector: dict[str, float]
    label: int
    probability: float | None
    model_version: int
    # The ``encode``d vector when the example comes from a LabelBook (which stores snapshots
    # encoded): saves encoding it again for the examples topic. Not part of equality.
    encoded: list[float | int] | None = field(default=None, compare=False, repr=False)
    # What each candidate said at the snapshot (``SCORE_KEYS``: the model's raw probability,
    # the calibrated model, the calibrated health score; None where there was none).
    scores: tuple[float | None, float | None, float | None] | None = None
    # The customer alert rules that went to firing at the snapshot's day close, and, for a
    # snapshot labelled by a churn, the days from the snapshot to that churn (churn day - day):
    # what the learner judges each rule's firings by (docs/churn.md "Alert quality, live").
    alerts: tuple[str, ...] = ()
    lead_days: int | None = None

    def to_record(self) -> dict[str, Any]:
        """Plain JSON form for the labelled-snapshots topic (features by name: robust to a
        reordered feature list, and the topic is short-lived)."""
        out: dict[str, Any] = {"day": self.day, "label": self.label,
                               "probability": self.probability,
               "model_version": self.model_version, "vector": dict(self.vector)}
        if self.scores is not None:
            out["scores"] = list(self.scores)
        if self.alerts:
            out["alerts"] = list(self.alerts)
        if self.lead_days is not None:
            out["lead_days"] = self.lead_days
        return out

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Example:
        """Inverse of ``to_record``."""
        p = data.get("probability")
        return cls(day=int(data["day"]), vector={str(k): float(v) for k, v in
                                                 data["vector"].items()},
                   label=int(data["label"]), probability=None if p is None else float(p),
                   model_version=int(data.get("model_version", 0)),
                   scores=_scores(data.get("scores")),
                   alerts=tuple(str(r) for r in data.get("alerts", ())),
                   lead_days=None if data.get("lead_days") is None else int(data["lead_days"]))


SCORE_KEYS: tuple[str, ...] = ("raw", "model", "health")


def _scores(value: Any) -> tuple[float | None, float | None, float | None] | None:
    """The three candidate scores of a snapshot from their stored list (None if absent)."""
    if not value:
        return None
    raw, model, health = (None if v is None else float(v) for v in value)
    return raw, model, health


class LabelBook:
    """Pending day-close snapshots of one customer until their 30-day label is known.

    Semantics (``horizon`` H = 30 days):

    * A snapshot is taken at a day close with as-of time T = the midnight starting UTC day
      d0 = T // 86400 (so closing day D gives d0 = D + 1). ``add(d0, ...)`` keeps it; adding the
      same d0 again replaces it (idempotent re-evaluation). A d0 that is already final (see
      below) is ignored, so a snapshot is never labelled twice, also after a restart that
      re-runs a day close.
    * ``on_churn(dc)``, dc = the event-time day of the churn: every pending snapshot with
      0 <= dc - d0 < H is labelled 1 (churn on the 30th day counting d0 as the first,
      dc - d0 = 29 -> 1; on the 31st, dc - d0 = 30 -> 0), every pending one with dc - d0 >= H
      is labelled 0 (never 1: it survived its horizon), and all of them leave the book.
      Snapshots after the churn day (d0 > dc) stay: they belong to a later paying period
      (reactivation). If the service knows they were taken only because the churn event
      came late, it removes them with ``discard_from``.
    * ``settle(closed_day, settle_days)`` labels 0 and removes every pending snapshot with
      d0 + H + settle_days <= closed_day. ``settle_days`` leaves late churn events time to
      arrive: use at least the allowed lateness. With closed_day = the day just closed and
      settle_days = 0 this waits one day more than strictly needed (days d0 ... d0 + H - 1
      are the horizon); that day is a margin, not an error.
    * Final days: after ``settle`` every d0 <= closed_day - H - settle_days is final, after
      ``on_churn(dc)`` every d0 <= dc. ``add`` ignores final days.

    Bounded: ``add(d0)`` first settles with closed_day = d0 - 1 (the day close that takes a
    d0 snapshot has closed day d0 - 1) and the book's ``settle_days``; so at most
    H + settle_days + 1 snapshots are pending whether or not the caller settles. ``add``
    returns what that settled: the caller must send those examples on like any others.

    Snapshots are stored as ``encode``d lists in ``FEATURES`` order (about 40 short numbers
    each), not dicts of names.

    >>> book = LabelBook()
    >>> _ = book.add(100, {}, 0.4, 1), book.add(101, {}, None, 0)
    >>> [(e.day, e.label) for e in book.on_churn(130)]  # 130 - 100 = 30: survived its horizon
    [(100, 0), (101, 1)]
    >>> _ = book.add(140, {}, 0.1, 1)
    >>> book.settle(172, settle_days=3), [e.day for e in book.settle(173, settle_days=3)]
    ([], [140])
    """

    __slots__ = ("horizon", "settle_days", "_pending", "_final_through")

    def __init__(self, horizon: int = HORIZON_DAYS, settle_days: int = DEFAULT_SETTLE_DAYS) -> None:
        if horizon < 1 or settle_days < 0:
            raise ValueError("horizon must be >= 1 and settle_days >= 0")
        self.horizon = horizon
        self.settle_days = settle_days
        # d0 -> (encoded vector, probability, model_version, candidate scores, alert rules
        # that fired at that day close)
        self._pending: dict[int, tuple[list[float | int], float | None, int, Any,
                                       tuple[str, ...]]] = {}
        self._final_through: int | None = None

    # ---- views ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def days(self) -> list[int]:
        """Pending snapshot days, oldest first."""
        return sorted(self._pending)

    @property
    def final_through(self) -> int | None:
        """Every snapshot day up to this one is final (labelled or never to be taken)."""
        return self._final_through

    @property
    def max_pending(self) -> int:
        """The bound on pending snapshots: horizon + settle_days + 1."""
        return self.horizon + self.settle_days + 1

    def latest_vector(self) -> dict[str, float] | None:
        """The features of the newest pending snapshot (to score it again with a new model)."""
        return decode(self._pending[max(self._pending)][0]) if self._pending else None

    # ---- changes -------------------------------------------------------------------------

    def add(self, d0: int, vector: Mapping[str, float], probability: float | None,
            model_version: int, scores: Sequence[float | None] | None = None,
            alerts: Sequence[str] = ()) -> list[Example]:
        """Keep the snapshot as of day d0 (replacing one of the same day); see the class doc.

        ``alerts``: the rules that went to firing at this day close. A replaced snapshot keeps
        the rules of the one it replaces too: a firing happens once, and re-running the close
        must not forget it. Returns the examples settled on the way (closed day d0 - 1),
        usually none.
        """
        d0 = int(d0)
        settled = self.settle(d0 - 1)
        if self._final_through is not None and d0 <= self._final_through:
            return settled
        prob = None if probability is None else round(float(probability), 6)
        kept = None if scores is None else [None if v is None else round(float(v), 6)
                                            for v in scores]
        fired = tuple(alerts)
        if d0 in self._pending:
            fired = tuple(dict.fromkeys(self._pending[d0][4] + fired))
        self._pending[d0] = (encode(vector), prob, int(model_version), kept, fired)
        return settled

    def on_churn(self, dc: int) -> list[Example]:
        """Label the snapshots up to the churn day: 1 within the horizon, 0 before it."""
        dc = int(dc)
        out = []
        for d0 in sorted(d for d in self._pending if d <= dc):
            label = 1 if dc - d0 < self.horizon else 0
            out.append(self._pop(d0, label, dc - d0 if label else None))
        self._finalise(dc)
        return out

    def settle(self, closed_day: int, settle_days: int | None = None) -> list[Example]:
        """Label 0 every snapshot whose horizon plus ``settle_days`` has passed by closed_day."""
        s = self.settle_days if settle_days is None else int(settle_days)
        last = int(closed_day) - self.horizon - s
        out = [self._pop(d0, 0) for d0 in sorted(d for d in self._pending if d <= last)]
        self._finalise(last)
        return out

    def discard_from(self, day: int) -> int:
        """Drop, unlabelled, the pending snapshots with d0 >= day; returns how many.

        For snapshots that should not exist, e.g. taken after a churn whose event came late.
        """
        drop = [d for d in self._pending if d >= day]
        for d in drop:
            del self._pending[d]
        return len(drop)

    def _pop(self, d0: int, label: int, lead_days: int | None = None) -> Example:
        values, prob, version, scores, fired = self._pending.pop(d0)
        return Example(day=d0, vector=decode(values), label=label, probability=prob,
                       model_version=version, encoded=values, scores=_scores(scores),
                       alerts=fired, lead_days=lead_days)

    def _finalise(self, day: int) -> None:
        if self._final_through is None or day > self._final_through:
            self._final_through = day

    # ---- persistence ---------------------------------------------------------------------

    def to_state(self) -> list[Any]:
        """Plain JSON form: [FEATURES_VERSION, final_through, [[d0, p, version, [x...]], ...]],
        each entry followed by its candidate scores [raw, model, health] when it has them (or
        null when it has none but fired alerts), then by its fired alert rules when any.

        horizon and settle_days are configuration, not state: they come to ``from_state``.
        """
        return [FEATURES_VERSION, self._final_through,
                [[d0, p, v, list(x)] + ([s, list(a)] if a else [s] if s is not None else [])
                 for d0, (x, p, v, s, a) in sorted(self._pending.items())]]

    @classmethod
    def from_state(cls, state: Sequence[Any] | None, horizon: int = HORIZON_DAYS,
                   settle_days: int = DEFAULT_SETTLE_DAYS) -> LabelBook:
        """Inverse of ``to_state``; None gives an empty book.

        Snapshots stored under another ``FEATURES_VERSION`` cannot be decoded reliably and are
        dropped (their labels are lost, the final-days mark is kept).
        """
        book = cls(horizon, settle_days)
        if not state:
            return book
        version, final_through, pending = state
        book._final_through = None if final_through is None else int(final_through)
        if version != FEATURES_VERSION:
            return book
        for d0, p, v, x, *rest in pending:
            scores = list(rest[0]) if rest and rest[0] is not None else None
            fired = tuple(str(r) for r in rest[1]) if len(rest) > 1 else ()
            book._pending[int(d0)] = (list(x), None if p is None else float(p), int(v), scores,
                                      fired)
        return book

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelBook):
            return NotImplemented
        return self.to_state() == other.to_state() and self.horizon == other.horizon

    def __repr__(self) -> str:
        return (f"LabelBook(days={self.days}, final_through={self._final_through}, "
                f"horizon={self.horizon})")


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

MODEL_KINDS: tuple[str, ...] = ("logistic", "forest")
# Who gives the published probability: the River model or the calibrated health score.
CHAMPIONS: tuple[str, ...] = ("model", "health")
_DUMP_FORMAT = "customer-vitals/churn-model/1"


Z_CLIP = 3.0  # standardised values beyond ±3 are rare outliers: at most 3 standard deviations


class Clip(base.Transformer):
    """Clip every (standardised) value to [-limit, limit].

    Heavy-tailed counts (a ticket burst, 60 idle days, the one open urgent ticket in
    thousands of snapshots) standardise to 20-150: a single such snapshot would otherwise
    move the weights more than hundreds of ordinary ones.
    """

    def __init__(self, limit: float = Z_CLIP) -> None:
        self.limit = limit

    def transform_one(self, x: dict) -> dict:
        hi = self.limit
        lo = -hi
        return {k: hi if v > hi else lo if v < lo else v for k, v in x.items()}


def _logistic_pipeline() -> compose.Pipeline:
    # Standardised, clipped features and AdaGrad at 0.02 (per-feature steps that shrink as
    # a feature's gradients add up), no regularisation, intercept by plain SGD at 0.01.
    # Measured on the simulated year (tests/bench/bench_churn.py): labels arrive in bursts
    # (the 30 positive snapshots of a churner all at once), and plain SGD at 0.01 follows
    # each burst too far (progressive AUC ~0.60); smaller constant rates learn too slowly at
    # first, AdaGrad does both. Classes are NOT reweighted: reweighting positives buys
    # nothing in AUC and inflates every probability, while the risk bands and log loss need
    # calibrated ones.
    return (preprocessing.StandardScaler() | Clip(Z_CLIP)
            | linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.02), l2=0.0,
                                              intercept_lr=0.01))


def _forest(seed: int) -> forest.ARFClassifier:
    # Ten shallow trees, a split attempted every 200 examples per leaf, majority-class leaves.
    # River's defaults (unbounded depth, grace 50, naive-Bayes-adaptive leaves) learnt worse on
    # the synthetic churn data (AUC 0.76 vs 0.82) and their pickles reach 20+ MB in a few
    # thousand examples; depth 6 bounds the leaves, and with them the snapshot (a few MB: each
    # leaf keeps per-feature Gaussian statistics) and the cost of a prediction (~0.3 ms).
    return forest.ARFClassifier(n_models=10, max_depth=6, grace_period=200,
                                leaf_prediction="mc", seed=seed)


def _split_features(estimator: Any) -> set[str] | None:
    """Features some tree of a River forest splits on; None when the trees cannot be read.

    A feature no tree splits on cannot change a prediction, so its forest contribution is 0
    without asking the model. Reads River internals (``_root``, branch ``feature``), hence
    the fallback.
    """
    try:
        found: set[str] = set()
        stack = [tree._root for tree in estimator.models]
        while stack:
            node = stack.pop()
            children = getattr(node, "children", None)
            if children:
                found.add(node.feature)
                stack.extend(children)
        return found
    except AttributeError:
        return None


# The direction of a feature's effect where it is known: +1 = more of it can only raise the
# risk (trouble: tickets, failed payments, idle days), -1 = more of it can only lower it
# (activity, adoption, health, growth). The logistic model's weights are kept to these signs
# (projected after each step): without them, correlated activity features take opposite
# weights and "healthy activity" shows up as a reason to churn. Not listed: the data decides
# (tenure, MRR, segment, stage, the previous week's activity, which with the last week's
# makes the trend).
FEATURE_SIGNS: dict[str, int] = {
    **{name: 1 for name in ("tickets_7d", "tickets_30d", "weighted_tickets_30d",
                            "open_urgent_tickets", "failed_payments_90d",
                            "days_since_activity")},
    **{name: -1 for name in ("dau", "wau", "mau", "stickiness", "active_days_7d",
                             "active_days_trend", "active_days_30d", "active_user_days_7d",
                             "usage_7d_vs_28d", "usage_vs_baseline", "feature_breadth",
                             "mrr_change_ratio", "health_score", "health_trend_7d",
                             *(f"health_{c}" for c in HEALTH_COMPONENTS))},
}
# Never shown as drivers: true, but nothing a customer-success manager can act on.
NOT_DRIVERS: frozenset[str] = frozenset(
    {"log_tenure_days", "log_mrr", *(f"segment={s}" for s in SEGMENTS)})


def _top(contrib: Mapping[str, float], k: int) -> list[dict[str, Any]]:
    """``drivers`` from the contributions: the top k positive ones (rounded to 4), largest
    first, ties by name; features in ``NOT_DRIVERS`` are left out."""
    ranked = sorted((-r, n) for n, c in contrib.items() if c > 4e-5 and n not in NOT_DRIVERS
                    for r in (round(c, 4),) if r > 0)
    return [{"feature": n, "contribution": -r} for r, n in ranked[: max(0, k)]]


class ChurnModel:
    """The one churn model of the service: a River estimator plus a learnt count.

    ``kind`` "logistic" = ``StandardScaler | Clip | LogisticRegression`` (default, explainable
    exactly; Clip bounds the standardised values to ±3, see ``_logistic_pipeline``),
    "forest" = River's adaptive random forest (``forest.ARFClassifier``, 10 trees of depth
    <= 6, seeded). Its snapshots are MBs, not KBs: the model topic needs a matching
    ``max.message.bytes``.
    Labels are 0/1, predictions the probability of churn within the horizon.

    While ``learned == 0`` a prediction means nothing (0.5 or 0): the service should then
    store None as the snapshot's probability, so that progressive validation leaves it out
    (``ProgressiveMetrics``).
    """

    def __init__(self, kind: str, seed: int, estimator: Any) -> None:
        self.kind = kind
        self.seed = seed
        self.estimator = estimator
        self.learned = 0
        # Running feature means (of learnt vectors): the forest's driver baseline.
        self._sums: dict[str, float] = {}

    @classmethod
    def create(cls, kind: str = "logistic", seed: int = 42) -> ChurnModel:
        """A fresh model of the configured kind (``churn.model``)."""
        if kind == "logistic":
            return cls(kind, seed, _logistic_pipeline())
        if kind == "forest":
            return cls(kind, seed, _forest(seed))
        raise ValueError(f"unknown churn model kind {kind!r}; one of {MODEL_KINDS}")

    # ---- learning and scoring ------------------------------------------------------------

    def predict(self, vector: Mapping[str, float]) -> float:
        """Probability of churn, 0..1. An untrained logistic model says 0.5, a forest 0."""
        proba = self.estimator.predict_proba_one(dict(vector))
        p = float(proba.get(True, 0.0))
        return 0.0 if p < 0.0 else 1.0 if p > 1.0 else p

    def predict_explained(self, vector: Mapping[str, float], k: int = 3
                          ) -> tuple[float, list[dict[str, Any]]]:
        """``(predict(vector), drivers(vector, k))`` at the cost of about one prediction for
        the logistic model (the standardised values are computed once for both)."""
        if self.kind != "logistic":
            return self.predict(vector), self.drivers(vector, k)
        steps = self.estimator.steps
        scaler, clip, lr = steps["StandardScaler"], steps["Clip"], steps["LogisticRegression"]
        # StandardScaler.transform_one and Clip.transform_one in one loop, same arithmetic.
        means, variances, hi = scaler.means, scaler.vars, clip.limit
        lo = -hi
        z: dict[str, float] = {}
        for name, xi in vector.items():
            v = variances[name]
            zi = (xi - means[name]) / v**0.5 if v else 0.0
            z[name] = hi if zi > hi else lo if zi < lo else zi
        p = float(lr.predict_proba_one(z).get(True, 0.0))
        p = 0.0 if p < 0.0 else 1.0 if p > 1.0 else p
        weights = lr._weights
        contrib = {name: weights.get(name, 0.0) * value for name, value in z.items()}
        return p, _top(contrib, k)

    def _standardised(self, vector: Mapping[str, float]) -> dict[str, float]:
        """What the logistic regression sees: the vector standardised (and clipped)."""
        x = dict(vector)
        for step in list(self.estimator.steps.values())[:-1]:
            x = step.transform_one(x)
        return x

    def learn(self, vector: Mapping[str, float], label: int) -> None:
        """Learn one labelled snapshot (the learner calls this once per ``Example``)."""
        x = dict(vector)
        self.estimator.learn_one(x, bool(label))
        if self.kind == "logistic":
            weights = self.estimator.steps["LogisticRegression"]._weights
            for name, sign in FEATURE_SIGNS.items():
                w = weights[name]
                if w * sign < 0:
                    weights[name] = 0.0
        self.learned += 1
        for name, value in x.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)

    def ready(self, min_labelled: int = 200) -> bool:
        """``model_ready``: at least ``churn.min_labelled`` labels learnt."""
        return self.learned >= min_labelled

    def means(self) -> dict[str, float]:
        """Mean of each feature over the learnt snapshots (empty before any)."""
        if self.learned == 0:
            return {}
        return {name: s / self.learned for name, s in self._sums.items()}

    # ---- explanations --------------------------------------------------------------------

    def contributions(self, vector: Mapping[str, float]) -> dict[str, float]:
        """Every feature's contribution towards churn (positive = pushes towards churn).

        logistic: wᵢ · zᵢ, the weight times the standardised (clipped) value, i.e. the
        feature's share of the log-odds relative to an average customer (the intercept is
        left out).
        forest: p(x) − p(x with feature i set to its mean over the learnt snapshots), i.e. how
        much more likely churn is because this feature is not average. One prediction per
        feature that differs from its mean and that some tree splits on (the others
        contribute exactly 0), so at most one per feature (~0.3 ms each).
        """
        x = dict(vector)
        if self.kind == "logistic":
            weights = self.estimator["LogisticRegression"].weights
            z = self._standardised(x)
            return {name: float(weights.get(name, 0.0)) * float(z.get(name, 0.0)) for name in x}
        means = self.means()
        if not means:
            return {name: 0.0 for name in x}
        base = self.predict(x)
        used = _split_features(self.estimator)
        out: dict[str, float] = {}
        for name, value in x.items():
            mean = means.get(name, 0.0)
            if value == mean or (used is not None and name not in used):
                out[name] = 0.0
                continue
            out[name] = base - self.predict({**x, name: mean})
        return out

    def drivers(self, vector: Mapping[str, float], k: int = 3) -> list[dict[str, Any]]:
        """The top ``k`` positive contributions towards churn, largest first, rounded to 4.

        Only features that push towards churn are listed (a customer with nothing pushing
        has no drivers); ties go by name so that records are stable.
        """
        return _top(self.contributions(vector), k)

    # ---- snapshots -----------------------------------------------------------------------

    def dumps(self) -> bytes:
        """Pickle of the whole model (estimator, counts, feature means): the learner's state.

        Pickle because River estimators are Python objects with no other lossless form (the
        optimiser's per-feature state included). Read back only from the learner's own
        changelog table, which only the service writes; what the learner publishes to other
        workers goes through ``encode_snapshot`` instead.
        """
        state = {"format": _DUMP_FORMAT, "kind": self.kind, "seed": self.seed,
                 "estimator": self.estimator, "learned": self.learned, "sums": self._sums}
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def loads(cls, data: bytes) -> ChurnModel:
        """Inverse of ``dumps``: predicts and goes on learning exactly like the original."""
        state = pickle.loads(data)  # noqa: S301 - the learner's own table, see dumps
        if not isinstance(state, dict) or state.get("format") != _DUMP_FORMAT:
            raise ValueError("not a churn model snapshot")
        model = cls(state["kind"], state["seed"], state["estimator"])
        model.learned = int(state["learned"])
        model._sums = dict(state["sums"])
        return model


# --------------------------------------------------------------------------------------------
# Published snapshots: data only
# --------------------------------------------------------------------------------------------

SNAPSHOT_FORMAT = "customer-vitals/churn-model/2"
MIN_SECRET_CHARS = 16
# Why a snapshot was refused (the ``reason`` of ``SnapshotRefused``, a metric label).
REFUSAL_REASONS: tuple[str, ...] = (
    "not_json", "bad_format", "bad_field", "no_secret", "unsigned", "bad_signature",
    "bad_pickle",
)
_SIGNATURE = "hmac_sha256"
_ENVELOPE_KEYS = {"format", "version", "learned", "metrics", "kind", "model", "pickle",
                  "calibration", "champion", _SIGNATURE}
_MODEL_KEYS = {"features", "features_version", "scaler", "clip", "weights", "intercept"}
_METRIC_TEXT_CHARS = 32


class SnapshotRefused(ValueError):
    """A published model snapshot that must not be used. ``reason``: one of REFUSAL_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class ModelSnapshot:
    """A decoded, trusted model version: what a scoring worker needs."""

    version: int
    learned: int
    model: ChurnModel
    metrics: dict[str, Any]
    calibration: dict[str, list[float] | None]
    champion: str


def signing_key(secret: str) -> bytes:
    """The HMAC key of model snapshots, derived from ``churn.model_secret`` (a key of its own,
    so that the same secret used elsewhere never signs these by accident)."""
    return hmac.new(secret.encode(), b"customer-vitals churn-model snapshot",
                    hashlib.sha256).digest()


def _canonical(envelope: Mapping[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in envelope.items() if k != _SIGNATURE},
                        option=orjson.OPT_SORT_KEYS)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SnapshotRefused("bad_field", f"{what} must be a finite number, got {value!r:.40}")
    return float(value)


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SnapshotRefused("bad_field", f"{what} must be a count, got {value!r:.40}")
    return value


def _by_feature(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SnapshotRefused("bad_field", f"{what} must be an object")
    unknown = [k for k in value if k not in _INDEX]
    if unknown:
        raise SnapshotRefused("bad_field", f"{what} names unknown features {unknown[:3]!r:.80}")
    return value


def model_data(model: ChurnModel) -> dict[str, Any]:
    """The logistic model as plain numbers: scaler statistics, clip, weights, intercept.

    Dicts keep River's own key order, so that a rebuilt model sums in the same order and
    predicts bit for bit like this one.
    """
    if model.kind != "logistic":
        raise ValueError("only the logistic model travels as data; the forest is signed")
    steps = model.estimator.steps
    scaler, clip, lr = steps["StandardScaler"], steps["Clip"], steps["LogisticRegression"]
    return {
        "features": list(FEATURES), "features_version": FEATURES_VERSION,
        "scaler": {"counts": {k: int(v) for k, v in scaler.counts.items()},
                   "means": {k: float(v) for k, v in scaler.means.items()},
                   "vars": {k: float(v) for k, v in scaler.vars.items()}},
        "clip": float(clip.limit),
        "weights": {k: float(v) for k, v in lr.weights.items()},
        "intercept": float(lr.intercept),
    }


def model_from_data(data: Any, learned: int) -> ChurnModel:
    """Inverse of ``model_data``: a scoring-only logistic model rebuilt from checked numbers.

    Every field is checked (exact key sets, known feature names, finite numbers, variances
    >= 0, counts): anything else is ``SnapshotRefused("bad_field")`` or, for a model of
    another feature list, ``"bad_format"``. The optimiser's state does not travel: the
    rebuilt model predicts and explains like the learner's, it is not meant to learn.
    """
    if not isinstance(data, dict) or set(data) != _MODEL_KEYS:
        raise SnapshotRefused("bad_field", "model must hold exactly "
                                           f"{sorted(_MODEL_KEYS)}")
    if data["features"] != list(FEATURES) or data["features_version"] != FEATURES_VERSION:
        raise SnapshotRefused("bad_format", "model of another feature list")
    scaler = data["scaler"]
    if not isinstance(scaler, dict) or set(scaler) != {"counts", "means", "vars"}:
        raise SnapshotRefused("bad_field", "scaler must hold exactly counts, means, vars")
    counts = {k: _count(v, f"count of {k}")
              for k, v in _by_feature(scaler["counts"], "counts").items()}
    means = {k: _finite(v, f"mean of {k}")
             for k, v in _by_feature(scaler["means"], "means").items()}
    variances = {k: _finite(v, f"variance of {k}")
                 for k, v in _by_feature(scaler["vars"], "vars").items()}
    if any(v < 0 for v in variances.values()):
        raise SnapshotRefused("bad_field", "a variance is negative")
    clip = _finite(data["clip"], "clip")
    if clip <= 0:
        raise SnapshotRefused("bad_field", "clip must be > 0")
    weights = {k: _finite(v, f"weight of {k}")
               for k, v in _by_feature(data["weights"], "weights").items()}
    intercept = _finite(data["intercept"], "intercept")
    model = ChurnModel.create("logistic")
    steps = model.estimator.steps
    scaler_step = steps["StandardScaler"]
    scaler_step.counts.update(counts)
    scaler_step.means.update(means)
    scaler_step.vars.update(variances)
    steps["Clip"].limit = clip
    lr = steps["LogisticRegression"]
    lr._weights = utils.VectorDict(weights)
    lr.intercept = intercept
    model.learned = learned
    return model


def _metrics(value: Any) -> dict[str, Any]:
    """A flat object of figures: numbers, null or short text (the ``churn_model`` block)."""
    if not isinstance(value, dict) or len(value) > 64:
        raise SnapshotRefused("bad_field", "metrics must be a small object")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k == "alerts" and isinstance(v, dict):
            out[k] = _alert_figures(v)
        elif v is None or isinstance(v, bool):
            out[k] = v
        elif isinstance(v, str):
            if len(v) > _METRIC_TEXT_CHARS:
                raise SnapshotRefused("bad_field", f"metric {k!r:.40} is too long a text")
            out[k] = v
        else:
            out[k] = _finite(v, f"metric {k!r:.40}")
            if isinstance(v, int):
                out[k] = v
    return out


def _alert_figures(value: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    """``metrics.alerts``: rule name -> a small flat object of numbers or null (firings,
    precision, lead days: ``models.alert_quality.RuleTally.to_record``)."""
    if len(value) > 64:
        raise SnapshotRefused("bad_field", "metrics.alerts must be a small object")
    out: dict[str, dict[str, Any]] = {}
    for rule, figures in value.items():
        if not isinstance(rule, str) or len(rule) > _METRIC_TEXT_CHARS:
            raise SnapshotRefused("bad_field", "metrics.alerts has a bad rule name")
        if not isinstance(figures, dict) or len(figures) > 16:
            raise SnapshotRefused("bad_field", f"metrics.alerts[{rule!r:.40}] must be an object")
        entry: dict[str, Any] = {}
        for k, v in figures.items():
            where = f"metrics.alerts[{rule!r:.40}][{k!r:.40}]"
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise SnapshotRefused("bad_field", f"{where} must be a number or null")
            entry[str(k)] = v if v is None or isinstance(v, int) else _finite(v, where)
        out[rule] = entry
    return out


def _calibration(value: Any) -> dict[str, list[float] | None]:
    """{"model": [slope, intercept] | null, "health": [...] | null}: Platt parameters."""
    if value is None:
        return {"model": None, "health": None}
    if not isinstance(value, dict) or not set(value) <= {"model", "health"}:
        raise SnapshotRefused("bad_field", "calibration must hold model and health only")
    out: dict[str, list[float] | None] = {"model": None, "health": None}
    for k, v in value.items():
        if v is None:
            continue
        if not isinstance(v, list) or len(v) != 2:
            raise SnapshotRefused("bad_field", f"calibration of {k} must be [slope, intercept]")
        out[k] = [_finite(x, f"calibration of {k}") for x in v]
    return out


def encode_snapshot(version: int, model: ChurnModel, metrics: Mapping[str, Any],
                    secret: str = "", calibration: Mapping[str, Any] | None = None,
                    champion: str = "model") -> bytes:
    """The bytes of a published model version (JSON, one object).

    The logistic model travels as numbers (``model_data``). The forest travels as its pickle
    (base64) and needs ``secret``: without one it is not published at all (``ValueError``).
    With a secret, every snapshot carries ``hmac_sha256`` over its canonical JSON (sorted
    keys, the signature left out), so a reader holding the same secret refuses anything else.
    """
    envelope: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT, "version": int(version), "learned": int(model.learned),
        "metrics": dict(metrics), "kind": model.kind,
        "calibration": dict(calibration) if calibration is not None else None,
        "champion": champion,
    }
    if model.kind == "logistic":
        envelope["model"] = model_data(model)
    else:
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError("the forest is published only signed: set churn.model_secret "
                             f"(>= {MIN_SECRET_CHARS} characters)")
        envelope["pickle"] = base64.b64encode(model.dumps()).decode()
    if secret:
        envelope[_SIGNATURE] = hmac.new(signing_key(secret), _canonical(envelope),
                                        hashlib.sha256).hexdigest()
    return orjson.dumps(envelope)


def decode_snapshot(blob: bytes, secret: str = "") -> ModelSnapshot:
    """Inverse of ``encode_snapshot``, trusting nothing: raises ``SnapshotRefused``.

    Order matters: the bytes must be one JSON object of this format (a pickle or anything
    else is ``not_json`` and never unpickled); with a ``secret`` the signature must be there
    (``unsigned``) and right (``bad_signature``) before any field is looked at; a forest
    without a secret to check it is ``no_secret``; then every field is checked; only then is
    a signed forest unpickled (``bad_pickle`` if that fails or gives something else).
    """
    try:
        envelope = orjson.loads(blob)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise SnapshotRefused("not_json", f"not a JSON snapshot ({exc})") from None
    if not isinstance(envelope, dict) or envelope.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotRefused("bad_format", "not a churn model snapshot of format "
                                            f"{SNAPSHOT_FORMAT}")
    if secret:
        signature = envelope.get(_SIGNATURE)
        if not isinstance(signature, str):
            raise SnapshotRefused("unsigned", "no hmac_sha256 signature")
        expected = hmac.new(signing_key(secret), _canonical(envelope), hashlib.sha256)
        if not hmac.compare_digest(signature, expected.hexdigest()):
            raise SnapshotRefused("bad_signature", "hmac_sha256 does not match")
    kind = envelope.get("kind")
    if kind == "forest" and not secret:
        raise SnapshotRefused("no_secret", "a forest snapshot needs churn.model_secret to be "
                                           "checked")
    unknown = set(envelope) - _ENVELOPE_KEYS
    if unknown:
        raise SnapshotRefused("bad_field", f"unknown fields {sorted(unknown)[:3]!r:.80}")
    version = _count(envelope.get("version"), "version")
    learned = _count(envelope.get("learned"), "learned")
    metrics = _metrics(envelope.get("metrics"))
    calibration = _calibration(envelope.get("calibration"))
    champion = envelope.get("champion", "model")
    if champion not in CHAMPIONS:
        raise SnapshotRefused("bad_field", f"champion must be one of {CHAMPIONS}")
    if kind == "logistic":
        if "pickle" in envelope:
            raise SnapshotRefused("bad_field", "a logistic snapshot holds no pickle")
        model = model_from_data(envelope.get("model"), learned)
    elif kind == "forest":
        if "model" in envelope or not isinstance(envelope.get("pickle"), str):
            raise SnapshotRefused("bad_field", "a forest snapshot holds its pickle only")
        try:
            model = ChurnModel.loads(base64.b64decode(envelope["pickle"], validate=True))
        except Exception as exc:  # noqa: BLE001 - whatever the pickle raises, it is refused
            raise SnapshotRefused("bad_pickle", f"{type(exc).__name__}: {exc}"[:200]) from None
        if model.kind != "forest":
            raise SnapshotRefused("bad_pickle", "the pickle is not a forest")
    else:
        raise SnapshotRefused("bad_field", f"kind must be one of {MODEL_KINDS}")
    return ModelSnapshot(version, learned, model, metrics, calibration, champion)


# --------------------------------------------------------------------------------------------
# Calibration and the champion
# --------------------------------------------------------------------------------------------

_P_EDGE = 1e-6


def logit(p: float) -> float:
    """log(p / (1 - p)), p kept within [1e-6, 1 - 1e-6]."""
    p = min(1.0 - _P_EDGE, max(_P_EDGE, float(p)))
    return math.log(p / (1.0 - p))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# A published probability stays this far from 0 and 1. Rounded to 4 digits, a confident
# calibration published exact zeros, and a churner at 0 costs a log loss of 34.5: on the
# silent-churn profile (seed 2) 79 such snapshots took the published log loss from 0.16 to
# 0.32, above the constant's 0.30. A few hundred learnt churners cannot support odds
# beyond 1 in 1000 either way.
PROBABILITY_FLOOR = 0.001


def bounded(p: float) -> float:
    """``p`` within [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR]."""
    return min(1.0 - PROBABILITY_FLOOR, max(PROBABILITY_FLOOR, p))


def platt(params: Sequence[float], score: float) -> float:
    """A calibrated probability: sigmoid(slope · score + intercept)."""
    return sigmoid(params[0] * score + params[1])


class PlattCalibrator:
    """Online Platt scaling of one score: p = sigmoid(a · score + b).

    Scores are counted by label in ``bins`` equal bins over [lo, hi] (clamped); ``decay``
    lets old counts fade, so the fit follows a model that changes. ``fit`` solves the
    logistic regression of the label on the bin centre exactly (Newton), with Platt's
    smoothed targets ((P + 1) / (P + 2) for churners, 1 / (N + 2) for the others) so that a
    few labels never give 0 or 1. Being monotone, the calibration keeps the score's ranking
    (its AUC) unless the fit finds the score ranks backwards (a < 0), which it then says.
    Constant memory; the state is a few hundred numbers.
    """

    __slots__ = ("lo", "hi", "bins", "pos", "neg", "slope_bounds")

    def __init__(self, lo: float, hi: float, bins: int,
                 slope_bounds: tuple[float, float] = (-math.inf, math.inf)) -> None:
        if not hi > lo or bins < 2:
            raise ValueError("need hi > lo and bins >= 2")
        self.lo, self.hi, self.bins = float(lo), float(hi), int(bins)
        self.slope_bounds = slope_bounds
        self.pos = [0.0] * self.bins
        self.neg = [0.0] * self.bins

    def _bin(self, score: float) -> int:
        i = int((score - self.lo) / (self.hi - self.lo) * self.bins)
        return min(self.bins - 1, max(0, i))

    def centre(self, i: int) -> float:
        return self.lo + (i + 0.5) * (self.hi - self.lo) / self.bins

    def learn(self, score: float, label: int) -> None:
        (self.pos if label else self.neg)[self._bin(score)] += 1.0

    def decay(self, factor: float) -> None:
        """Multiply every count by ``factor`` (0..1): older labels weigh less."""
        self.pos = [c * factor for c in self.pos]
        self.neg = [c * factor for c in self.neg]

    @property
    def counts(self) -> tuple[float, float]:
        return sum(self.pos), sum(self.neg)

    def fit(self, min_each: float = 5.0) -> list[float] | None:
        """[slope, intercept] on the raw score; None before ``min_each`` of each class."""
        P, N = self.counts
        if P < min_each or N < min_each:
            return None
        t_pos, t_neg = (P + 1.0) / (P + 2.0), 1.0 / (N + 2.0)
        rows = []
        for i in range(self.bins):
            w = self.pos[i] + self.neg[i]
            if w > 0:
                rows.append((self.centre(i), w, (self.pos[i] * t_pos + self.neg[i] * t_neg) / w))
        total = P + N
        mu = sum(x * w for x, w, _ in rows) / total
        sd = math.sqrt(sum(w * (x - mu) ** 2 for x, w, _ in rows) / total) or 1.0
        a, b = 0.0, logit(P / total)
        for _ in range(50):                       # Newton on standardised scores
            ga = gb = haa = hab = hbb = 0.0
            for x, w, t in rows:
                u = (x - mu) / sd
                p = sigmoid(a * u + b)
                r = w * (p - t)
                h = w * p * (1.0 - p)
                ga += r * u
                gb += r
                haa += h * u * u
                hab += h * u
                hbb += h
            haa += 1e-9 * total                   # a tiny ridge: a flat score stays solvable
            hbb += 1e-9 * total
            det = haa * hbb - hab * hab
            if det <= 0:
                break
            da = (hbb * ga - hab * gb) / det
            db = (haa * gb - hab * ga) / det
            a, b = a - da, b - db
            if abs(da) + abs(db) < 1e-10:
                break
        slope = a / sd
        lo, hi = self.slope_bounds
        if lo <= slope <= hi:
            return [slope, b - a * mu / sd]
        # Out of bounds (a fit on too narrow or stale a range of scores would extrapolate
        # wildly): the slope is clamped and the intercept refitted for it. The gradient is
        # increasing in the intercept: bisection, which cannot overshoot as Newton can here.
        slope = min(hi, max(lo, slope))
        lo_c, hi_c = -60.0, 60.0
        for _ in range(80):
            c = (lo_c + hi_c) / 2.0
            g = sum(w * (sigmoid(slope * x + c) - t) for x, w, t in rows)
            if g > 0:
                hi_c = c
            else:
                lo_c = c
        c = (lo_c + hi_c) / 2.0
        return [slope, c]

    def to_state(self) -> dict[str, Any]:
        """Plain JSON form; counts sparse as [[bin, pos, neg], ...]."""
        return {"lo": self.lo, "hi": self.hi, "bins": self.bins,
                "slope": [self.slope_bounds[0] if math.isfinite(self.slope_bounds[0]) else None,
                          self.slope_bounds[1] if math.isfinite(self.slope_bounds[1]) else None],
                "c": [[i, round(p, 6), round(n, 6)] for i, (p, n) in
                      enumerate(zip(self.pos, self.neg, strict=True)) if p or n]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PlattCalibrator:
        lo, hi = state.get("slope") or (None, None)
        out = cls(state["lo"], state["hi"], state["bins"],
                  (-math.inf if lo is None else lo, math.inf if hi is None else hi))
        for i, p, n in state.get("c", ()):
            out.pos[int(i)], out.neg[int(i)] = float(p), float(n)
        return out


def model_calibrator() -> PlattCalibrator:
    """For the River model: its log-odds, 0.1 wide bins over [-12, 12]; the slope within
    [0, 2] (never reversing the model's ranking; at most doubling its confidence)."""
    return PlattCalibrator(-12.0, 12.0, 240, (0.0, 2.0))


def health_calibrator() -> PlattCalibrator:
    """For the health score (0-100, higher = healthier), one-point bins; the slope <= 0
    (a healthier customer is never said to be more likely to churn)."""
    return PlattCalibrator(0.0, 100.0, 100, (-1.0, 0.0))


def auc_exact(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """ROC AUC by ranks (ties count 1/2); None without both classes."""
    P = sum(1 for y in labels if y)
    N = len(labels) - P
    if P == 0 or N == 0:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mean_rank = (i + j) / 2.0 + 1.0
        rank_sum += mean_rank * sum(1 for k in order[i:j + 1] if labels[k])
        i = j + 1
    return (rank_sum - P * (P + 1) / 2.0) / (P * N)


# A challenger must beat the champion by this many standard errors of the AUC difference
# (one-sided, about 2.3 %): the quantile of Student's t at the level of z = 2, with one less
# degree of freedom than the customers of the rarer class (``AucComparison.critical``).
CHAMPION_Z = 2.0
_CHAMPION_LEVEL = 0.5 * (1.0 + math.erf(CHAMPION_Z / math.sqrt(2.0)))


@dataclass(frozen=True, slots=True)
class AucComparison:
    """Both candidates' AUCs on one window, and the standard error of their difference with
    customers as the independent units (``compare_aucs``)."""

    auc_model: float | None
    auc_health: float | None
    se: float | None        # of auc_model - auc_health; None below 2 customers of a class
    churned: int            # distinct customers among the window's churn labels
    stayed: int             # distinct customers among its no-churn labels
    se_model: float | None = None    # of auc_model alone, the same way
    se_health: float | None = None

    @property
    def critical(self) -> float | None:
        """How many ``se`` a difference must reach: Student's t (one-sided, the level of
        ``CHAMPION_Z``) with min(churned, stayed) - 1 degrees of freedom. A variance estimated
        from few customers is itself noisy: with 2 churners, 14 errors; with 30, 2.09."""
        df = min(self.churned, self.stayed) - 1
        return None if self.se is None or df < 1 else float(stdtrit(df, _CHAMPION_LEVEL))


def _placements(pos: Sequence[float], neg: Sequence[float]) -> tuple[list[float], list[float]]:
    """DeLong's placement values: for each positive, the share of negatives it outranks
    (ties 1/2); for each negative, the share of positives that outrank it."""
    neg_sorted, pos_sorted = sorted(neg), sorted(pos)
    n, m = len(neg_sorted), len(pos_sorted)
    v10 = [(bisect_left(neg_sorted, x) + bisect_right(neg_sorted, x)) / (2.0 * n) for x in pos]
    v01 = [1.0 - (bisect_left(pos_sorted, y) + bisect_right(pos_sorted, y)) / (2.0 * m)
           for y in neg]
    return v10, v01


def compare_aucs(model: Sequence[float], health: Sequence[float], labels: Sequence[int],
                 customers: Sequence[str]) -> AucComparison:
    """Both AUCs and the standard error of their difference, paired (both scores of the same
    snapshots) and clustered by customer: Obuchowski's (1997) extension of DeLong's variance
    to correlated units. A customer gives ~30 daily snapshots with the same label, as alike as
    its days; counting them as independent understates the error about as many times over.
    The pairing counts the two scores' correlation, which the independent sum left out."""
    pos = [i for i, y in enumerate(labels) if y]
    neg = [i for i, y in enumerate(labels) if not y]
    churned = len({customers[i] for i in pos})
    stayed = len({customers[i] for i in neg})
    if not pos or not neg:
        return AucComparison(None, None, None, churned, stayed)
    m10, m01 = _placements([model[i] for i in pos], [model[i] for i in neg])
    h10, h01 = _placements([health[i] for i in pos], [health[i] for i in neg])
    auc_m, auc_h = sum(m10) / len(pos), sum(h10) / len(pos)
    if churned < 2 or stayed < 2:
        return AucComparison(auc_m, auc_h, None, churned, stayed)

    def se(v10: list[float], v01: list[float], auc: float) -> float:
        # per customer: its positives' placements minus their count x auc, the same for its
        # negatives (Obuchowski's V10_i - m_i A and V01_i - n_i A)
        by: dict[str, list[float]] = {}
        for k, i in enumerate(pos):
            by.setdefault(customers[i], [0.0, 0.0])[0] += v10[k] - auc
        for k, i in enumerate(neg):
            by.setdefault(customers[i], [0.0, 0.0])[1] += v01[k] - auc
        P, N, n = len(pos), len(neg), len(by)
        s10 = churned / ((churned - 1) * P) * sum(a * a for a, _ in by.values())
        s01 = stayed / ((stayed - 1) * N) * sum(b * b for _, b in by.values())
        s11 = n / (n - 1) * sum(a * b for a, b in by.values())
        return math.sqrt(max(0.0, s10 / P + s01 / N + 2.0 * s11 / (P * N)))

    d10 = [a - b for a, b in zip(m10, h10, strict=True)]
    d01 = [a - b for a, b in zip(m01, h01, strict=True)]
    return AucComparison(auc_m, auc_h, se(d10, d01, auc_m - auc_h), churned, stayed,
                         se(m10, m01, auc_m), se(h10, h01, auc_h))


def choose_champion(current: str, comparison: AucComparison, labelled: int, min_labels: int,
                    margin: float) -> str:
    """Who gives the published probability: the challenger takes over only when its AUC over
    a window of at least ``min_labels`` labelled predictions beats the champion's by
    ``margin`` and by ``comparison.critical`` standard errors of the difference, and beats
    0.5 (a coin) by as many of its own errors, customers counted as the independent units
    (``compare_aucs``); otherwise the champion stays. Less bad than a champion that ranks
    backwards is no reason to change. Without an error (fewer than 2 customers of a class),
    the champion stays too.
    """
    c = comparison
    if labelled < min_labels or c.auc_model is None or c.auc_health is None:
        return current
    critical = c.critical
    if critical is None or c.se is None:
        return current
    needed = max(margin, critical * c.se)
    if (current == "health" and c.auc_model >= c.auc_health + needed
            and c.se_model is not None and c.auc_model >= 0.5 + critical * c.se_model):
        return "model"
    if (current == "model" and c.auc_health >= c.auc_model + needed
            and c.se_health is not None and c.auc_health >= 0.5 + critical * c.se_health):
        return "health"
    return current


# --------------------------------------------------------------------------------------------
# Progressive validation
# --------------------------------------------------------------------------------------------

_EPS = 1e-15


class ProgressiveMetrics:
    """Progressive validation of the scored predictions against their delayed labels.

    Constant memory: counts, a log-loss sum and one histogram of predicted probabilities per
    class (``bins`` equal bins over [0, 1]). Mergeable (``merge``) and serialisable
    (``to_state``), so partial metrics from several places can be added up.

    * accuracy: prediction = churn when p >= ``threshold`` (0.5, the "high" risk band).
    * log loss: mean of -[y ln p + (1-y) ln(1-p)], p clipped to [1e-15, 1 - 1e-15].
    * ROC AUC from the histograms: a (positive, negative) pair in different bins is ordered
      by its bins, a pair in the same bin counts 1/2 (as a tie). Only same-bin pairs can be
      misjudged, each by at most 1/2, so the error is at most ``auc_error_bound()`` =
      Σ_b pos_b·neg_b ÷ (2·P·N): about 1/(2·bins) for well-spread predictions (< 0.001 with
      1000 bins), more if predictions cluster in few bins. None until both classes were seen.
    * precision_top_decile: share of positives among the 10 % highest predictions; the bin
      holding the 10 % boundary contributes pro rata (its positives assumed spread evenly).
    * A label whose prediction was None (made before any model existed) is not scored; it is
      counted in ``unscored`` only. It is still learnt: the caller learns every example.
      ``labelled`` in the record is the number of scored predictions, the n behind every
      figure next to it.
    """

    __slots__ = ("bins", "threshold", "count", "positives", "correct", "log_loss_sum",
                 "unscored", "_neg", "_pos")

    def __init__(self, bins: int = 1000, threshold: float = 0.5) -> None:
        if bins < 1:
            raise ValueError("bins must be >= 1")
        self.bins = bins
        self.threshold = threshold
        self.count = 0
        self.positives = 0
        self.correct = 0
        self.log_loss_sum = 0.0
        self.unscored = 0
        self._neg = [0] * bins
        self._pos = [0] * bins

    def _bin(self, p: float) -> int:
        return min(self.bins - 1, max(0, int(p * self.bins)))

    def update(self, probability: float | None, label: int) -> None:
        """Score one prediction against its label (None: not scored, see the class doc)."""
        if probability is None:
            self.unscored += 1
            return
        p = min(1.0, max(0.0, float(probability)))
        y = 1 if label else 0
        self.count += 1
        self.positives += y
        self.correct += int((p >= self.threshold) == bool(y))
        # The probability given to the true class, at least 1e-15 (clipping p to
        # [1e-15, 1 - 1e-15], without the rounding of 1 - (1 - 1e-15)).
        self.log_loss_sum -= math.log(max(_EPS, p if y else 1.0 - p))
        (self._pos if y else self._neg)[self._bin(p)] += 1

    def update_many(self, pairs: Iterable[tuple[float | None, int]]) -> None:
        """``update`` for each (probability, label)."""
        for p, y in pairs:
            self.update(p, y)

    def merge(self, other: ProgressiveMetrics) -> None:
        """Add another's counts into this one (same bins and threshold)."""
        if other.bins != self.bins or other.threshold != self.threshold:
            raise ValueError("cannot merge metrics with different bins or threshold")
        self.count += other.count
        self.positives += other.positives
        self.correct += other.correct
        self.log_loss_sum += other.log_loss_sum
        self.unscored += other.unscored
        self._neg = [a + b for a, b in zip(self._neg, other._neg, strict=True)]
        self._pos = [a + b for a, b in zip(self._pos, other._pos, strict=True)]

    # ---- figures -------------------------------------------------------------------------

    @property
    def negatives(self) -> int:
        return self.count - self.positives

    def accuracy(self) -> float | None:
        return None if self.count == 0 else self.correct / self.count

    def log_loss(self) -> float | None:
        return None if self.count == 0 else self.log_loss_sum / self.count

    def constant_log_loss(self) -> float | None:
        """Log loss of the best constant predictor (the base rate of the labels scored): what
        a probability must beat to carry any information."""
        if self.count == 0:
            return None
        rate = self.positives / self.count
        if rate in (0.0, 1.0):
            return 0.0
        return -(rate * math.log(rate) + (1.0 - rate) * math.log(1.0 - rate))

    def ece(self, bins: int = 10) -> float | None:
        """Expected calibration error: Σ over ``bins`` equal bins of predicted probability of
        (share of predictions) × |mean prediction − share of churners|. Mean predictions are
        taken at the centres of the fine histogram bins (error <= 1 / (2 · self.bins))."""
        if self.count == 0:
            return None
        n = [0] * bins
        pos = [0] * bins
        psum = [0.0] * bins
        for b in range(self.bins):
            total = self._neg[b] + self._pos[b]
            if not total:
                continue
            centre = (b + 0.5) / self.bins
            k = min(bins - 1, int(centre * bins))
            n[k] += total
            pos[k] += self._pos[b]
            psum[k] += centre * total
        return sum(abs(psum[k] - pos[k]) for k in range(bins) if n[k]) / self.count

    def auc(self) -> float | None:
        """ROC AUC from the histograms (same-bin pairs count 1/2); None without both classes."""
        P, N = self.positives, self.negatives
        if P == 0 or N == 0:
            return None
        pos_above = 0  # positives in bins above the current one
        wins = 0.0
        for b in range(self.bins - 1, -1, -1):
            wins += self._neg[b] * (pos_above + 0.5 * self._pos[b])
            pos_above += self._pos[b]
        return wins / (P * N)

    def auc_error_bound(self) -> float | None:
        """Largest possible |histogram AUC - exact AUC| given the counts held."""
        P, N = self.positives, self.negatives
        if P == 0 or N == 0:
            return None
        return sum(p * n for p, n in zip(self._pos, self._neg, strict=True)) / (2.0 * P * N)

    def precision_top_decile(self) -> float | None:
        """Share of positives among the 10 % highest predictions; None without predictions."""
        if self.count == 0:
            return None
        k = 0.1 * self.count
        taken = 0.0
        hits = 0.0
        for b in range(self.bins - 1, -1, -1):
            total = self._pos[b] + self._neg[b]
            if total == 0:
                continue
            if taken + total >= k:
                hits += self._pos[b] * (k - taken) / total
                return hits / k
            taken += total
            hits += self._pos[b]
        return hits / k  # unreachable: the bins hold count >= k predictions

    def to_record(self, ndigits: int = 4) -> dict[str, Any]:
        """The CONTRACT's ``churn_model`` object (None where a figure is undefined)."""

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, ndigits)

        return {"labelled": self.count, "auc": r(self.auc()), "accuracy": r(self.accuracy()),
                "log_loss": r(self.log_loss()),
                "precision_top_decile": r(self.precision_top_decile()),
                "log_loss_constant": r(self.constant_log_loss()), "ece": r(self.ece())}

    # ---- persistence ---------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Plain JSON form; histograms sparse as [[bin, count], ...] (most bins are empty)."""
        return {"bins": self.bins, "threshold": self.threshold, "n": self.count,
                "pos": self.positives, "correct": self.correct, "ll": self.log_loss_sum,
                "unscored": self.unscored,
                "h0": [[i, c] for i, c in enumerate(self._neg) if c],
                "h1": [[i, c] for i, c in enumerate(self._pos) if c]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> ProgressiveMetrics:
        """Inverse of ``to_state``; None gives empty metrics with the default bins."""
        if not state:
            return cls()
        m = cls(int(state["bins"]), float(state["threshold"]))
        m.count = int(state["n"])
        m.positives = int(state["pos"])
        m.correct = int(state["correct"])
        m.log_loss_sum = float(state["ll"])
        m.unscored = int(state.get("unscored", 0))
        for i, c in state.get("h0", ()):
            m._neg[int(i)] = int(c)
        for i, c in state.get("h1", ()):
            m._pos[int(i)] = int(c)
        return m

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProgressiveMetrics):
            return NotImplemented
        return self.to_state() == other.to_state()


# --------------------------------------------------------------------------------------------
# The customer record
# --------------------------------------------------------------------------------------------


def risk_band(probability: float, high: float = 0.5, medium: float = 0.2) -> str:
    """``churn.risk``: "high" at >= high, "medium" at >= medium, else "low" (``churn.bands``).

    >>> risk_band(0.5), risk_band(0.2), risk_band(0.19)
    ('high', 'medium', 'low')
    """
    if probability >= high:
        return "high"
    if probability >= medium:
        return "medium"
    return "low"


def churn_record(probability: float, model_ready: bool, drivers: list[dict[str, Any]],
                 high: float = 0.5, medium: float = 0.2, ndigits: int = 4) -> dict[str, Any]:
    """The CONTRACT's ``churn`` object of a customer record.

    The band is taken from the published (rounded) probability, so a reader never sees
    "0.5, medium".
    """
    p = round(float(probability), ndigits)
    return {"probability": p, "risk": risk_band(p, high, medium), "model_ready": model_ready,
            "drivers": drivers}
