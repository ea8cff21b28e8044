"""The deployment's Prometheus files against the live worker, with a real Prometheus server.

1. Debian's `prometheus` scrapes the session worker every second with the repository's `vitals`
   job (deploy/prometheus/prometheus.yml, targets replaced) and the repository's recording and
   alert rules; through the HTTP API: the target is up, `vitals_events_total` arrives with the
   contract's labels and moves, every rule evaluates without error, and every recording rule
   whose inputs exist returns data.
2. Every metric a Grafana dashboard (deploy/grafana/dashboards) queries is on the worker's live
   /metrics, except an explicit list of metrics that need a longer history than this test
   sends (NEEDS_LONGER_HISTORY); and the Prometheus server evaluates every dashboard query, Grafana
   variables substituted, without an error.

Without `prometheus` on PATH the server tests are skipped on a developer machine but fail under
CI (the CI variable set): deploy/scripts/ensure-tools.sh installs it (Debian package
`prometheus`).
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.broker import free_port
from tests.integration.helpers import signup, usage
from tests.unit.test_deploy import metric_names

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
DASHBOARD_FILES = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))

# CONTRACT.md §1 and §3.
FAMILIES = {"signup", "usage", "feature", "billing", "support"}
OUTCOMES = {"accepted", "duplicate", "late", "rejected"}

# Dashboard metrics the worker does not export yet: the rest of CONTRACT.md §3 and the proposed
# metrics of deploy/grafana/EXTRA_METRICS.md. They come with issues 3-6 (features, churn model,
# and the business figures beyond MRR/NRR: GRR, logo retention, CLV, onboarding success rate).
# "Dashboard metrics" include the inputs of the recording rules the dashboards read
# (vitals_churn_model_auc behind vitals:churn_model_auc:max, ...).
# test_dashboard_metrics_are_exported fails both ways: when a dashboard metric is missing that is
# not listed here, and when a listed metric is exported - then remove it from this list.
# Exported only once the data allows a value, which this test's short histories may not reach;
# each is checked where the history is long enough (tests/integration/test_churn_e2e.py,
# tests/integration/test_features_e2e.py).
NEEDS_LONGER_HISTORY = frozenset({
    "vitals_churn_model_auc",                  # churners and non-churners scored
    "vitals_feature_retention_impact_ratio",   # min_group customers on both sides after 90 days
})

SCRAPE_INTERVAL = "1s"
WAIT = 30.0  # seconds, for any one condition


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT,
               detail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail()}")
        time.sleep(0.25)


# ------------------------------------------------------------------------------ the files


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in _load_yaml(path)["groups"]
            for rule in group["rules"]]


def _recording_rules() -> dict[str, str]:
    return {rule["record"]: rule["expr"] for rule in _rules() if "record" in rule}


def _dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title or variable, expr) of every panel target and every
    query variable (label_values(expr, label) -> expr)."""
    out = []
    for path in DASHBOARD_FILES:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
                out.append((path.name, f"${var['name']}", m.group(1) if m else query))
    assert out, "no dashboard queries found"
    return out


def _grafana_variables() -> dict[str, str]:
    """Each dashboard variable's "All" value (what the dashboards open with)."""
    values = {}
    for path in DASHBOARD_FILES:
        for var in json.loads(path.read_text(encoding="utf-8")).get("templating", {}).get("list", []):
            values[var["name"]] = var.get("allValue") or ".+"
    return values


# Grafana's built-in variables, as it would expand them for a 1 h dashboard with 1 s scrapes
# ($__rate_interval is at least four scrape intervals).
_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000",
             "__range": "1h", "__range_s": "3600", "__range_ms": "3600000"}


