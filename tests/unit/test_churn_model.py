"""models.churn: feature vector, delayed labels, the River model, progressive metrics.

No broker. Days are integer epoch days; every synthetic data set is seeded.
"""

from __future__ import annotations

import doctest
import math
import random
import statistics
from typing import Any

import orjson
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from models import churn, onboarding
from models.churn import (
    FEATURES,
    FEATURES_VERSION,
    HEALTH_DEFAULTS,
    MAX_DAYS_SINCE_ACTIVITY,
    SEGMENTS,
    STAGES,
    ChurnModel,
    Example,
    LabelBook,
    ProgressiveMetrics,
    churn_record,
    decode,
    encode,
    risk_band,
    snapshot_vector,
)
from streams import events

D = 20513  # 2026-03-01

FULL_RAW = {
    "tenure_days": 120, "segment": "smb", "mrr": 199.0, "mrr_change_30d": -50.0,
    "dau": 3, "wau": 5, "mau": 6, "stickiness": 0.42,
    "active_days_7d": 2, "active_days_prev_7d": 6, "active_days_30d": 17,
    "feature_breadth": 4, "tickets_30d": 2, "weighted_tickets_30d": 3.0,
    "open_urgent_tickets": 1, "failed_payments_90d": 1, "days_since_activity": 3,
    "active_user_days_7d": 7, "active_user_days_28d": 56, "history_days": 120,
    "usage_baseline": 2.5, "tickets_7d": 1, "health_trend_7d": -4.5,
    "stage": "eureka", "health_score": 61.5, "usage_frequency": 85.0,
    "feature_adoption": 40.0, "support": 62.5, "payment": 75.0, "engagement": 55.0,
}


def test_doctests() -> None:
    result = doctest.testmod(churn)
    assert result.attempted > 0 and result.failed == 0


# ---- feature vector -------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    {},
    FULL_RAW,
    {k: None for k in FULL_RAW},
    {"segment": "galactic", "stage": "nirvana", "mrr": float("nan"), "dau": "lots",
     "tenure_days": float("inf")},
])
def test_snapshot_vector_has_always_the_same_keys(raw: dict) -> None:
    vec = snapshot_vector(raw)
    assert tuple(vec) == FEATURES
    assert all(isinstance(v, float) and math.isfinite(v) for v in vec.values())


def test_snapshot_vector_derived_features() -> None:
    vec = snapshot_vector(FULL_RAW)
    assert vec["active_days_trend"] == -4.0  # 2 - 6
    assert vec["log_mrr"] == pytest.approx(math.log1p(199.0))
    assert vec["log_tenure_days"] == pytest.approx(math.log1p(120))
    assert vec["mrr_change_ratio"] == pytest.approx(-50.0 / 249.0)  # MRR 30 days ago: 249
    assert vec["days_since_activity"] == 3.0
    assert vec["usage_7d_vs_28d"] == pytest.approx(0.5)  # 1 a day vs 2 a day over 28 days
    assert vec["usage_vs_baseline"] == pytest.approx(0.4)  # 1 a day vs 2.5 usually
    assert vec["active_user_days_7d"] == 7.0 and vec["tickets_7d"] == 1.0
    assert vec["health_trend_7d"] == -4.5
    assert vec["health_payment"] == 75.0 and vec["health_score"] == 61.5
    assert vec["segment=smb"] == 1.0
    assert sum(vec[f"segment={s}"] for s in SEGMENTS) == 1.0
    assert vec["stage=eureka"] == 1.0
    assert sum(vec[f"stage={s}"] for s in STAGES) == 1.0


def test_snapshot_vector_defaults_and_clipping() -> None:
    vec = snapshot_vector({"tenure_days": 400, "mrr": 100.0, "mrr_change_30d": 100.0,
                           "days_since_activity": None, "segment": "galactic"})
    assert vec["mrr_change_ratio"] == 5.0  # 100 / max(0, 1) = 100, clipped to 5
    assert vec["days_since_activity"] == MAX_DAYS_SINCE_ACTIVITY  # never active: tenure, capped
    assert vec["segment=unknown"] == 1.0 and vec["stage=none"] == 1.0
    for name, default in HEALTH_DEFAULTS.items():
        assert vec[name] == default
    assert snapshot_vector({"mrr": 100.0, "mrr_change_30d": -100.0})["mrr_change_ratio"] == -0.5
    assert snapshot_vector({"mrr": 0.0, "mrr_change_30d": -500.0})["mrr_change_ratio"] == -1.0
    assert snapshot_vector({"tenure_days": 10})["days_since_activity"] == 10.0
    assert snapshot_vector({"tickets_30d": -3})["tickets_30d"] == 0.0  # counts never negative


def test_usage_ratios() -> None:
    # No history to compare with: as usual (1), not "all usage lost".
    vec = snapshot_vector({})
    assert vec["usage_7d_vs_28d"] == 1.0 and vec["usage_vs_baseline"] == 1.0
    assert vec["health_trend_7d"] == 0.0
    # Nobody active in the last 7 days of a customer that used to be: 0.
    vec = snapshot_vector({"active_user_days_7d": 0, "active_user_days_28d": 40,
                           "usage_baseline": 3.0})
    assert vec["usage_7d_vs_28d"] == 0.0 and vec["usage_vs_baseline"] == 0.0
    # A young customer is compared with the days it had (at least a week), and ratios cap.
    young = {"active_user_days_7d": 14, "active_user_days_28d": 20, "history_days": 10}
    assert snapshot_vector(young)["usage_7d_vs_28d"] == pytest.approx(2.0 / 2.0)
    assert snapshot_vector({**young, "history_days": 3})["usage_7d_vs_28d"] == pytest.approx(
        2.0 / (20 / 7))
    assert snapshot_vector({"active_user_days_7d": 70, "usage_baseline": 1.0})[
        "usage_vs_baseline"] == churn.USAGE_RATIO_CAP


def test_categories_match_the_rest_of_the_project() -> None:
    assert STAGES[0] == "none" and set(STAGES[1:]) == set(onboarding.STAGES)
    assert set(SEGMENTS) == set(events.SEGMENTS) | {"unknown"}
    assert len(set(FEATURES)) == len(FEATURES)


