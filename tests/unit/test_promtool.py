"""promtool and amtool on the deployment's Prometheus and Alertmanager files.

The tools come from Debian's `prometheus` and `prometheus-alertmanager` packages
(deploy/scripts/ensure-tools.sh installs them). Without them these tests are skipped on a
developer machine, but fail under CI (the CI variable set), so that a green CI run means the
rules were really checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD_FILES = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = (
            f"{name} not found on PATH: run deploy/scripts/ensure-tools.sh "
            f"(Debian package {package})"
        )
        if _in_ci():
            pytest.fail(msg + " — required under CI")
        pytest.skip(msg)
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def promtool() -> str:
    return _tool("promtool", "prometheus")


def test_the_files_exist() -> None:
    assert CONFIG.is_file()
    assert {p.name for p in RULE_FILES} >= {"recording.yml", "alerts.yml"}
    assert TEST_FILES, "no promtool test files in deploy/prometheus/tests"


def test_promtool_check_config(promtool: str) -> None:
    result = _run(promtool, "check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    # check config also checks the rule files the config names: make sure it found them all
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool: str) -> None:
    result = _run(promtool, "test", "rules", *TEST_FILES)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(TEST_FILES), output


def _grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables by values Prometheus accepts where they are used."""
    expr = re.sub(r"\$\{?__(rate_)?interval\}?", "1m", expr)
    expr = re.sub(r"\$\{?__range\}?", "1h", expr)
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".+", expr)  # template variables: regex label values


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every Grafana query is valid PromQL (checked as recording rules by promtool)."""
    rules = []
    for path in DASHBOARD_FILES:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
        exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
                exprs.append(m.group(1) if m else query)
        rules += [{"record": f"dashboard:{path.stem.replace('-', '_')}:q{i}", "expr": _grafana_to_promql(e)}
                  for i, e in enumerate(exprs)]
    assert rules
    rule_file = tmp_path / "dashboard_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    result = _run(promtool, "check", "rules", rule_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_config() -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")
    result = _run(amtool, "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_routes_critical_separately() -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")

    def receiver(*labels: str) -> str:
        result = _run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.strip()

    assert receiver("alertname=VitalsWorkerDown", "severity=critical") == "critical"
    assert receiver("alertname=VitalsEventLagHigh", "severity=warning") == "default"