def grafana_to_promql(expr: str, variables: dict[str, str]) -> str:
    values = {**variables, **_BUILTINS}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"unknown Grafana variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "inf", "nan"}


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers "{...}" or "") of every vector selector of a PromQL expr."""
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    out = []
    for m in re.finditer(r"\{[^}]*\}|(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\{[^}]*\})?(\s*\()?", s):
        name, matchers, call = m.groups()
        if name and not call and name.lower() not in _KEYWORDS:
            out.append((name, (matchers or "").strip()))
    return out


def test_selector_parser() -> None:
    assert selectors('sum by (family, le) (rate(x_total{a="b", c!="d"}[5m])) / ignoring(le) y') \
        == [("x_total", '{a="b", c!="d"}'), ("y", "")]
    assert selectors("min(w > 0) and on (instance, job) a:b:c offset 1d > 1e-9") \
        == [("w", ""), ("a:b:c", "")]


# ------------------------------------------------------------------------- the Prometheus


class PrometheusServer:
    """Debian's prometheus as a child process on a free port, with a generated config."""

    def __init__(self, binary: str, workdir: Path, worker_port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.worker_port = worker_port
        self.port = 0
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        """The repository's prometheus.yml with the `vitals` job pointed at the test worker,
        1 s scrape and rule evaluation, and the repository's rule files (absolute paths)."""
        repo = _load_yaml(PROMETHEUS_CONFIG)
        (job,) = [j for j in repo["scrape_configs"] if j["job_name"] == "vitals"]
        job = {**job, "static_configs": [{"targets": [f"127.0.0.1:{self.worker_port}"]}],
               "scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL}
        rule_files = sorted(str(p) for pattern in repo["rule_files"]
                            for p in PROMETHEUS_CONFIG.parent.glob(pattern))
        assert rule_files == [str(p) for p in RULE_FILES], "prometheus.yml must load every rule file"
        return {"global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                           "evaluation_interval": SCRAPE_INTERVAL},
                "rule_files": rule_files, "scrape_configs": [job]}

    def start(self, attempts: int = 3) -> PrometheusServer:
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config()), encoding="utf-8")
        for _ in range(attempts):  # free_port() can race with another process: retry
            self.port = free_port()
            data = self.workdir / f"data-{self.port}"
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={config_file}", f"--storage.tsdb.path={data}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                        if r.status == 200:
                            return self
                except OSError:
                    pass
                time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"prometheus did not start:\n{self.log_tail()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422/503 carry a JSON error body
            return json.loads(exc.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr!r}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def rules(self) -> list[dict[str, Any]]:
        body = self.api("rules")
        assert body["status"] == "success", body
        return [dict(rule, group=group["name"]) for group in body["data"]["groups"]
                for rule in group["rules"]]

    def vitals_targets(self) -> list[dict[str, Any]]:
        body = self.api("targets")
        assert body["status"] == "success", body
        return [t for t in body["data"]["activeTargets"] if t["labels"].get("job") == "vitals"]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture(scope="module")
