"""Every dashboard query and every recording rule returns data from a Prometheus that scraped
two minutes of `vitals demo`, and the demo's replay of the past fires no lag alert.

This is the command `make demo` runs (`vitals demo`), with its own ports and app id. Debian's
`prometheus` scrapes the demo's worker every second with the repository's `vitals` job and rule
files (tests/integration/test_prometheus_e2e.py builds the configuration). From one minute after
the start the test evaluates, every few seconds, every PromQL expression of
deploy/grafana/dashboards/*.json (Grafana variables at their "All" values) and every recording
rule; it passes at the first round where each returns at least one sample that is a number
(NaN, e.g. a quantile of no observations, is no data), and fails at two minutes listing the
expressions that returned nothing.

The module takes 2.5 to 3 minutes on a shared 2-core machine, so `make test` skips it and
`make dashboards` runs it (RUN_DEMO_DASHBOARDS=1).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.broker import free_port
from tests.integration.test_prometheus_e2e import (
    PrometheusServer,
    _dashboard_exprs,
    _grafana_variables,
    _recording_rules,
    _rules,
    grafana_to_promql,
)

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 120.0        # seconds after the demo starts: every query has data by then
FIRST_CHECK = 60.0
CHECK_EVERY = 5.0
# Alerts on freshness: a demo that replays the past must not make them fire (nor pend at the
# end: a lag that is still high and rising two minutes in would fire a few minutes later).
LAG_ALERTS = ("VitalsConsumerLagHigh", "VitalsProcessingDelayHigh")

pytestmark = pytest.mark.skipif(
    os.environ.get("RUN_DEMO_DASHBOARDS", "") != "1",
    reason="2.5 minutes of `vitals demo` and Prometheus: run with `make dashboards`")

def has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard query and every recording rule."""
    variables = _grafana_variables()
    out = [(f"{dashboard}: {where}", grafana_to_promql(expr, variables))
           for dashboard, where, expr in _dashboard_exprs()]
    out += [(f"recording rule {name}", expr) for name, expr in _recording_rules().items()]
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, PrometheusServer]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found on PATH: deploy/scripts/ensure-tools.sh installs "
                    "Debian's `prometheus` package")
    workdir = tmp_path_factory.mktemp("demo-dashboards")
    web_port = free_port()
    prometheus = PrometheusServer(binary, workdir, web_port).start()
    env = {**os.environ, "VITALS_APP__WEB_PORT": str(web_port),
           "VITALS_APP__EMBEDDED_PORT": str(free_port()), "VITALS_APP__ID": "vitals-dash-test"}
    env.pop("VITALS_CONFIG", None)
    out = open(workdir / "demo.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo"], cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.started = time.monotonic()  # type: ignore[attr-defined]
    proc.log = workdir / "demo.out"  # type: ignore[attr-defined]
    proc.web_port = web_port  # type: ignore[attr-defined]
    try:
        yield proc, prometheus
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        out.close()
        prometheus.stop()


def _demo_tail(proc: Any, chars: int = 3000) -> str:
    return proc.log.read_text(errors="replace")[-chars:]


def test_every_dashboard_query_and_recording_rule_has_data_within_two_minutes(demo) -> None:
    proc, prom = demo
    todo = queries()
    assert len(todo) > 50, len(todo)
    empty: list[str] = []
    errors: list[str] = []
    while True:
        elapsed = time.monotonic() - proc.started
        assert proc.poll() is None, f"the demo exited with {proc.returncode}\n{_demo_tail(proc)}"
        if elapsed >= FIRST_CHECK:
            empty, errors = [], []
            for where, promql in todo:
                body = prom.api("query", query=promql)
                if body.get("status") != "success":
                    errors.append(f"{where}: {promql}\n    {body.get('error')}")
                elif not has_data(body["data"]["result"]):
                    empty.append(f"{where}: {promql}")
            if not empty and not errors:
                break
            if elapsed >= DEADLINE:
                break
        time.sleep(CHECK_EVERY if elapsed >= FIRST_CHECK else 1.0)
    assert not errors, "queries that fail:\n" + "\n".join(errors)
    assert not empty, (f"{len(empty)} of {len(todo)} queries return no data "
                       f"{elapsed:.0f} s after `vitals demo` started:\n" + "\n".join(empty)
                       + f"\n\ndemo output (end):\n{_demo_tail(proc, 1500)}")

    # The demo replayed a history of past dates: no freshness alert fires, none is pending.
    states = {(r["name"], r.get("labels", {}).get("severity")): r["state"]
              for r in prom.rules() if r["type"] == "alerting" and r["name"] in LAG_ALERTS}
    assert states and set(states.values()) == {"inactive"}, states
    names = "|".join(LAG_ALERTS)
    fired = prom.query(f'ALERTS{{alertname=~"{names}", alertstate="firing"}}')
    assert fired == [], fired
    # The event-time lag is small once the history is worked off and the demo is live: the
    # history ends at the demo's start.
    lag = prom.value("vitals:event_lag_seconds:max")
    assert lag is not None and lag < 2 * 86400, lag


def _business_mrr_end(port: int) -> tuple[str, float]:
    """(period, mrr_end) of scope all's latest month, from the worker's /business view."""
    url = f"http://127.0.0.1:{port}/business?scope=all"
    with urllib.request.urlopen(url, timeout=5) as resp:
        records = json.loads(resp.read())["records"]
    latest = max(records, key=lambda r: r["period"])
    return latest["period"], float(latest["mrr_end"])


def test_sum_of_vitals_mrr_in_prometheus_is_mrr_end_of_scope_all(demo) -> None:
    """`sum(vitals_mrr)` over the per-segment series, as Prometheus scraped it, equals the
    business record's mrr_end of scope all (current month): no segment="all" counted twice."""
    proc, prom = demo
    assert prom.query('vitals_mrr{segment="all"}') == []
    seen = []
    for _ in range(20):  # live billing events may move MRR between the two reads: read again
        period, mrr_end = _business_mrr_end(proc.web_port)
        time.sleep(2.5)  # at least two scrapes (1 s) after the record was read
        total = prom.value("sum(vitals_mrr)")
        if total is not None and _business_mrr_end(proc.web_port) == (period, mrr_end) \
                and math.isclose(total, mrr_end, rel_tol=1e-9, abs_tol=0.01):
            assert mrr_end > 0
            return
        seen.append((period, mrr_end, total))
    raise AssertionError(f"sum(vitals_mrr) never equalled mrr_end of scope all: {seen}")


def test_every_rule_evaluates_without_error(demo) -> None:
    _, prom = demo
    loaded = {r["name"] for r in prom.rules()}
    expected = {r.get("record") or r["alert"] for r in _rules()}
    assert loaded == expected
    bad = [(r["name"], r.get("lastError")) for r in prom.rules()
           if r["health"] != "ok" or r.get("lastError")]
    assert not bad, json.dumps(bad)