def test_encode_decode_round_trip_is_compact() -> None:
    vec = snapshot_vector(FULL_RAW)
    values = encode(vec)
    assert len(values) == len(FEATURES)
    back = decode(orjson.loads(orjson.dumps(values)))
    assert back == pytest.approx(vec, abs=5e-5)
    assert back["segment=smb"] == 1.0
    assert len(orjson.dumps(values)) < 200  # vs ~1 kB as a dict of names
    assert all(isinstance(v, int) for v in values[FEATURES.index("segment=solo"):])
    with pytest.raises(ValueError):
        decode(values[:-1])


# ---- delayed labels ---------------------------------------------------------------------


def vec_of(day: int) -> dict[str, float]:
    """A vector that tells its own day (as a whole number, stored exactly), to check which
    snapshot came back."""
    return snapshot_vector({"feature_breadth": day, "mrr": 100.0})


def day_of_vector(vector: dict[str, float]) -> int:
    return int(vector["feature_breadth"])


def test_churn_on_the_30th_day_is_1_and_on_the_31st_is_0() -> None:
    in_horizon = LabelBook()
    in_horizon.add(D, vec_of(D), 0.3, 4)
    (ex,) = in_horizon.on_churn(D + 29)  # day d0 is the 1st day, d0 + 29 the 30th
    assert (ex.day, ex.label, ex.probability, ex.model_version) == (D, 1, 0.3, 4)
    assert day_of_vector(ex.vector) == D
    assert len(in_horizon) == 0

    after = LabelBook()
    after.add(D, vec_of(D), 0.3, 4)
    (ex,) = after.on_churn(D + 30)
    assert (ex.day, ex.label) == (D, 0)


def test_churn_on_the_snapshot_day_is_1_and_later_snapshots_stay() -> None:
    book = LabelBook()
    for d in range(D, D + 5):
        book.add(d, vec_of(d), 0.1, 1)
    out = book.on_churn(D + 2)
    assert [(e.day, e.label) for e in out] == [(D, 1), (D + 1, 1), (D + 2, 1)]
    assert book.days == [D + 3, D + 4]  # after the churn: a later paying period
    assert book.discard_from(D + 3) == 2 and len(book) == 0


def test_churn_labels_1_within_the_horizon_and_0_beyond() -> None:
    book = LabelBook(settle_days=3)
    for d in range(D, D + 41):
        book.add(d, vec_of(d), None, 0)
    # add(d) settled everything up to d - 1 - 33: days D .. D+6 are gone already (label 0)
    assert book.days[0] == D + 40 - 1 - 33 + 1
    out = book.on_churn(D + 40)
    labels = {e.day: e.label for e in out}
    assert set(labels) == set(range(D + 7, D + 41))
    assert all(labels[d] == 0 for d in range(D + 7, D + 11))  # dc - d0 >= 30: never 1
    assert all(labels[d] == 1 for d in range(D + 11, D + 41))


def test_settle_waits_horizon_plus_settle_days() -> None:
    book = LabelBook()
    book.add(D, vec_of(D), 0.2, 1)
    assert book.settle(D + 29, 0) == []
    (ex,) = book.settle(D + 30, 0)  # d0 + 30 + 0 <= closed day
    assert (ex.day, ex.label) == (D, 0)

    book = LabelBook()
    book.add(D, vec_of(D), 0.2, 1)
    assert book.settle(D + 32, 3) == []
    assert book.settle(D + 33, 3)[0].label == 0
    assert book.settle(D + 60, 3) == []  # once only


def test_settle_days_let_a_late_churn_label_1() -> None:
    book = LabelBook()
    book.add(D, vec_of(D), 0.2, 1)
    assert book.settle(D + 31, 3) == []  # churn on D+29 not seen yet, two days late
    (ex,) = book.on_churn(D + 29)
    assert ex.label == 1


def test_a_settled_snapshot_never_comes_back_as_1() -> None:
    book = LabelBook()
    book.add(D, vec_of(D), 0.2, 1)
    assert [e.label for e in book.settle(D + 33, 3)] == [0]
    assert book.on_churn(D + 29) == []  # too late to matter: it was learnt as 0
    assert book.add(D, vec_of(D), 0.2, 1) == [] and len(book) == 0  # final day: ignored


def test_add_is_idempotent_per_day() -> None:
    book = LabelBook()
    book.add(D, vec_of(1), 0.1, 1)
    book.add(D, vec_of(2), 0.7, 2)
    assert len(book) == 1
    (ex,) = book.on_churn(D + 1)
    assert day_of_vector(ex.vector) == 2 and ex.probability == 0.7 and ex.model_version == 2


def test_days_up_to_a_churn_are_final() -> None:
    book = LabelBook()
    book.add(D, vec_of(D), 0.1, 1)
    book.on_churn(D + 5)
    book.add(D + 5, vec_of(D + 5), 0.1, 1)  # re-run of a day close after a restart
    assert len(book) == 0 and book.final_through == D + 5
    book.add(D + 6, vec_of(D + 6), 0.1, 1)  # reactivated later
    assert book.days == [D + 6]


def test_book_is_bounded_without_settle_calls() -> None:
    book = LabelBook(horizon=30, settle_days=3)
    settled: list[Example] = []
    for d in range(D, D + 200):
        settled += book.add(d, vec_of(d), 0.1, 1)
        assert len(book) <= book.max_pending == 34
    assert [e.day for e in settled] == list(range(D, D + 200 - 34))
    assert all(e.label == 0 for e in settled)
    assert len(settled) + len(book) == 200


def test_book_state_round_trip() -> None:
    book = LabelBook()
    book.add(D, vec_of(D), None, 0)
    book.add(D + 1, vec_of(D + 1), 0.123456789, 3)
    book.settle(D - 1)
    state = orjson.loads(orjson.dumps(book.to_state()))
    back = LabelBook.from_state(state)
    assert back == book and back.final_through == book.final_through
    assert back.to_state() == state
    a, b = back.on_churn(D + 2)
    assert (a.probability, b.probability, b.model_version) == (None, 0.123457, 3)
    assert day_of_vector(b.vector) == D + 1
    assert LabelBook.from_state(None) == LabelBook()


def test_book_of_another_feature_version_drops_its_snapshots() -> None:
    book = LabelBook()
    book.add(D, vec_of(D), 0.1, 1)
    book.settle(D - 1)
    state = book.to_state()
    state[0] = FEATURES_VERSION + 1
    back = LabelBook.from_state(state)
    assert len(back) == 0 and back.final_through == book.final_through