def prometheus(worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    binary = shutil.which("prometheus")
    if binary is None:
        msg = ("prometheus not found on PATH: install Debian's `prometheus` package "
               "(deploy/scripts/ensure-tools.sh)")
        if _in_ci():
            pytest.fail(msg + " - required under CI")
        pytest.skip(msg)
    server = PrometheusServer(binary, tmp_path_factory.mktemp("prometheus"), worker.port)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def send_traffic(worker, produce, customers_out, period: float, prefix: str) -> str:
    """A signup and three usage events of a new customer; returns once the worker has counted
    the usage events and published the customer."""
    cid = f"{prefix}-{int(period)}"
    before = worker.metric("vitals_events_total", family="usage", outcome="accepted")
    produce.send("events.signup", signup(cid, period + 5, segment="smb"))
    for i, user in enumerate(("u1", "u2", "u1")):
        produce.send("events.usage", usage(cid, user, period + 10 + i))
    produce.flush()
    customers_out.wait_for(lambda o: o.latest.get(cid, {}).get("activity", {}).get("mau") == 2)
    wait_until(lambda: worker.metric("vitals_events_total", family="usage", outcome="accepted")
               >= before + 3, "the worker to count the usage events")
    return cid


# ---------------------------------------------------------------------------- 1. scraping


def test_prometheus_scrapes_the_worker_and_evaluates_the_rules(
        prometheus, worker, produce, customers_out, period):
    prom = prometheus
    # The target is up, and a first sample of the counters is in before the events come.
    targets = wait_until(lambda: [t for t in prom.vitals_targets() if t["health"] == "up"],
                         "the vitals target to be up", detail=lambda: json.dumps(prom.vitals_targets()))
    assert len(targets) == 1 and targets[0]["scrapeUrl"] == f"http://127.0.0.1:{worker.port}/metrics"
    assert targets[0]["labels"]["instance"] == "127.0.0.1"  # the repository's relabelling
    assert prom.value('up{job="vitals"}') == 1
    accepted = 'vitals_events_total{job="vitals", family="usage", outcome="accepted"}'
    wait_until(lambda: prom.value(accepted) is not None, "a first scrape of vitals_events_total")

    send_traffic(worker, produce, customers_out, period, "prom")
    in_worker = worker.metric("vitals_events_total", family="usage", outcome="accepted")
    wait_until(lambda: (prom.value(accepted) or 0) >= in_worker,
               f"Prometheus to scrape {accepted} >= {in_worker}",
               detail=lambda: f"Prometheus has {prom.value(accepted)}")

    # vitals_events_total: every family x outcome, with the contract's labels and no others.
    series = prom.query('vitals_events_total{job="vitals"}')
    assert {(s["metric"]["family"], s["metric"]["outcome"]) for s in series} == \
        {(f, o) for f in FAMILIES for o in OUTCOMES}
    for s in series:
        assert set(s["metric"]) == {"__name__", "job", "instance", "family", "outcome"}, s["metric"]
    # No series of the job carries a customer or user id (CONTRACT.md §3).
    assert prom.query('{job="vitals", customer_id=~".+"} or {job="vitals", user_id=~".+"}') == []

    # The counters moved between scrapes: the recording rule sees a positive rate.
    rate = 'vitals:events:rate5m{family="usage", outcome="accepted"}'
    wait_until(lambda: (prom.value(rate) or 0) > 0, f"{rate} > 0",
               detail=lambda: json.dumps(prom.query("vitals:events:rate5m")))

    # Every rule of the repository is loaded, has been evaluated, and evaluates without error.
    expected_rules = collections.Counter(r.get("record") or r["alert"] for r in _rules())
    wait_until(lambda: all(r["health"] != "unknown" for r in prom.rules()),
               "every rule to be evaluated",
               detail=lambda: str([r["name"] for r in prom.rules() if r["health"] == "unknown"]))
    loaded = prom.rules()
    assert collections.Counter(r["name"] for r in loaded) == expected_rules
    errors = [(r["name"], r["health"], r.get("lastError")) for r in loaded
              if r["health"] != "ok" or r.get("lastError")]
    assert not errors, errors
    assert {r["type"] for r in loaded} == {"recording", "alerting"}
    (worker_down,) = [r for r in loaded if r["name"] == "VitalsWorkerDown"]
    assert worker_down["state"] == "inactive", worker_down

    # Recording rules whose inputs have data must return data: a raw selector has data now; a
    # recording rule used as input counts when it is itself expected to return data.
    recording = _recording_rules()
    has_data = {f"{n}{m}": bool(prom.query(f"count({n}{m})"))
                for expr in recording.values() for n, m in selectors(expr) if n not in recording}
    expected: set[str] = set()
    for _ in recording:  # fixed point over rules that use other rules
        expected |= {name for name, expr in recording.items()
                     if all(n in expected if n in recording else has_data[f"{n}{m}"]
                            for n, m in selectors(expr))}
    assert "vitals:events:rate5m" in expected and "vitals:workers_up:sum" in expected, expected
    wait_until(lambda: all(prom.query(name) for name in expected),
               f"the recording rules {sorted(expected)} to return data",
               detail=lambda: str([n for n in expected if not prom.query(n)]))
    assert prom.value("vitals:workers_up:sum") == 1


# -------------------------------------------------------------------------- 2. dashboards


def _dashboard_metric_names() -> tuple[set[str], set[str]]:
    """(raw metric names, recording rule names) the dashboards depend on; the raw names include
    the inputs of the recording rules they use, transitively; `up` is left out."""
    names = {n for _, _, expr in _dashboard_exprs() for n in metric_names(expr)}
    rules = {n for n in names if ":" in n}
    recording = _recording_rules()
    todo = [r for r in rules if r in recording]
    while todo:
        for name in metric_names(recording[todo.pop()]):
            if name in recording and name not in names:
                todo.append(name)
            names.add(name)
    return {n for n in names if ":" not in n} - {"up"}, rules


def _live_series_names(worker) -> set[str]:
    """Series names the worker's /metrics declares: a counter family `x` as `x_total`, a
    histogram `x` as `x_bucket`, `x_sum` and `x_count`, a gauge by its name, besides the names
    of the samples present. A family declared (# TYPE) without a sample yet, e.g. a histogram
    nothing was observed into, counts: the metric is implemented."""
    status, body = worker.get("/metrics")
    assert status == 200
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count"), "gaugehistogram": ("_bucket", "_gsum", "_gcount")}
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def test_dashboard_recording_rules_exist() -> None:
    _, rules = _dashboard_metric_names()
    assert rules, "the dashboards use no recording rule: is the parser broken?"
    missing = rules - set(_recording_rules())
    assert not missing, f"dashboards use recording rules that deploy/prometheus/rules lacks: {missing}"


def test_dashboard_metrics_are_exported(worker, produce, customers_out, period):
    raw, _ = _dashboard_metric_names()
    assert "vitals_events_total" in raw, raw
    stale = NEEDS_LONGER_HISTORY - raw
    assert not stale, f"NEEDS_LONGER_HISTORY lists metrics no dashboard uses: {stale}"

    send_traffic(worker, produce, customers_out, period, "dash")
    # Gauges are computed at scrape time from processor state: give them a moment to show.
    live: set[str] = set()

    def complete() -> bool:
        nonlocal live
        live = _live_series_names(worker)
        return raw - live <= NEEDS_LONGER_HISTORY

    try:
        wait_until(complete, "the implemented dashboard metrics on /metrics", timeout=15)
    except AssertionError:
        pass  # reported below with the names
    missing = raw - live
    unexpected = missing - NEEDS_LONGER_HISTORY
    assert not unexpected, (f"dashboard metrics missing from the worker's /metrics (and not in "
                            f"NEEDS_LONGER_HISTORY): {sorted(unexpected)}")


def test_prometheus_evaluates_every_dashboard_query(prometheus, worker, produce, customers_out,
                                                     period):
    send_traffic(worker, produce, customers_out, period, "dashq")
    wait_until(lambda: prometheus.value('up{job="vitals"}') == 1, "the vitals target to be up")
    variables = _grafana_variables()
    failures = []
    for dashboard, where, expr in _dashboard_exprs():
        promql = grafana_to_promql(expr, variables)
        body = prometheus.api("query", query=promql)
        if body.get("status") != "success" or body.get("warnings"):
            failures.append(f"{dashboard}: {where}: {promql}\n    {body.get('error') or body.get('warnings')}")
    assert not failures, "\n".join(failures)
    # Sanity: the substitution yields queries that do find the worker's series.
    assert prometheus.query(grafana_to_promql(
        'up{job="vitals", instance=~"$instance"}', variables))
