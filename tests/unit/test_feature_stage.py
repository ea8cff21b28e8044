"""The feature stage (streams/features.py): merge per partition, resends, alerts, gauges."""
from __future__ import annotations

from typing import Any

import orjson
from prometheus_client.core import GaugeMetricFamily

from models.activity import DAY_SECONDS
from models.features import FeatureContribution
from streams.exporters.web import by_retention_impact
from streams.features import FeatureAggregator, decode_feature, encode_feature
from streams.settings import load_settings

R = 20500  # release day of "reports" (first seen)


def settings(**env: str):
    return load_settings(env={"VITALS_APP__PARTITIONS": "2", **env})


def part(feature: str, day: int, users: int, active: int, p: int = 0) -> dict[str, Any]:
    c = FeatureContribution(feature, day, first_seen=R * DAY_SECONDS + 3600,
                            active_users=active, feature_users=users, dau_sum=users * 3,
                            active_customers=active // 2, feature_customers=users // 2)
    return {"p": p, "c": c.to_state()}


def feed(stage: FeatureAggregator, feature: str, day: int, users: tuple[int, int],
         active: tuple[int, int] = (50, 50)) -> dict[str, dict[str, Any]]:
    for p in (0, 1):
        stage.apply(feature, part(feature, day, users[p], active[p], p))
    out = stage.flush()
    return {"records": {k: orjson.loads(v) for k, v in out.records},
            "alerts": [orjson.loads(v) for _, v in out.alerts]}


def test_partitions_add_up_and_a_resend_changes_nothing() -> None:
    store: dict[str, Any] = {}
    stage = FeatureAggregator(settings(), store)
    rec = feed(stage, "reports", R + 10, (10, 20))["records"]["reports"]
    assert (rec["feature_users_30d"], rec["active_users_30d"]) == (30, 100)
    assert rec["adoption_rate"] == 0.3
    assert rec["as_of"] == "2026-02-27T00:00:00Z"          # day close of R + 10 = 2026-02-26
    again = feed(stage, "reports", R + 10, (10, 20))["records"]["reports"]
    assert again == rec
    # The stored state round-trips through the changelog codec.
    restored = FeatureAggregator(settings(), {"reports": decode_feature(encode_feature(
        store["reports"]))})
    restored.apply("reports", part("reports", R + 10, 10, 50, 0))
    assert orjson.loads(restored.flush().records[0][1]) == rec


def test_adoption_low_fires_once_when_the_30_days_after_release_are_known(caplog) -> None:
    stage = FeatureAggregator(settings(), {})
    fired = []
    for day in range(R, R + 40):
        out = feed(stage, "reports", day, (2, 3))          # 5 of 100 users: 5 %
        fired += out["alerts"]
        after = out["records"]["reports"]["adoption_30d_after_release"]
        # released R 01:00, lateness 2 days: fixed at the close of R+32 (as of R+33 00:00,
        # the first close at or past R + 32 d 01:00); these parts carry no exact counts, so
        # the window of the UTC days R … R+29 counts (5 of 100)
        assert (after is None) == (day < R + 32), (day, after)
    assert [a["status"] for a in fired] == ["firing"]
    # counted by UTC days (no partition sent exact counts): said once, not silently
    said = [r.getMessage() for r in caplog.records if "by UTC days" in r.getMessage()]
    assert len(said) == 1 and "partitions [0, 1]" in said[0]
    alert = fired[0]
    assert alert["alert_id"] == "feature_adoption_low:reports"
    assert alert["subject"] == {"feature": "reports"} and alert["value"] == 0.05
    assert any("iscoverab" in a for a in alert["actions"])
    assert "5%" in alert["summary"] and "reports" in alert["summary"]


def test_adoption_low_is_judged_at_the_close_that_fixed_it_whatever_close_is_flushed_first(
        ) -> None:
    """The after-release figure is fixed at the close of R+32. A flush that first merges a
    later close (a catch-up that coalesced days) fires with the same as_of as a flush at R+32."""
    stamps = []
    for first_flushed in (R + 32, R + 37):
        stage = FeatureAggregator(settings(), {})
        for day in range(R, R + 30):
            assert feed(stage, "reports", day, (2, 3))["alerts"] == []
        out = feed(stage, "reports", first_flushed, (2, 3))
        assert [a["status"] for a in out["alerts"]] == ["firing"]
        stamps.append(out["alerts"][0]["as_of"])
    assert stamps[0] == stamps[1] == "2026-03-21T00:00:00Z"      # R + 33 00:00


def test_a_well_adopted_feature_does_not_fire() -> None:
    stage = FeatureAggregator(settings(), {})
    fired = []
    for day in range(R, R + 40):
        fired += feed(stage, "reports", day, (30, 20))["alerts"]
    assert fired == []


def _samples(families: list[GaugeMetricFamily], name: str) -> dict[str, float]:
    family = next(f for f in families if f.name == name)
    return {s.labels["feature"]: s.value for s in family.samples}


def test_gauge_labels_are_configured_features_plus_other() -> None:
    stage = FeatureAggregator(settings(VITALS_FEATURES__CONFIGURED='["reports"]'), {})
    feed(stage, "reports", R + 5, (10, 10))
    feed(stage, "exports", R + 5, (5, 5))
    feed(stage, "sso", R + 5, (15, 15))
    adoption = _samples(stage.gauges(), "vitals_feature_adoption_ratio")
    assert adoption == {"reports": 0.2, "other": (0.1 + 0.3) / 2}


def test_feature_view_sorts_by_retention_impact() -> None:
    records = [{"feature": "a", "retention_impact": 0.05}, {"feature": "b", "retention_impact": None},
               {"feature": "c", "retention_impact": 0.2}, {"feature": "d", "retention_impact": -0.1}]
    assert [r["feature"] for r in by_retention_impact(records)] == ["c", "a", "d", "b"]


def test_stickiness_of_a_young_feature_averages_over_the_days_since_release() -> None:
    # reports first seen on day R at 01:00; 30 users, Σ DAU_f = 90 in the window.
    stage = FeatureAggregator(settings(), {})
    young = feed(stage, "reports", R + 4, (10, 20))["records"]["reports"]
    # day close of R+4: n = min(30, (R+4) − R + 1) = 5 → (90 / 5) / 30 = 0.6
    assert young["stickiness"] == 0.6
    grown = feed(stage, "reports", R + 29, (10, 20))["records"]["reports"]
    assert grown["stickiness"] == 0.1                     # n = 30: (90 / 30) / 30
    old = feed(stage, "reports", R + 45, (10, 20))["records"]["reports"]
    assert old["stickiness"] == 0.1                       # n stays 30


def test_adoption_after_release_from_the_exact_counts_of_every_partition() -> None:
    # Released R 14:13:57 (configured); lateness 2 days → fixed at the close of R+32.
    release = R * DAY_SECONDS + 14 * 3600 + 13 * 60 + 57
    stage = FeatureAggregator(settings(VITALS_FEATURES__RELEASED__reports=
                                       '"2026-02-16T14:13:57+00:00"'), {})
    assert stage.released["reports"] == release

    def send(day: int, exact: tuple[int, int, int, int] | None) -> dict[str, Any]:
        for p in (0, 1):
            c = FeatureContribution("reports", day, active_users=50, feature_users=10)
            if exact is not None:
                c.set_after_release(release, exact[2 * p], exact[2 * p + 1])
            stage.apply("reports", {"p": p, "c": c.to_state()})
        return orjson.loads(stage.flush().records[0][1])

    assert send(R + 31, None)["adoption_30d_after_release"] is None
    # [R, R+30d): partition 0 has 12 of 40 users, partition 1 has 7 of 35 → 19/75 = 0.2533
    rec = send(R + 32, (12, 40, 7, 35))
    assert rec["adoption_30d_after_release"] == 0.2533 and rec["as_of"] == "2026-03-21T00:00:00Z"
    # fixed: later (different) counts change nothing
    assert send(R + 33, (1, 1, 1, 1))["adoption_30d_after_release"] == 0.2533


def test_exact_after_release_window_from_the_customer_stage_with_a_late_event() -> None:
    """reports released (configured) on day R0 at 14:13:57; lateness 2 days. Customer c-1:
    u1 usage R0 10:00 (before R: out); u2 usage R0 15:00 (in); u3 reports R0+10 12:00 (in, a
    user of f); u4 usage R0+30 14:00 (before R+30d: in); u5 reports R0+30 15:00 (after R+30d:
    out); u6 usage R0+30 13:00 arrives late, when the watermark is R0+31 12:00 (23 h behind,
    within the lateness): in. [R, R+30d): 1 user of f of 4 active users = 0.25; fixed at the
    close of R0+32 (as of R0+33 00:00), null before. (The UTC days R0 … R0+29 would give 1/3.)
    The watermark moves with CSAT answers of another customer: no activity of its own."""
    from streams.exporters.metrics import Metrics
    from streams.processor import CustomerProcessor
    from tests.unit.test_health_in_processor import event, usage

    r0 = 20500
    release = r0 * DAY_SECONDS + 14 * 3600 + 13 * 60 + 57
    s = load_settings(env={"VITALS_APP__PARTITIONS": "1",
                           "VITALS_FEATURES__RELEASED__reports": '"2026-02-16T14:13:57+00:00"'})
    proc = CustomerProcessor(s, {}, {}, Metrics(), partition_of=lambda cid: 0, wall_clock=None)
    stage = FeatureAggregator(s, {})
    assert stage.released["reports"] == release

    def at(day: int, hour: float) -> float:
        return (r0 + day) * DAY_SECONDS + hour * 3600

    def feature(user: str, ts: float) -> dict[str, Any]:
        return event("feature", "c-1", ts, user_id=user, feature="reports")

    script = {0: [event("signup", "c-1", at(0, 8), segment="smb"),
                  usage("c-1", at(0, 10), "u1", "login"), usage("c-1", at(0, 15), "u2", "login")],
              10: [feature("u3", at(10, 12))],
              30: [usage("c-1", at(30, 14), "u4", "login"), feature("u5", at(30, 15))]}
    after: dict[str, Any] = {}
    for k in range(0, 35):
        batch = [event("support", "tick", at(k, 0.5), type="csat", score=5),
                 event("support", "tick", at(k, 12), type="csat", score=5), *script.get(k, [])]
        assert proc.apply(0, sorted(batch, key=lambda e: e["ts"])) == []
        if k == 31:
            assert proc.apply(0, [usage("c-1", at(30, 13), "u6", "login")]) == []
        for f, value in proc.flush().features:
            stage.apply(f, orjson.loads(value))
        for _, value in stage.flush().records:
            rec = orjson.loads(value)
            after[rec["as_of"]] = rec["adoption_30d_after_release"]
    assert after["2026-03-20T00:00:00Z"] is None            # the close of R0+31
    assert after["2026-03-21T00:00:00Z"] == 0.25            # the close of R0+32: fixed
    assert after["2026-03-22T00:00:00Z"] == 0.25
    assert [v for v in after.values() if v is not None] == [0.25, 0.25]
