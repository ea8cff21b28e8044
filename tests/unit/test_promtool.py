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


def _alert_rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_alertmanager_routes_by_team() -> None:
    """Every alert rule reaches its team's receiver: cs alerts the CS receiver, ops alerts ops
    (critical ones the pager); an alert without a team still reaches ops."""
    amtool = _tool("amtool", "prometheus-alertmanager")

    def receiver(*labels: str) -> str:
        result = _run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.strip()

    expected = {("cs", "critical"): "cs", ("cs", "warning"): "cs",
                ("ops", "critical"): "ops-pager", ("ops", "warning"): "ops"}
    rules = _alert_rules()
    assert {r["labels"]["team"] for r in rules} == {"cs", "ops"}
    for rule in rules:
        labels = rule["labels"]
        got = receiver(f"alertname={rule['alert']}", f"severity={labels['severity']}",
                       f"team={labels['team']}", "segment=smb", "instance=worker-1")
        assert got == expected[(labels["team"], labels["severity"])], rule["alert"]
    assert receiver("alertname=VitalsNRRBelowOne", "severity=critical", "team=cs") == "cs"
    assert receiver("alertname=VitalsWorkerDown", "severity=critical", "team=ops") == "ops-pager"
    assert receiver("alertname=Unlabelled", "severity=critical") == "ops"


# ------------------------------------------------------------------------ rule labels, runbooks

RUNBOOK_SECTIONS = ("## What it means", "## What to check", "## What to do")


def test_every_alert_has_a_team_and_a_runbook() -> None:
    rules = _alert_rules()
    assert rules
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"].get("team") in ("cs", "ops"), name
        url = rule["annotations"].get("runbook_url")
        assert url == f"docs/runbooks/{name}.md", name
        runbook = ROOT / url
        assert runbook.is_file(), f"{name}: {url} is missing"
        text = runbook.read_text(encoding="utf-8")
        assert text.startswith(f"# {name}"), url
        for section in RUNBOOK_SECTIONS:
            assert section in text, f"{url}: no {section!r}"
            body = text.split(section, 1)[1].split("\n## ", 1)[0]
            assert len(body.split()) >= 15, f"{url}: {section!r} is nearly empty"


def test_business_alerts_judge_finished_months_only() -> None:
    """NRR and GRR rules read the finished-month families, never a month-to-date ratio."""
    for rule in _alert_rules():
        if re.search(r"NRR|GRR", rule["alert"]):
            assert re.search(r"_final_ratio", rule["expr"]), rule["alert"]
            assert "_ratio" not in rule["expr"].replace("_final_ratio", ""), rule["alert"]