def test_example_record_round_trip() -> None:
    ex = Example(day=D, vector=vec_of(D), label=1, probability=None, model_version=0)
    assert Example.from_record(orjson.loads(orjson.dumps(ex.to_record()))) == ex


def _paying(d0: int, churns: set[int], reactivations: set[int]) -> bool:
    """Paying at d0 00:00: no churn before d0, or a reactivation after the last one."""
    last_churn = max((dc for dc in churns if dc < d0), default=None)
    last_react = max((r for r in reactivations if r < d0), default=None)
    return last_churn is None or (last_react is not None and last_react > last_churn)


def _simulate(days: int, churns: dict[int, int], reactivations: set[int],
              restarts: set[int]) -> tuple[list[Example], set[int]]:
    """One customer over `days` day closes; `churns` maps churn day -> days its event is late.

    Day close of day C: churn events arriving by now are applied (and the ghost snapshots
    taken while they were unknown discarded), the C+1 snapshot is taken if the customer looks
    paying, then the book settles. On a restart day the book goes through orjson and the day
    close runs a second time (a crash between the state write and the offset commit). Returns
    every example, and the snapshot days that were rightly taken (paying at d0 00:00).
    """
    book = LabelBook(horizon=30, settle_days=3)
    out: list[Example] = []
    taken: set[int] = set()

    def close(book: LabelBook, c: int) -> list[Example]:
        res: list[Example] = []
        for dc, lag in churns.items():
            if dc + lag == c:
                res += book.on_churn(dc)
                book.discard_from(dc + 1)
        known = {dc for dc, lag in churns.items() if dc + lag <= c}
        if _paying(c + 1, known, reactivations):
            res += book.add(c + 1, vec_of(c + 1), (c % 97) / 97, 1)
        res += book.settle(c, 3)
        return res

    for c in range(D, D + days):
        out += close(book, c)
        if c in restarts:
            book = LabelBook.from_state(orjson.loads(orjson.dumps(book.to_state())))
            assert close(book, c) == []  # the re-run day close labels nothing again
        if _paying(c + 1, set(churns), reactivations):
            taken.add(c + 1)
    return out, taken


def _truth(d0: int, churns: dict[int, int]) -> int:
    first = min((dc for dc in churns if dc >= d0), default=None)
    return int(first is not None and first - d0 < 30)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_restarts_label_every_snapshot_exactly_once(seed: int) -> None:
    rng = random.Random(seed)
    days = 260
    last_closed = D + days - 1
    churns = {D + 50: 0, D + 140: 2, D + 215: 1}  # churn day: days late
    reactivations = {D + 80, D + 170}
    restarts = {D + d for d in rng.sample(range(days), 60)}
    out, taken = _simulate(days, churns, reactivations, restarts)
    reference, _ = _simulate(days, churns, reactivations, set())
    assert out == reference  # restarts change nothing
    labelled = [e.day for e in out]
    assert len(labelled) == len(set(labelled))  # exactly once
    assert set(labelled) <= taken  # ghost snapshots (taken before a late churn) never learnt
    decided = {d for d in taken if d + 33 <= last_closed or
               any(d <= dc and dc + lag <= last_closed for dc, lag in churns.items())}
    assert decided == set(labelled)  # and nothing decided is left behind
    for e in out:
        assert e.label == _truth(e.day, churns), e.day
    assert sum(e.label for e in out) == 3 * 30  # the 30 snapshots before each churn


# ---- the model ----------------------------------------------------------------------------


def separable(n: int, seed: int) -> list[tuple[dict[str, float], int]]:
    """Churners are the customers whose activity dropped: label = trend <= -3 (~20 %)."""
    rng = random.Random(seed)
    data = []
    for _ in range(n):
        prev = rng.randint(0, 7)
        now = rng.randint(0, 7)
        raw = {**FULL_RAW, "active_days_prev_7d": prev, "active_days_7d": now,
               "segment": rng.choice(SEGMENTS[:4]), "mrr": rng.uniform(20, 5000),
               "tenure_days": rng.randint(1, 900), "health_score": rng.uniform(20, 95),
               "failed_payments_90d": rng.randint(0, 1), "tickets_30d": rng.randint(0, 4)}
        data.append((snapshot_vector(raw), int(now - prev <= -3)))
    return data


def payment_driven(n: int, seed: int) -> list[tuple[dict[str, float], int]]:
    """Churn driven by failed payments only; everything else is noise."""
    rng = random.Random(seed)
    data = []
    for _ in range(n):
        fails = rng.choice([0, 0, 0, 0, 1, 2, 3])
        raw = {**FULL_RAW, "failed_payments_90d": fails, "dau": rng.randint(0, 5),
               "active_days_7d": rng.randint(0, 7), "tickets_30d": rng.randint(0, 4),
               "health_score": rng.uniform(20, 95), "mrr": rng.uniform(20, 5000)}
        p = 0.03 + 0.3 * fails
        data.append((snapshot_vector(raw), int(rng.random() < p)))
    return data


def fit(model: ChurnModel, data: list[tuple[dict[str, float], int]]) -> ChurnModel:
    for x, y in data:
        model.learn(x, y)
    return model


@pytest.mark.parametrize("kind,n", [("logistic", 3000), ("forest", 2000)])
def test_model_learns_a_separable_problem(kind: str, n: int) -> None:
    model = fit(ChurnModel.create(kind, seed=7), separable(n, 1))
    test = separable(1000, 2)
    probs = [model.predict(x) for x, _ in test]
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert roc_auc_score([y for _, y in test], probs) > 0.9
    assert model.learned == n and model.ready(n) and not model.ready(n + 1)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        ChurnModel.create("crystal_ball")


def test_untrained_models() -> None:
    x = snapshot_vector(FULL_RAW)
    assert ChurnModel.create("logistic").predict(x) == 0.5
    assert ChurnModel.create("forest").predict(x) == 0.0
    assert ChurnModel.create("logistic").drivers(x) == []
    assert ChurnModel.create("forest").drivers(x) == []


