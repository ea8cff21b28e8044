"""Health decays without events, alerts fire and resolve once each, also across a restart."""
from __future__ import annotations

import time

from tests.integration.conftest import DAY, WorkerProcess, iso
from tests.integration.helpers import signup, tick, usage
from tests.integration.kafka import In, Out

FAMILIES = ("signup", "usage", "feature", "billing", "support")


def _env() -> dict[str, str]:
    env = {f"VITALS_TOPICS__{f.upper()}": f"hl.events.{f}" for f in FAMILIES}
    env.update({"VITALS_APP__ID": "hl", "VITALS_APP__LOG_LEVEL": "info", "VITALS_TOPICS__CUSTOMER": "hl.customer",
                "VITALS_TOPICS__REPARTITION": "hl.internal", "VITALS_TOPICS__ALERTS": "hl.alerts",
                "VITALS_TOPICS__DEADLETTER": "hl.deadletter"})
    return env


def test_green_yellow_red_one_firing_one_resolution_across_a_restart(broker, tmp_path):
    p = 2524608000.0  # 2050-01-01, its own topics anyway
    c = "hl-scripted"
    prod = In(broker.address)
    worker = WorkerProcess(broker.url, tmp_path / "w.log", **_env()).start()
    customers = Out(broker.address, "hl.customer")
    alerts = Out(broker.address, "hl.alerts")

    def health_at(day: int) -> dict:
        """Health over the days up to `day`: its close, published as of day + 1 00:00 when the
        tick enters the next day."""
        tick(prod, customers, "hl", p + (day + 1.01) * DAY, topic="hl.events.usage")
        rec = customers.wait_for(
            lambda o: o.latest.get(c, {}).get("as_of") == iso(p + (day + 1) * DAY)
            and o.latest[c])
        return rec["health"]

    try:
        prod.send("hl.events.signup", signup(c, p + 0.1 * DAY, seats=5))
        prod.send("hl.events.billing", {"event_id": "b1", "customer_id": c, "ts": iso(p + 0.2 * DAY),
                                        "type": "subscription_started", "mrr": 99})
        prod.send("hl.events.billing", {"event_id": "b2", "customer_id": c, "ts": iso(p + 0.3 * DAY),
                                        "type": "payment_succeeded", "amount": 99})
        for d in range(30):
            for u in range(5):
                prod.send("hl.events.usage", usage(c, f"u{u}", p + (d + 0.5) * DAY,
                                                   action="report_created"))
            if d % 5 == 4:  # move every partition along so none of these is too late
                prod.flush()
                tick(prod, customers, "hl", p + (d + 0.6) * DAY, topic="hl.events.usage")
        prod.flush()
        assert health_at(30)["grade"] == "green"

        def tickets(day: int) -> None:
            for t in range(3):
                prod.send("hl.events.support", {
                    "event_id": f"t{day}-{t}", "customer_id": c, "ts": iso(p + (day + 0.5) * DAY),
                    "type": "ticket_opened", "ticket_id": f"T{day}-{t}", "priority": "high"})
            prod.flush()
            tick(prod, customers, "hl", p + (day + 0.6) * DAY, topic="hl.events.usage")

        # Usage stops; three high-priority tickets on each of days 31, 40 and 50.
        tickets(31)
        tickets(40)
        # Day 45: active days 16..29 = 14 -> usage 70; tickets W = 12 -> support 0; payment 100;
        # engagement mean(seats 5/5, min(1, (70/30/5)/0.5)) = 96.67; feature adoption null, so
        # score = (0.3*70 + 0.2*0 + 0.15*100 + 0.1*96.67) / 0.75 = 60.89 -> yellow.
        yellow = health_at(45)
        assert yellow["grade"] == "yellow" and yellow["score"] == 60.89
        tickets(50)
        # Day 60: no active day, W = 18 -> usage 0, support 0, engagement 0 -> 15/0.75 = 20.
        red = health_at(60)
        assert red["grade"] == "red" and red["score"] == 20.0

        # Restart in the middle of the red period: SIGTERM, then start again.
        assert worker.stop() == 0
        worker.start()
        assert health_at(62)["score"] == 20.0  # tickets of days 40 and 50: W = 12, support 0

        for d in range(70, 100):
            for u in range(5):
                prod.send("hl.events.usage", usage(c, f"u{u}", p + (d + 0.5) * DAY,
                                                   action="report_created"))
            if d % 5 == 4:
                prod.flush()
                tick(prod, customers, "hl", p + (d + 0.6) * DAY, topic="hl.events.usage")
        prod.flush()
        # Day 100: active days 71..99 = 29 -> usage 100; no ticket and no payment in their
        # windows (support 100, payment null); engagement 100 -> score 100.
        assert health_at(100) == {**health_at(100), "score": 100.0, "grade": "green"}

        mine = alerts.wait_for(lambda o: [v for k, v in o.records
                                          if k == f"health_red:{c}" and v["status"] == "resolved"]
                               and [v for k, v in o.records if k == f"health_red:{c}"])
        if [a["status"] for a in mine] != ["firing", "resolved"]:
            log = Out(broker.address, "hl-customers-changelog")
            time.sleep(3)
            trail = [(v.get("lt"), v.get("cd"), v.get("al")) for k, v in log.records if k == c
                     and 29279 <= (v.get("cd") or 0) <= 29283]
            log.close()
            raise AssertionError(([(a["status"], a["as_of"]) for a in mine], trail[-8:]))
        firing = mine[0]
        assert firing["rule"] == "health_red" and firing["severity"] == "critical"
        assert firing["value"] < 40 and firing["threshold"] == 40.0
        assert firing["subject"] == {"customer_id": c, "segment": "smb"}
        assert firing["actions"] and firing["explain"]["pulled_down_by"]
        assert mine[1]["started_at"] == firing["started_at"]
    finally:
        customers.close()
        alerts.close()
        worker.stop()


def test_ttv_exceeded_fires_in_event_time_on_a_replay(worker, produce, customers_out, period,
                                                      broker):
    p = period
    smb, ent = f"ttv-smb-{int(p)}", f"ttv-ent-{int(p)}"
    alerts = Out(broker.address, "vitals.alerts")
    try:
        produce.send("events.signup", signup(smb, p + 0.1 * DAY, segment="smb"))
        produce.send("events.signup", signup(ent, p + 0.1 * DAY, segment="enterprise"))
        for d in range(0, 34, 3):  # logins only: no value action, no aha
            produce.send("events.usage", usage(smb, "u1", p + (d + 0.5) * DAY))
            produce.send("events.usage", usage(ent, "e1", p + (d + 0.5) * DAY))
            produce.flush()
            tick(produce, customers_out, "ttv", p + (d + 0.6) * DAY)
        tick(produce, customers_out, "ttv", p + 34 * DAY)
        fired = alerts.wait_for(lambda o: [v for k, v in o.records if k == f"ttv_exceeded:{smb}"])
        assert len(fired) == 1 and fired[0]["status"] == "firing"
        assert 30 < fired[0]["value"] <= 31, fired[0]  # fired at the first day close past 30 days
        assert fired[0]["threshold"] == 30.0
        assert not [v for k, v in alerts.records if k == f"ttv_exceeded:{ent}"]  # limit 90
        record = customers_out.latest[smb]
        assert record["onboarding"]["aha"] is None and record["onboarding"]["stage"] == "signed_up"
    finally:
        alerts.close()
