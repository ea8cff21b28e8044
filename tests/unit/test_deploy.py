"""Static checks of the deployment: docker-compose.yml, deploy/ (Dockerfile, Prometheus,
Alertmanager, Grafana).

Docker does not run on the development and CI machines, so the deployment is validated here
without it: structure, cross-references between the files, and metric names against
docs/contract.md §3. PromQL syntax and the alert rules' behaviour are checked with promtool in
test_promtool.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD_FILES = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
EXTRA_METRICS_FILE = GRAFANA_DIR / "EXTRA_METRICS.md"
METRICS_DOC = ROOT / "docs" / "metrics-prometheus.md"  # the service's metrics beyond §3
CONTRACT_FILE = ROOT / "docs" / "contract.md"

WORKERS = ("worker-1", "worker-2")
INPUT_TOPICS = ("events.signup", "events.usage", "events.feature", "events.billing", "events.support")
COMPACTED_TOPICS = ("vitals.customer", "vitals.feature", "vitals.business", "vitals.alerts")
DEADLETTER_TOPIC = "vitals.deadletter"


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return _load_yaml(PROMETHEUS_DIR / "prometheus.yml")


@pytest.fixture(scope="module")
def datasource_uid() -> str:
    config = _load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    (prom,) = [ds for ds in config["datasources"] if ds["type"] == "prometheus"]
    return prom["uid"]


# ------------------------------------------------------------------------ metric name parsing

_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names referred to by a PromQL expression (Grafana variables allowed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana variables
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery selectors
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", s):
        word, is_call = m.group(1), m.group(2)
        if not is_call and word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def _label_values_expr(query: str) -> str | None:
    m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
    return m.group(1) if m else None


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (family, outcome) (rate(vitals_events_total{family="usage"}[5m]))', {"vitals_events_total"}),
        ("histogram_quantile(0.5, sum by (segment, le) (increase(x_bucket{segment=~\"$segment\"}[$__range])))",
         {"x_bucket"}),
        ('a:b:c > 1.2 * (a:b:c offset 1d) and (a:b:c - a:b:c offset 1d) >= 5', {"a:b:c"}),
        ('vitals_lag > 900 and on (instance, job) wm > 0', {"vitals_lag", "wm"}),
        ("(sum(m{movement=~\"new|churn\"}) or vector(0)) - 1e-9", {"m"}),
        ("sum(x) by (le) / ignoring(le) group_left count(y)", {"x", "y"}),
    ],
)
def test_metric_name_parser(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


# --------------------------------------------------------------------- the allowed metric names


def _contract_metrics() -> dict[str, str]:
    assert CONTRACT_FILE.is_file(), f"{CONTRACT_FILE} is missing"
    text = CONTRACT_FILE.read_text(encoding="utf-8")
    m = re.search(r"^## 3\..*?$(.*?)(?=^## )", text, re.M | re.S)
    assert m, "docs/contract.md has no section 3"
    metrics = dict(re.findall(r"^\|\s*`(vitals_\w+)`\s*\|\s*(\w+)\s*\|", m.group(1), re.M))
    assert len(metrics) >= 10, f"could not parse the metrics table of docs/contract.md §3: {metrics}"
    return metrics


def _recording_rules() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in _load_yaml(path)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def _extra_metrics() -> set[str]:
    if not EXTRA_METRICS_FILE.is_file():
        return set()
    return set(re.findall(r"^\|\s*`(vitals_\w+)`\s*\|", EXTRA_METRICS_FILE.read_text(encoding="utf-8"), re.M))


def _documented_metrics() -> set[str]:
    """Metrics the service exports beyond §3, in docs/metrics-prometheus.md (their export is
    checked in test_business_gauges.py)."""
    return set(re.findall(r"^\|\s*`(vitals_\w+)`\s*\|", METRICS_DOC.read_text(encoding="utf-8"), re.M))


def _contract_series_names() -> set[str]:
    names = {"up"}
    for name, mtype in _contract_metrics().items():
        names.add(name)
        if mtype == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


# ------------------------------------------------------------------------------------ compose


def test_kafka_runs_in_kraft_mode(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(env["KAFKA_NODE_ID"] + "@")
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["CLUSTER_ID"]
    assert not any("ZOOKEEPER" in key for key in env)
    assert not any("zookeeper" in name for name in services)
    assert "healthcheck" in kafka


def _created_topics(services: dict[str, Any]) -> dict[str, str]:
    init = services["kafka-init"]
    script = init["command"] if isinstance(init["command"], str) else "\n".join(init["command"])
    return dict(re.findall(r"^\s*create\s+([\w.]+)\s+(.*)$", script, re.M))


def test_kafka_init_creates_the_topics(services: dict[str, Any]) -> None:
    init = services["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init.get("restart") == "no"
    topics = _created_topics(services)
    for topic in INPUT_TOPICS:
        assert re.search(r"--partitions\s+12\b", topics[topic]), topic
    for topic in COMPACTED_TOPICS:
        assert "cleanup.policy=compact" in topics[topic], topic
    retention_ms = int(re.search(r"retention\.ms=(\d+)", topics[DEADLETTER_TOPIC]).group(1))
    assert retention_ms >= 30 * 86_400_000, "dead letters must be kept at least 30 days"
    assert "cleanup.policy=compact" not in topics[DEADLETTER_TOPIC]


def test_kafka_init_topics_match_the_default_config(services: dict[str, Any]) -> None:
    config = tomllib.loads((ROOT / "config" / "default.toml").read_text(encoding="utf-8"))
    internal = {"repartition", "business_internal", "feature_internal", "feature_catalog",
                "churn_examples", "churn_model"}  # created by the workers
    names = {v for k, v in config["topics"].items() if isinstance(v, str) and k not in internal}
    assert names == set(_created_topics(services))


def test_two_workers_in_one_consumer_group(services: dict[str, Any]) -> None:
    group_ids = set()
    hostnames = set()
    state_volumes = set()
    for name in WORKERS:
        worker = services[name]
        assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
        assert worker["command"] == ["vitals", "worker"]
        env = _env(worker)
        assert env["VITALS_APP__BROKER"] == "kafka://kafka:9092"
        assert env["VITALS_APP__WEB_HOST"] == "0.0.0.0"
        assert env["VITALS_APP__STORE"] == "rocksdb://"
        assert worker["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        group_ids.add(env.get("VITALS_APP__ID", "vitals"))
        hostnames.add(worker.get("hostname", name))
        state_volumes |= {v.split(":")[0] for v in worker["volumes"] if v.endswith(":/var/lib/vitals")}
    assert len(group_ids) == 1, "the workers must share the Faust app id (consumer group)"
    assert hostnames == set(WORKERS)
    assert len(state_volumes) == len(WORKERS), "each worker needs its own RocksDB state volume"


def _vitals_env_keys(services: dict[str, Any]) -> set[str]:
    keys = {k for service in services.values() for k in _env(service) if k.startswith("VITALS_")}
    for kw, rest in _dockerfile_instructions():
        if kw == "ENV":
            keys |= set(re.findall(r"\b(VITALS_\w+)=", rest))
    return keys


def test_vitals_settings_in_env_exist_in_the_default_config(services: dict[str, Any]) -> None:
    """The settings loader rejects unknown keys: every VITALS_<SECTION>__<KEY> set by the
    deployment must name a key of config/default.toml."""
    config = tomllib.loads((ROOT / "config" / "default.toml").read_text(encoding="utf-8"))
    keys = _vitals_env_keys(services)
    assert keys
    for key in keys:
        node: Any = config
        for part in key.removeprefix("VITALS_").lower().split("__"):
            assert isinstance(node, dict) and part in node, f"{key}: no such setting in config/default.toml"
            node = node[part]


def test_simulator_targets_the_compose_kafka(services: dict[str, Any]) -> None:
    simulator = services["simulator"]
    command = simulator["command"]
    words = (" ".join(command) if isinstance(command, list) else command).split()
    start = words.index("simulate")
    assert words[start - 1] == "vitals"
    assert words[words.index("--broker", start) + 1] == "kafka://kafka:9092"
    assert simulator["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


def _bind_mounts(services: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(service, host path, container path) of every bind mount."""
    mounts = []
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                if volume.get("type") == "bind":
                    mounts.append((name, volume["source"], volume["target"]))
                continue
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/", "~")):
                mounts.append((name, source, target))
    return mounts