@pytest.mark.parametrize("kind", ["logistic", "forest"])
def test_dumps_loads_predicts_and_learns_identically(kind: str) -> None:
    data = separable(800, 3)
    model = fit(ChurnModel.create(kind, seed=5), data[:500])
    copy = ChurnModel.loads(model.dumps())
    assert (copy.kind, copy.learned) == (kind, 500)
    test = separable(200, 4)
    assert [copy.predict(x) for x, _ in test] == [model.predict(x) for x, _ in test]
    # a restored learner goes on exactly like the one that never stopped
    fit(model, data[500:])
    fit(copy, data[500:])
    assert [copy.predict(x) for x, _ in test] == [model.predict(x) for x, _ in test]
    assert copy.drivers(test[0][0]) == model.drivers(test[0][0])


def test_loads_refuses_other_pickles() -> None:
    import pickle

    with pytest.raises(ValueError):
        ChurnModel.loads(pickle.dumps({"weights": [1, 2]}))


# ---- published snapshots: data only --------------------------------------------------------

SECRET = "s3cret-for-unit-tests-only"
_SIDE_EFFECTS: list[str] = []


class _Payload:
    """Unpickling this records a side effect: proof that a pickle was (or was not) loaded."""

    def __reduce__(self) -> tuple:
        return (_SIDE_EFFECTS.append, ("unpickled",))


def _refused(blob: bytes, reason: str, secret: str = "") -> None:
    with pytest.raises(churn.SnapshotRefused) as info:
        churn.decode_snapshot(blob, secret)
    assert info.value.reason == reason, info.value


def test_logistic_snapshot_is_json_and_predicts_like_the_learner() -> None:
    model = fit(ChurnModel.create("logistic"), payment_driven(600, 1))
    blob = churn.encode_snapshot(7, model, {"auc": 0.8, "labelled": 10, "champion": "model"})
    data = orjson.loads(blob)                       # plain JSON, no pickle inside
    assert data["kind"] == "logistic" and "pickle" not in data
    assert set(data["model"]["weights"]) == set(FEATURES)
    snap = churn.decode_snapshot(blob)
    assert (snap.version, snap.learned, snap.metrics["auc"]) == (7, 600, 0.8)
    for x, _ in payment_driven(200, 2):             # bit for bit, drivers included
        assert snap.model.predict_explained(x, 3) == model.predict_explained(x, 3)
        assert snap.model.predict(x) == model.predict(x)
    # signed with a secret, it decodes with that secret only
    signed = churn.encode_snapshot(8, model, {}, secret=SECRET)
    assert churn.decode_snapshot(signed, SECRET).version == 8
    _refused(signed, "bad_signature", "another-secret-of-16+")
    _refused(blob, "unsigned", SECRET)              # a secret makes signatures compulsory


@pytest.mark.parametrize("tamper", [
    lambda d: d["model"]["weights"].update(dau="1e3"),              # text, not a number
    lambda d: d["model"]["weights"].update(dau=True),
    lambda d: d["model"]["weights"].update({"__import__('os').system('id')": 1.0}),
    lambda d: d["model"]["scaler"]["vars"].update(dau=-1.0),
    lambda d: d["model"]["scaler"]["counts"].update(dau=2.5),
    lambda d: d["model"].update(intercept=[0.1]),
    lambda d: d["model"].update(code="lambda: exec('x')"),          # extra field
    lambda d: d.update(exec="__import__('os')"),                     # extra field
    lambda d: d.update(version=-1),
    lambda d: d.update(metrics={"auc": "x" * 1000}),
    lambda d: d.update(metrics={"nested": {"a": 1}}),
    lambda d: d.update(calibration={"model": ["1", 0.0]}),
    lambda d: d.update(champion="oracle"),
    lambda d: d.update(kind="svm"),
    lambda d: d.update(pickle="gASVAAAAAAAAAAB9lC4="),             # a pickle in a logistic
])
def test_tampered_json_snapshot_is_refused(tamper: Any) -> None:
    model = fit(ChurnModel.create("logistic"), payment_driven(300, 1))
    data = orjson.loads(churn.encode_snapshot(3, model, {"auc": 0.7}))
    tamper(data)
    _refused(orjson.dumps(data), "bad_field")
    # the same tampering of a signed snapshot fails its signature first
    signed = orjson.loads(churn.encode_snapshot(3, model, {"auc": 0.7}, secret=SECRET))
    tamper(signed)
    _refused(orjson.dumps(signed), "bad_signature", SECRET)


def test_other_feature_lists_and_formats_are_refused() -> None:
    model = fit(ChurnModel.create("logistic"), payment_driven(300, 1))
    data = orjson.loads(churn.encode_snapshot(3, model, {}))
    _refused(orjson.dumps({**data, "format": "customer-vitals/churn-model/1"}), "bad_format")
    _refused(orjson.dumps([data]), "bad_format")
    older = {**data, "model": {**data["model"], "features_version": churn.FEATURES_VERSION - 1}}
    _refused(orjson.dumps(older), "bad_format")
    _refused(b'{"format": "customer-vitals/churn-model/2", "version": NaN}', "not_json")


def test_a_pickle_where_json_is_expected_is_never_unpickled() -> None:
    import pickle

    _SIDE_EFFECTS.clear()
    for secret in ("", SECRET):
        _refused(pickle.dumps(_Payload()), "not_json", secret)
        # what the service published before snapshots were data: a pickled dict
        _refused(pickle.dumps({"version": 9, "model": pickle.dumps(_Payload())}), "not_json",
                 secret)
    assert _SIDE_EFFECTS == []


