"""A dead ingest turns /healthz, /livez and /readyz 503 with the reason, and the worker exits 70.

The fault is injected from outside the code under test: the worker (the real `vitals worker`
process) starts with a `sitecustomize` module on its path that makes the ingest's read step
raise when it meets one marker record. Nothing in the service knows about it.
"""
from __future__ import annotations

import json
import os
import re
import time

import pytest

from streams.health import EXIT_SERVICE_DIED
from tests.integration.conftest import ROOT, WorkerProcess
from tests.integration.kafka import In

pytestmark = pytest.mark.integration

FAMILIES = ("signup", "usage", "feature", "billing", "support")
MARKER = b'"inject-fault"'
FAULT = f'''
import streams.ingest as _ingest

_read = _ingest.Ingest.read


def read(self, records, aligner):
    for messages in records.values():
        for message in messages:
            if message.value == {MARKER!r}:
                raise RuntimeError("injected fault")
    return _read(self, records, aligner)


_ingest.Ingest.read = read
'''


def _env(fault_dir: str) -> dict[str, str]:
    env = {f"VITALS_TOPICS__{f.upper()}": f"hx.events.{f}" for f in FAMILIES}
    env.update({"VITALS_APP__ID": "hx", "VITALS_TOPICS__CUSTOMER": "hx.customer",
                "VITALS_TOPICS__REPARTITION": "hx.internal", "VITALS_TOPICS__ALERTS": "hx.alerts",
                "VITALS_TOPICS__DEADLETTER": "hx.deadletter",
                "VITALS_TOPICS__BUSINESS": "hx.business", "VITALS_TOPICS__FEATURE_OUT": "hx.feature",
                "VITALS_TOPICS__BUSINESS_INTERNAL": "hx.internal.business",
                # The worktree first, so that sitecustomize imports the code under test.
                "PYTHONPATH": os.pathsep.join([str(ROOT), fault_dir])})
    return env


def test_a_dead_ingest_is_reported_and_the_worker_exits_non_zero(broker, tmp_path):
    fault_dir = tmp_path / "fault"
    fault_dir.mkdir()
    (fault_dir / "sitecustomize.py").write_text(FAULT)
    worker = WorkerProcess(broker.url, tmp_path / "w.log", **_env(str(fault_dir))).start()
    producer = In(broker.address)
    try:
        assert worker.get("/livez") == (200, b'{"live":true}')
        assert worker.get("/readyz")[0] == 200

        producer.send("hx.events.usage", MARKER)
        producer.flush()
        deadline = time.monotonic() + 60
        while worker.get("/healthz")[0] != 503:
            assert time.monotonic() < deadline, worker.log_tail()
            assert worker.proc.poll() is None, worker.log_tail()
            time.sleep(0.2)
        health = json.loads(worker.get("/healthz")[1])
        reason = "IngestService died: RuntimeError: injected fault"
        assert health["live"] is False and health["ready"] is False
        assert health["reason"] == reason
        assert json.loads(worker.get("/livez")[1]) == {"live": False, "reason": reason}
        assert worker.get("/livez")[0] == 503 and worker.get("/readyz")[0] == 503

        code = worker.proc.wait(60)  # exits by itself, soon after
        assert code == EXIT_SERVICE_DIED, worker.log_tail()
    finally:
        worker.stop()

    # Every line the worker wrote is one JSON object with an RFC 3339 UTC timestamp.
    lines = (tmp_path / "w.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"])
                           and r["level"] and r["logger"] and "msg" in r for r in records)
    critical = [r for r in records if r["level"] == "CRITICAL"]
    assert len(critical) == 1 and reason in critical[0]["msg"]
    assert any(r["logger"] == "vitals" and f"status {EXIT_SERVICE_DIED}" in r["msg"]
               for r in records)