def test_every_mounted_host_path_exists(services: dict[str, Any]) -> None:
    mounts = _bind_mounts(services)
    assert mounts
    for service, source, _target in mounts:
        assert not source.startswith(("/", "~")), f"{service}: absolute host path {source}"
        assert (ROOT / source).exists(), f"{service}: {source} does not exist"
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


def test_every_named_volume_is_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                assert volume.split(":")[0] in declared, f"{name}: {volume}"


def _mount_target(services: dict[str, Any], service: str, host_path: str) -> str:
    for name, source, target in _bind_mounts(services):
        if name == service and Path(source) == Path(host_path):
            return target
    raise AssertionError(f"{service} does not mount {host_path}")


def test_prometheus_scrapes_both_workers(prometheus_config: dict[str, Any], services: dict[str, Any]) -> None:
    (job,) = [j for j in prometheus_config["scrape_configs"] if j["job_name"] == "vitals"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{services[w].get('hostname', w)}:6066" for w in WORKERS}
    assert job.get("metrics_path", "/metrics") == "/metrics"
    for worker in WORKERS:
        assert "6066" in services[worker]["expose"] or any(
            str(p).endswith(":6066") for p in services[worker].get("ports", [])
        )
    alertmanagers = {
        t for am in prometheus_config["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]
    }
    assert alertmanagers == {"alertmanager:9093"} and "alertmanager" in services


def test_prometheus_container_gets_config_and_rules(
    prometheus_config: dict[str, Any], services: dict[str, Any]
) -> None:
    prometheus = services["prometheus"]
    config_target = _mount_target(services, "prometheus", "./deploy/prometheus/prometheus.yml")
    assert f"--config.file={config_target}" in prometheus["command"]
    rules_target = _mount_target(services, "prometheus", "./deploy/prometheus/rules")
    for pattern in prometheus_config["rule_files"]:
        assert not pattern.startswith("/"), "rule_files are relative to prometheus.yml"
        resolved = (Path(config_target).parent / pattern).parent
        assert resolved == Path(rules_target), pattern
        assert list(PROMETHEUS_DIR.glob(pattern)), pattern
    alertmanager_target = _mount_target(services, "alertmanager", "./deploy/alertmanager/alertmanager.yml")
    assert f"--config.file={alertmanager_target}" in services["alertmanager"]["command"]


def test_grafana_provisioning_matches_compose(services: dict[str, Any]) -> None:
    datasources = _load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    (prom,) = [ds for ds in datasources["datasources"] if ds["type"] == "prometheus"]
    assert prom["uid"] == "vitals-prom"
    assert prom["url"] == "http://prometheus:9090" and "prometheus" in services
    provisioning_target = _mount_target(services, "grafana", "./deploy/grafana/provisioning")
    assert provisioning_target == "/etc/grafana/provisioning"
    dashboards_target = _mount_target(services, "grafana", "./deploy/grafana/dashboards")
    providers = _load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    assert [p["options"]["path"] for p in providers] == [dashboards_target]
    home = _env(services["grafana"]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith(dashboards_target + "/")
        assert (GRAFANA_DIR / "dashboards" / Path(home).name).is_file()


def _compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin), else the standalone `docker-compose`, else None."""
    docker = shutil.which("docker")
    if docker is not None:
        version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
        if version.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_docker_compose_config_is_valid() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed: "
                    "`docker compose config -q` not run")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--profile", "demo", "config", "-q"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = _dockerfile_instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for kw, rest in instructions if kw == "ARG" and "=" in rest}
    bases = [rest.split()[0] for kw, rest in instructions if kw == "FROM"]
    assert bases and all(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], b) == "python:3.11-slim" for b in bases)
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    for setting in (
        "VITALS_APP__STORE=rocksdb://",
        "VITALS_APP__BROKER=kafka://kafka:9092",
        "VITALS_APP__WEB_HOST=0.0.0.0",
    ):
        assert setting in env.split(), setting
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs) and "rocksdict" in runs
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    assert ("EXPOSE", "6066") in instructions
    (healthcheck,) = [rest for kw, rest in instructions if kw == "HEALTHCHECK"]
    assert "urllib" in healthcheck and "127.0.0.1" in healthcheck and "/healthz" in healthcheck
    cmds = [rest for kw, rest in instructions if kw == "CMD"]
    assert json.loads(cmds[-1]) == ["vitals", "worker"]


def test_dockerfile_copies_what_the_build_context_keeps() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for kw, rest in _dockerfile_instructions():
        if kw != "COPY" or rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            name = source.rstrip("/").rstrip("*")
            assert name in kept, f"{source} is excluded by deploy/Dockerfile.dockerignore"
            if not source.endswith("*"):
                assert (ROOT / source).exists(), source
    for needed in ("pyproject.toml", "streams", "models", "config"):
        assert needed in kept


# ---------------------------------------------------------------------------------- dashboards


def _dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows
    return out


def _queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = _label_values_expr(query)
            exprs.append(inner if inner is not None else query)
    return exprs


def test_four_dashboards() -> None:
    names = {p.stem for p in DASHBOARD_FILES}
    assert {"executive", "customer-success", "product", "operations"} <= names
    uids = [_dashboard(p)["uid"] for p in DASHBOARD_FILES]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_is_valid(path: Path, datasource_uid: str) -> None:
    dashboard = _dashboard(path)
    assert isinstance(dashboard["uid"], str) and 0 < len(dashboard["uid"]) <= 40
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None, "provisioned dashboards carry no database id"
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    data_panels = [p for p in panels if p["type"] != "row"]
    assert len(data_panels) >= 4
    for panel in data_panels:
        where = f"{path.name}: {panel['title']!r}"
        assert panel["title"], where
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource_uid}, where
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
        assert panel["targets"], where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target.get("datasource", panel["datasource"])["uid"] == datasource_uid, where
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            assert var["datasource"]["uid"] == datasource_uid, var["name"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_has_no_hard_coded_instances(path: Path) -> None:
    hosts = {f"worker-{i}" for i in range(1, 10)}
    for expr in _queries(_dashboard(path)):
        assert not re.search(r"\binstance\s*!?=~?\s*\"(?!\$)", expr), expr
        assert not any(h in expr for h in hosts), expr


# ------------------------------------------------------------------------------- metric names


def test_dashboards_use_known_metrics_only() -> None:
    allowed = _contract_series_names() | _recording_rules() | _extra_metrics()
    unknown = {}
    for path in DASHBOARD_FILES:
        for expr in _queries(_dashboard(path)):
            for name in metric_names(expr) - allowed:
                unknown.setdefault(name, path.name)
    assert not unknown, f"metrics neither in docs/contract.md §3, recording rules nor EXTRA_METRICS.md: {unknown}"


def test_rules_use_contract_metrics_only() -> None:
    """Rules may depend only on metrics that are exported: an alert on a series that is never
    exported would never fire."""
    allowed = _contract_series_names() | _recording_rules() | _documented_metrics()
    for path in RULE_FILES:
        for group in _load_yaml(path)["groups"]:
            for rule in group["rules"]:
                unknown = metric_names(rule["expr"]) - allowed
                assert not unknown, f"{path.name}: {rule.get('record') or rule.get('alert')}: {unknown}"


def test_extra_metrics_are_really_extra_and_used() -> None:
    extras = _extra_metrics()
    contract = _contract_series_names()
    assert not extras & contract, f"already in docs/contract.md §3: {extras & contract}"
    used = {n for path in DASHBOARD_FILES for expr in _queries(_dashboard(path)) for n in metric_names(expr)}
    assert extras <= used, f"listed in EXTRA_METRICS.md but unused: {extras - used}"
    for name in extras:
        assert name.startswith("vitals_") and re.fullmatch(r"[a-z_]+", name), name


def test_no_customer_or_user_labels() -> None:
    for path in [*RULE_FILES]:
        assert not re.search(r"\b(customer_id|user_id)\b", path.read_text(encoding="utf-8")), path
    for path in DASHBOARD_FILES:
        for expr in _queries(_dashboard(path)):
            assert not re.search(r"\b(customer_id|user_id)\b", expr), expr


# ------------------------------------------------------------------------------ rules (static)


def _alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in _load_yaml(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_alert_rules_are_complete() -> None:
    rules = _alert_rules()
    names = {r["alert"] for r in rules}
    assert {
        "VitalsWorkerDown", "VitalsConsumerLagHigh", "VitalsDeadLetterRateHigh", "VitalsNRRBelowOne",
        "VitalsAtRiskCustomersRising", "VitalsChurnModelAUCLow",
    } <= names
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_rule_has_a_promtool_test() -> None:
    tests = [_load_yaml(p) for p in sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))]
    tested_alerts = {
        a["alertname"] for t in tests for case in t["tests"] for a in case.get("alert_rule_test", [])
        if a.get("exp_alerts")
    }
    untested_alerts = {r["alert"] for r in _alert_rules()} - tested_alerts
    assert not untested_alerts, f"alerts without a firing test case: {untested_alerts}"
    tested_records = {
        e["expr"].strip() for t in tests for case in t["tests"] for e in case.get("promql_expr_test", [])
        if e.get("exp_samples")
    }
    untested_records = _recording_rules() - tested_records
    assert not untested_records, f"recording rules without a promql_expr_test: {untested_records}"


# ------------------------------------------------------------------------------ alertmanager


def test_alertmanager_routes() -> None:
    config = _load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")
    route = config["route"]
    receivers = {r["name"]: r for r in config["receivers"]}
    assert {"alertname", "severity"} <= set(route["group_by"])
    assert route["receiver"] in receivers
    critical = [
        r for r in route.get("routes", [])
        if any(re.fullmatch(r'\s*severity\s*=\s*"?critical"?\s*', m) for m in r.get("matchers", []))
    ]
    assert critical and critical[0]["receiver"] != route["receiver"]
    for r in route.get("routes", []):
        assert r["receiver"] in receivers
    for receiver in receivers.values():
        for hook in receiver.get("webhook_configs", []):
            assert re.match(r"https?://[a-z][\w-]*(:\d+)?/", hook["url"]), hook["url"]


# ----------------------------------------------------------------------------------- scripts


def test_ensure_tools_script() -> None:
    script = DEPLOY / "scripts" / "ensure-tools.sh"
    assert os.access(script, os.X_OK), "deploy/scripts/ensure-tools.sh must be executable"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = script.read_text(encoding="utf-8")
    assert "apt-get update" in text and "--no-install-recommends" in text