def test_forest_snapshot_is_signed_and_checked_before_unpickling() -> None:
    import base64
    import pickle

    model = fit(ChurnModel.create("forest", seed=5), payment_driven(300, 1))
    with pytest.raises(ValueError, match="model_secret"):
        churn.encode_snapshot(1, model, {})        # never published unsigned
    with pytest.raises(ValueError, match="model_secret"):
        churn.encode_snapshot(1, model, {}, secret="short")
    blob = churn.encode_snapshot(4, model, {"auc": 0.6}, secret=SECRET)
    snap = churn.decode_snapshot(blob, SECRET)
    test = payment_driven(50, 2)
    assert [snap.model.predict(x) for x, _ in test] == [model.predict(x) for x, _ in test]
    data = orjson.loads(blob)
    _SIDE_EFFECTS.clear()
    _refused(blob, "no_secret", "")                 # nobody to check it: not loaded
    _refused(blob, "bad_signature", "the-wrong-secret-123")
    _refused(orjson.dumps({k: v for k, v in data.items() if k != "hmac_sha256"}), "unsigned",
             SECRET)
    evil = base64.b64encode(pickle.dumps(_Payload())).decode()
    _refused(orjson.dumps({**data, "pickle": evil}), "bad_signature", SECRET)
    assert _SIDE_EFFECTS == []
    # a signed pickle that is not a churn model (the secret leaked, or a bug) is still refused
    bad = churn.encode_snapshot(5, model, {}, secret=SECRET)
    bad_data = orjson.loads(bad)
    bad_data["pickle"] = base64.b64encode(pickle.dumps({"weights": [1]})).decode()
    bad_data.pop("hmac_sha256")
    import hashlib
    import hmac
    bad_data["hmac_sha256"] = hmac.new(churn.signing_key(SECRET), churn._canonical(bad_data),
                                       hashlib.sha256).hexdigest()
    _refused(orjson.dumps(bad_data), "bad_pickle", SECRET)


def test_logistic_contributions_are_weight_times_standardised_value() -> None:
    model = fit(ChurnModel.create("logistic"), payment_driven(500, 1))
    x = payment_driven(1, 9)[0][0]
    scaler = model.estimator["StandardScaler"]
    weights = model.estimator["LogisticRegression"].weights
    z = scaler.transform_one(x)
    contrib = model.contributions(x)
    for name in FEATURES:
        clipped = max(-churn.Z_CLIP, min(churn.Z_CLIP, z.get(name, 0.0)))
        assert contrib[name] == pytest.approx(weights.get(name, 0.0) * clipped)


def test_outliers_are_clipped_after_standardising() -> None:
    model = fit(ChurnModel.create("logistic"), payment_driven(500, 1))
    x = {**payment_driven(1, 9)[0][0], "tickets_30d": 1e6}
    weight = model.estimator["LogisticRegression"].weights["tickets_30d"]
    assert model.contributions(x)["tickets_30d"] == pytest.approx(weight * churn.Z_CLIP)


@pytest.mark.parametrize("kind", ["logistic", "forest"])
def test_predict_explained_is_predict_and_drivers(kind: str) -> None:
    model = fit(ChurnModel.create(kind, seed=3), payment_driven(1500, 1))
    for x, _ in payment_driven(50, 8):
        p, drivers = model.predict_explained(x, 3)
        assert p == model.predict(x)
        assert drivers == model.drivers(x, 3)
    untrained = ChurnModel.create(kind)
    x = payment_driven(1, 9)[0][0]
    assert untrained.predict_explained(x) == (untrained.predict(x), [])


@pytest.mark.parametrize("kind,n", [("logistic", 3000), ("forest", 3000)])
def test_drivers_point_at_what_drives_churn(kind: str, n: int) -> None:
    model = fit(ChurnModel.create(kind, seed=3), payment_driven(n, 1))
    risky = snapshot_vector({**FULL_RAW, "failed_payments_90d": 3, "dau": 2,
                             "active_days_7d": 3, "tickets_30d": 2})
    drivers = model.drivers(risky, k=3)
    assert drivers[0]["feature"] == "failed_payments_90d"
    assert 1 <= len(drivers) <= 3
    contributions = [d["contribution"] for d in drivers]
    assert contributions == sorted(contributions, reverse=True)
    assert all(c > 0 and round(c, 4) == c for c in contributions)
    safe = snapshot_vector({**FULL_RAW, "failed_payments_90d": 0})
    assert "failed_payments_90d" not in [d["feature"] for d in model.drivers(safe)]
    assert model.drivers(risky, k=1) == drivers[:1]


# ---- progressive metrics ------------------------------------------------------------------


def scored(n: int, seed: int, signal: float = 1.0) -> tuple[list[float], list[int]]:
    """Random labels (~15 % positive) and probabilities that lean towards them."""
    rng = random.Random(seed)
    ys = [int(rng.random() < 0.15) for _ in range(n)]
    ps = [1.0 / (1.0 + math.exp(-(rng.gauss(0, 1.2) + signal * (2 * y - 1) - 1.5)))
          for y in ys]
    return ps, ys


@pytest.mark.parametrize("seed,signal", [(1, 1.0), (2, 0.2), (3, 2.5), (4, 0.0)])
def test_metrics_match_sklearn(seed: int, signal: float) -> None:
    ps, ys = scored(5000, seed, signal)
    m = ProgressiveMetrics()
    m.update_many(zip(ps, ys, strict=True))
    exact = roc_auc_score(ys, ps)
    assert m.auc() == pytest.approx(exact, abs=0.002)
    assert abs(m.auc() - exact) <= m.auc_error_bound() + 1e-12
    assert m.log_loss() == pytest.approx(log_loss(ys, ps), rel=1e-9)
    assert m.accuracy() == accuracy_score(ys, [int(p >= 0.5) for p in ps])
    assert (m.count, m.positives) == (5000, sum(ys))


def test_precision_top_decile_matches_sorting() -> None:
    ps, ys = scored(10000, 5)
    m = ProgressiveMetrics()
    m.update_many(zip(ps, ys, strict=True))
    top = sorted(zip(ps, ys, strict=True), reverse=True)[:1000]
    exact = sum(y for _, y in top) / 1000
    assert m.precision_top_decile() == pytest.approx(exact, abs=0.01)
    assert m.precision_top_decile() > 2 * sum(ys) / len(ys)  # better than chance here


def test_precision_top_decile_interpolates_in_the_boundary_bin() -> None:
    m = ProgressiveMetrics(bins=10)
    # 20 predictions: the top 10 % (2) fall in a bin of 4 holding 1 positive -> 0.25
    m.update_many([(0.95, 1), (0.95, 0), (0.95, 0), (0.95, 0)] + [(0.05, 0)] * 16)
    assert m.precision_top_decile() == pytest.approx(0.25)
    m = ProgressiveMetrics(bins=10)
    m.update_many([(0.95, 1), (0.85, 0)] + [(0.05, 0)] * 8)  # k = 1: the single top one
    assert m.precision_top_decile() == 1.0


