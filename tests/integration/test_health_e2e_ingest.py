"""A dead ingest, or a flush timer that raises, turns /healthz, /livez and /readyz 503 with the
reason, and the worker exits 70 by itself soon after.

Faults are injected from outside the code under test: the worker (the real `vitals worker`
process) starts with a `sitecustomize` module on its path that makes one step raise when it
meets a marker record. Nothing in the service knows about it.
"""
from __future__ import annotations

import json
import os
import re
import time

import pytest

from streams.health import EXIT_SERVICE_DIED
from tests.integration.conftest import ROOT, WorkerProcess
from tests.integration.helpers import usage
from tests.integration.kafka import In

pytestmark = pytest.mark.integration

FAMILIES = ("signup", "usage", "feature", "billing", "support")
MARKER = b'"inject-fault"'
MARKED_CUSTOMER = "inject-timer-fault"

# The ingest's read step raises on the marker record: the ingest's poll loop dies.
INGEST_FAULT = f'''
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

# Once the marked customer's event is applied, the flush timer raises: the Faust app crashes.
TIMER_FAULT = f'''
import streams.processor as _p

_apply, _flush = _p.CustomerProcessor.apply, _p.CustomerProcessor.flush
_armed = []


def apply(self, partition, batch, *args, **kwargs):
    if any(e.get("customer_id") == {MARKED_CUSTOMER!r} for e in batch):
        _armed.append(True)
    return _apply(self, partition, batch, *args, **kwargs)


def flush(self, *args, **kwargs):
    if _armed:
        raise OverflowError("injected flush fault")
    return _flush(self, *args, **kwargs)


_p.CustomerProcessor.apply, _p.CustomerProcessor.flush = apply, flush
'''


def _env(app_id: str, fault_dir: str) -> dict[str, str]:
    env = {f"VITALS_TOPICS__{f.upper()}": f"{app_id}.events.{f}" for f in FAMILIES}
    env.update({f"VITALS_TOPICS__{key}": f"{app_id}.{name}" for key, name in (
        ("CUSTOMER", "customer"), ("REPARTITION", "internal"), ("ALERTS", "alerts"),
        ("DEADLETTER", "deadletter"), ("BUSINESS", "business"), ("FEATURE_OUT", "feature"),
        ("BUSINESS_INTERNAL", "internal.business"))})
    # The worktree first, so that sitecustomize imports the code under test.
    env.update({"VITALS_APP__ID": app_id, "PYTHONPATH": os.pathsep.join([str(ROOT), fault_dir])})
    return env


@pytest.mark.parametrize("fault, reason", [
    ("ingest", "IngestService died: RuntimeError: injected fault"),
    ("timer", "App died: OverflowError: injected flush fault"),
])
def test_a_dead_service_is_reported_and_the_worker_exits_non_zero(broker, tmp_path, fault,
                                                                  reason):
    app_id = f"hx-{fault}"
    fault_dir = tmp_path / "fault"
    fault_dir.mkdir()
    (fault_dir / "sitecustomize.py").write_text(INGEST_FAULT if fault == "ingest"
                                                else TIMER_FAULT)
    worker = WorkerProcess(broker.url, tmp_path / "w.log", **_env(app_id, str(fault_dir)))
    worker.start()
    producer = In(broker.address)
    try:
        assert worker.get("/livez") == (200, b'{"live":true}')
        assert worker.get("/readyz")[0] == 200

        if fault == "ingest":
            producer.send(f"{app_id}.events.usage", MARKER)
        else:
            producer.send(f"{app_id}.events.usage", usage(MARKED_CUSTOMER, "u1", time.time()))
        producer.flush()
        deadline = time.monotonic() + 60
        while worker.get("/healthz")[0] != 503:
            assert time.monotonic() < deadline, worker.log_tail()
            assert worker.proc.poll() is None, worker.log_tail()
            time.sleep(0.2)
        health = json.loads(worker.get("/healthz")[1])
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