def test_metrics_edge_cases() -> None:
    m = ProgressiveMetrics()
    assert m.to_record() == {"labelled": 0, "auc": None, "accuracy": None, "log_loss": None,
                             "precision_top_decile": None, "log_loss_constant": None,
                             "ece": None}
    m.update(None, 1)  # no model when this snapshot was taken: not scored
    assert m.count == 0 and m.unscored == 1 and m.to_record()["labelled"] == 0
    m.update(0.5, 1)  # the threshold itself predicts churn
    m.update(0.2, 1)
    assert m.accuracy() == 0.5 and m.auc() is None  # one class only: no AUC
    m.update(1.0, 0)  # clipped, not infinite
    assert math.isfinite(m.log_loss())
    assert m.log_loss() == pytest.approx((-math.log(0.5) - math.log(0.2) - math.log(1e-15)) / 3)
    assert m.auc() == 0.0  # the only negative is ranked above every positive


def test_metrics_ties_and_perfect_ranking() -> None:
    ties = ProgressiveMetrics()
    ties.update_many([(0.3, 1), (0.3, 0), (0.3, 0), (0.3, 1)])
    assert ties.auc() == 0.5 == roc_auc_score([1, 0, 0, 1], [0.3] * 4)
    perfect = ProgressiveMetrics()
    perfect.update_many([(0.9, 1)] * 20 + [(0.1, 0)] * 80)
    assert perfect.auc() == 1.0 and perfect.precision_top_decile() == 1.0
    assert perfect.accuracy() == 1.0


def test_metrics_merge_and_state_round_trip() -> None:
    ps, ys = scored(3000, 6)
    whole = ProgressiveMetrics()
    whole.update_many(zip(ps, ys, strict=True))
    whole.update(None, 0)
    a, b = ProgressiveMetrics(), ProgressiveMetrics()
    a.update_many(zip(ps[:1000], ys[:1000], strict=True))
    b.update_many(zip(ps[1000:], ys[1000:], strict=True))
    b.update(None, 0)
    a.merge(b)
    assert a.to_record() == whole.to_record()
    assert a.count == whole.count and a.unscored == 1
    assert a.log_loss_sum == pytest.approx(whole.log_loss_sum)
    state = orjson.loads(orjson.dumps(whole.to_state()))
    back = ProgressiveMetrics.from_state(state)
    assert back == whole and back.to_record() == whole.to_record()
    assert len(orjson.dumps(state)) < 20000
    assert ProgressiveMetrics.from_state(None) == ProgressiveMetrics()
    with pytest.raises(ValueError):
        a.merge(ProgressiveMetrics(bins=100))


# ---- record -------------------------------------------------------------------------------


def test_risk_band_boundaries() -> None:
    assert risk_band(0.5) == "high" and risk_band(0.4999) == "medium"
    assert risk_band(0.2) == "medium" and risk_band(0.1999) == "low"
    assert risk_band(0.35, high=0.3, medium=0.1) == "high"
    assert risk_band(0.0) == "low" and risk_band(1.0) == "high"


def test_churn_record_bands_the_published_probability() -> None:
    drivers = [{"feature": "active_days_trend", "contribution": 0.8}]
    rec = churn_record(0.49996, True, drivers)
    assert rec == {"probability": 0.5, "risk": "high", "model_ready": True, "drivers": drivers}
    assert churn_record(0.1234567, False, [])["probability"] == 0.1235


# ---- calibration and the champion ---------------------------------------------------------


def test_platt_calibrator_recovers_a_known_calibration() -> None:
    rng = random.Random(5)
    cal = churn.PlattCalibrator(-6.0, 6.0, 240)
    assert cal.fit() is None                       # nothing learnt: no calibration
    for _ in range(40000):
        s = rng.uniform(-4.0, 3.0)
        cal.learn(s, int(rng.random() < churn.sigmoid(1.5 * s - 2.0)))
    a, b = cal.fit()
    assert a == pytest.approx(1.5, abs=0.08) and b == pytest.approx(-2.0, abs=0.08)
    back = churn.PlattCalibrator.from_state(orjson.loads(orjson.dumps(cal.to_state())))
    assert back.fit() == pytest.approx([a, b])
    cal.decay(0.5)
    assert cal.counts[0] == pytest.approx(back.counts[0] / 2)
    assert cal.fit() == pytest.approx([a, b], abs=1e-3)  # halving every count: the same fit


def test_platt_of_a_backwards_score_has_a_negative_slope() -> None:
    rng = random.Random(6)
    cal = churn.health_calibrator()
    for _ in range(5000):
        h = rng.uniform(0, 100)
        cal.learn(h, int(rng.random() < 0.4 * (1 - h / 100)))
    a, _ = cal.fit()
    assert a < 0
    assert churn.platt(cal.fit(), 10.0) > churn.platt(cal.fit(), 90.0)


def test_auc_exact_matches_sklearn_with_ties() -> None:
    rng = random.Random(2)
    scores = [rng.choice([0.1, 0.2, 0.2, 0.5, 0.9]) for _ in range(300)]
    labels = [int(rng.random() < s) for s in scores]
    assert churn.auc_exact(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert churn.auc_exact([0.3, 0.4], [1, 1]) is None


def _comparison(auc_model: float | None, auc_health: float | None, se: float | None = 0.001,
                churned: int = 100, stayed: int = 500) -> churn.AucComparison:
    return churn.AucComparison(auc_model, auc_health, se, churned, stayed, se, se)


@pytest.mark.parametrize("current,auc_model,auc_health,n,expected", [
    ("health", 0.80, 0.70, 999, "health"),        # too few labels: no change
    ("health", 0.705, 0.70, 1000, "health"),       # within the margin: the champion stays
    ("health", 0.711, 0.70, 1000, "model"),
    ("model", 0.70, 0.705, 5000, "model"),
    ("model", 0.70, 0.711, 5000, "health"),
    ("model", None, 0.9, 5000, "model"),           # one class only in the window
])
def test_choose_champion(current: str, auc_model: float | None, auc_health: float | None,
                         n: int, expected: str) -> None:
    comparison = _comparison(auc_model, auc_health)
    assert churn.choose_champion(current, comparison, n, 1000, 0.01) == expected


@pytest.mark.parametrize("current,auc_model,auc_health,expected", [
    # error of the difference 0.017; 100 churned customers: t(99) = 2.03 errors → 0.035
    ("health", 0.545, 0.535, "health"),    # beats the fixed 0.01 margin, not the noise
    ("health", 0.565, 0.535, "health"),
    ("health", 0.575, 0.535, "model"),
    ("model", 0.70, 0.72, "model"),
    ("model", 0.70, 0.74, "health"),
])
def test_choose_champion_needs_a_significant_difference(current: str, auc_model: float,
                                                        auc_health: float,
                                                        expected: str) -> None:
    assert churn.choose_champion(current, _comparison(auc_model, auc_health, 0.017), 5000,
                                 1000, 0.01) == expected
    # a margin larger than the noise still applies
    assert churn.choose_champion("health", _comparison(0.575, 0.535, 0.017), 5000, 1000,
                                 0.05) == "health"


def test_few_customers_need_more_errors_and_two_are_needed() -> None:
    assert _comparison(0.7, 0.6, 0.01, churned=30).critical == pytest.approx(2.09, abs=0.01)
    assert _comparison(0.7, 0.6, 0.01, churned=2).critical == pytest.approx(13.97, abs=0.01)
    assert _comparison(0.7, 0.6, 0.01, churned=10_000).critical == pytest.approx(2.0, abs=0.01)
    # 0.1 apart at an error of 0.03: 3.3 errors, enough with 30 churned customers, not with 3
    assert churn.choose_champion("health", _comparison(0.7, 0.6, 0.03, churned=30), 5000, 1000,
                                 0.01) == "model"
    assert churn.choose_champion("health", _comparison(0.7, 0.6, 0.03, churned=3), 5000, 1000,
                                 0.01) == "health"
    # one churned customer: no error to test against, the champion stays
    assert churn.choose_champion("health", _comparison(0.99, 0.5, None, churned=1), 5000, 1000,
                                 0.01) == "health"


def test_less_bad_than_a_backwards_champion_is_no_reason_to_change() -> None:
    # a window where both rank below a coin, the health score more so: 0.417 against 0.334 is
    # 2.4 errors of the difference (t = 2.13 with 21 churned customers), but the model is
    # not shown to rank at all
    backwards = churn.AucComparison(0.417, 0.334, 0.034, 21, 144, 0.05, 0.05)
    assert churn.choose_champion("health", backwards, 1500, 1000, 0.01) == "health"
    # the same difference above a coin is a takeover
    above = churn.AucComparison(0.717, 0.634, 0.034, 21, 144, 0.05, 0.05)
    assert churn.choose_champion("health", above, 1500, 1000, 0.01) == "model"
    # and the health score takes back over only if it is shown to rank, too
    assert churn.choose_champion("model", churn.AucComparison(0.334, 0.417, 0.034, 21, 144,
                                                              0.05, 0.05),
                                 1500, 1000, 0.01) == "model"


def _delong_by_pairs(model: list[float], health: list[float], labels: list[int]
                     ) -> tuple[float, float, float]:
    """DeLong's paired variance of the AUC difference, independent units, by every pair."""
    def psi(a: float, b: float) -> float:
        return 1.0 if a > b else 0.5 if a == b else 0.0

    pos = [i for i, y in enumerate(labels) if y]
    neg = [i for i, y in enumerate(labels) if not y]
    d10 = [sum(psi(model[i], model[j]) - psi(health[i], health[j]) for j in neg) / len(neg)
           for i in pos]
    d01 = [sum(psi(model[i], model[j]) - psi(health[i], health[j]) for i in pos) / len(pos)
           for j in neg]
    var = statistics.variance(d10) / len(pos) + statistics.variance(d01) / len(neg)
    return roc_auc_score(labels, model), roc_auc_score(labels, health), math.sqrt(var)


def test_compare_aucs_is_delong_when_every_snapshot_is_its_own_customer() -> None:
    rng = random.Random(8)
    labels = [int(rng.random() < 0.3) for _ in range(120)]
    model = [round(rng.gauss(0.8 * y, 1.0), 1) for y in labels]        # rounded: ties
    health = [round(m + rng.gauss(0.0, 1.0), 1) for m in model]        # correlated with it
    c = churn.compare_aucs(model, health, labels, [f"c{i}" for i in range(len(labels))])
    auc_m, auc_h, se = _delong_by_pairs(model, health, labels)
    assert c.auc_model == pytest.approx(auc_m) and c.auc_health == pytest.approx(auc_h)
    assert c.se == pytest.approx(se, rel=1e-9)
    assert (c.churned, c.stayed) == (sum(labels), len(labels) - sum(labels))


def _clustered(rng: random.Random, churned: int, stayed: int, days: int,
               effect: float) -> tuple[list[float], list[float], list[int], list[str]]:
    """Customers with ``days`` daily snapshots each, of one label: each score is the
    customer's level (the model's shifted by ``effect`` for churners, the health score's by
    half as much, the two correlated) plus a smaller daily wobble."""
    model: list[float] = []
    health: list[float] = []
    labels: list[int] = []
    customers: list[str] = []
    for k in range(churned + stayed):
        y = int(k < churned)
        level = rng.gauss(0.0, 1.0)
        m_level = level + rng.gauss(effect * y, 0.7)
        h_level = level + rng.gauss(0.5 * effect * y, 0.7)
        for _ in range(days):
            model.append(m_level + rng.gauss(0.0, 0.3))
            health.append(h_level + rng.gauss(0.0, 0.3))
            labels.append(y)
            customers.append(f"c{k}")
    return model, health, labels, customers


def test_compare_aucs_error_matches_the_spread_over_customers() -> None:
    # 200 windows of 30 churned and 120 other customers x 15 snapshots: the error counted by
    # customer matches the spread of the difference; counted by snapshot (each its own
    # customer) it is a fraction of it, and a difference of noise looks significant.
    rng = random.Random(11)
    diffs, errors, naive, models, model_errors = [], [], [], [], []
    for _ in range(200):
        m, h, y, c = _clustered(rng, 30, 120, 15, effect=0.6)
        cmp = churn.compare_aucs(m, h, y, c)
        diffs.append(cmp.auc_model - cmp.auc_health)
        errors.append(cmp.se)
        models.append(cmp.auc_model)
        model_errors.append(cmp.se_model)
        naive.append(churn.compare_aucs(m, h, y, [str(i) for i in range(len(y))]).se)
    spread = statistics.stdev(diffs)
    assert statistics.mean(errors) == pytest.approx(spread, rel=0.2)
    assert statistics.mean(naive) < 0.4 * spread
    assert statistics.mean(model_errors) == pytest.approx(statistics.stdev(models), rel=0.2)


def test_thirty_snapshots_of_two_churners_are_not_evidence() -> None:
    # 2 churned customers x 30 identical snapshots, 60 others x 30: the model ranks both
    # churners high, the health score one of them. Counted as 60 churn snapshots, 0.90 against
    # 0.63 is many errors apart; it is 2 customers, and one may be luck.
    model, health, labels, customers = [], [], [], []
    for k in range(62):
        y = int(k < 2)
        m = (0.9 + 0.05 * k) if y else k / 60
        h = (0.95 if k == 0 else 0.3) if y else (k * 37 % 60) / 60
        for _ in range(30):
            model.append(m)
            health.append(h)
            labels.append(y)
            customers.append(f"c{k}")
    c = churn.compare_aucs(model, health, labels, customers)
    assert c.auc_model > 0.9 and c.auc_health < 0.65 and (c.churned, c.stayed) == (2, 60)
    assert churn.choose_champion("health", c, len(labels), 1000, 0.01) == "health"
    # the same figures from 60 churned and 1,800 other customers would be evidence
    alone = churn.compare_aucs(model, health, labels, [str(i) for i in range(len(labels))])
    assert churn.choose_champion("health", alone, len(labels), 1000, 0.01) == "model"


def test_a_real_difference_over_many_customers_still_takes_over() -> None:
    m, h, y, c = _clustered(random.Random(3), 40, 160, 30, effect=2.0)
    cmp = churn.compare_aucs(m, h, y, c)
    assert cmp.auc_model - cmp.auc_health > 0.1
    assert churn.choose_champion("health", cmp, len(y), 1000, 0.01) == "model"


def test_ece_and_constant_log_loss() -> None:
    rng = random.Random(4)
    calibrated, overconfident = ProgressiveMetrics(), ProgressiveMetrics()
    pairs = []
    for _ in range(20000):
        p = rng.uniform(0.0, 0.5)
        y = int(rng.random() < p)
        pairs.append((p, y))
        calibrated.update(p, y)
        overconfident.update(min(1.0, 2 * p), y)
    assert calibrated.ece() < 0.02 and overconfident.ece() > 0.2
    # ECE by hand over 10 equal bins (the histogram's bin centres, 1/2000 at most apart)
    by_bin: dict[int, list[tuple[float, int]]] = {}
    for p, y in pairs:
        by_bin.setdefault(min(9, int(p * 10)), []).append((p, y))
    direct = sum(abs(sum(p for p, _ in v) - sum(y for _, y in v)) for v in by_bin.values())
    assert calibrated.ece() == pytest.approx(direct / len(pairs), abs=1e-3)
    rate = sum(y for _, y in pairs) / len(pairs)
    assert calibrated.constant_log_loss() == pytest.approx(
        log_loss([y for _, y in pairs], [rate] * len(pairs)))
    record = calibrated.to_record()
    assert record["log_loss"] < record["log_loss_constant"] and record["ece"] < 0.02


def test_book_keeps_the_candidate_scores_of_each_snapshot() -> None:
    book = LabelBook()
    book.add(100, {}, 0.3, 2, [0.5, 0.3, 0.2])
    book.add(101, {}, None, 0)
    back = LabelBook.from_state(orjson.loads(orjson.dumps(book.to_state())))
    assert back == book
    out = back.on_churn(110)
    assert [e.scores for e in out] == [(0.5, 0.3, 0.2), None]
    assert Example.from_record(orjson.loads(orjson.dumps(out[0].to_record()))) == out[0]


def test_platt_slope_bounds_clamp_and_refit_the_intercept() -> None:
    rng = random.Random(8)
    cal = churn.PlattCalibrator(-6.0, 6.0, 240, (0.0, 1.0))
    for _ in range(20000):
        s = rng.uniform(-3.0, 3.0)
        cal.learn(s, int(rng.random() < churn.sigmoid(2.5 * s - 1.0)))
    a, b = cal.fit()
    assert a == 1.0                                  # clamped from ~2.5
    # the intercept is the best one for that slope: the predicted churners match the count
    predicted = sum((p + n) * churn.platt([a, b], cal.centre(i))
                    for i, (p, n) in enumerate(zip(cal.pos, cal.neg, strict=True)))
    assert predicted == pytest.approx(cal.counts[0], rel=0.01)
    backwards = churn.model_calibrator()
    for _ in range(2000):
        s = rng.uniform(-3.0, 3.0)
        backwards.learn(s, int(rng.random() < churn.sigmoid(-s)))
    assert backwards.fit()[0] == 0.0                 # never reverses the model's ranking


def test_weights_keep_their_known_signs_and_drivers_are_actionable() -> None:
    rng = random.Random(12)
    data = []
    for _ in range(3000):   # churn from failed payments; activity features strongly correlated
        days = rng.randint(0, 7)
        raw = {**FULL_RAW, "active_days_7d": days, "dau": days + rng.randint(0, 1),
               "active_days_30d": 4 * days + rng.randint(0, 2),
               "tenure_days": rng.randint(1, 1500), "failed_payments_90d": rng.choice([0, 0, 1, 2])}
        data.append((snapshot_vector(raw), int(rng.random() < 0.05 + 0.25 * raw["failed_payments_90d"]
                                               + 0.002 * raw["tenure_days"] / 15)))
    model = fit(ChurnModel.create("logistic"), data)
    weights = model.estimator["LogisticRegression"].weights
    for name, sign in churn.FEATURE_SIGNS.items():
        assert weights.get(name, 0.0) * sign >= 0, name
    assert weights["log_tenure_days"] > 0        # the data decides tenure: here it is a risk
    healthy_veteran = snapshot_vector({**FULL_RAW, "tenure_days": 1500, "active_days_7d": 7,
                                       "dau": 7, "active_days_30d": 29, "failed_payments_90d": 0})
    names = [d["feature"] for d in model.drivers(healthy_veteran, k=5)]
    assert not set(names) & churn.NOT_DRIVERS
    assert not {"active_days_7d", "dau", "active_days_30d"} & set(names)
