"""Settings: config/default.toml, an optional overlay file, then VITALS_* environment variables.

Everything is validated at start so that a typo fails loudly, naming the key, instead of
silently running with a default.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEFAULT_FILE = CONFIG_DIR / "default.toml"
ENV_PREFIX = "VITALS_"


class SettingsError(ValueError):
    """A setting is unknown, ill-typed or out of range; the message names the key."""


@dataclass(frozen=True)
class AppSettings:
    id: str
    broker: str
    embedded_port: int
    web_host: str
    web_port: int
    partitions: int
    session_timeout_seconds: float
    producer_batch_bytes: int
    store: str
    data_dir: str
    log_level: str
    reporting_currency: str
    create_topics: bool


@dataclass(frozen=True)
class TopicSettings:
    signup: str
    usage: str
    feature: str
    billing: str
    support: str
    customer: str
    feature_out: str
    business: str
    alerts: str
    deadletter: str
    repartition: str
    business_internal: str
    feature_internal: str
    feature_catalog: str
    churn_examples: str
    churn_model: str
    input_partitions: int
    replication_factor: int

    def input_topics(self) -> dict[str, str]:
        """Topic name -> event family."""
        return {
            self.signup: "signup",
            self.usage: "usage",
            self.feature: "feature",
            self.billing: "billing",
            self.support: "support",
        }

    def output_topics(self) -> list[str]:
        return [self.customer, self.feature_out, self.business, self.alerts, self.deadletter]


@dataclass(frozen=True)
class KafkaSettings:
    """How every client connects (TLS, SASL); the password itself is never a setting."""
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str
    sasl_password_env: str
    sasl_password_file: str
    ssl_cafile: str
    ssl_certfile: str
    ssl_keyfile: str
    ssl_check_hostname: bool
    connect_timeout_seconds: float

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")


@dataclass(frozen=True)
class IngestSettings:
    batch_max_events: int
    poll_timeout_seconds: float
    max_event_bytes: int
    order_grace_seconds: float


@dataclass(frozen=True)
class TimeSettings:
    mode: str
    lateness_days: float
    dedup_horizon_days: float
    max_skew_days: float
    min_ts: str  # RFC 3339: events dated before it are invalid_ts

    def min_epoch(self) -> float:
        """min_ts in epoch seconds (validated at load)."""
        from streams.events import parse_rfc3339

        return parse_rfc3339(self.min_ts)


@dataclass(frozen=True)
class EmitSettings:
    interval_seconds: float
    max_delay_seconds: float


@dataclass(frozen=True)
class ActivitySettings:
    window_days: int


@dataclass(frozen=True)
class MilestoneSettings:
    account_setup_usage: list[str]
    account_setup_billing: list[str]
    value_actions: list[str]
    feature_events_are_value: bool
    eureka_days: int
    habit_weeks: int
    success_days: int


@dataclass(frozen=True)
class HealthSettings:
    target_active_days: float
    ticket_tolerance: float
    payment_window_days: int
    survey_window_days: int
    engagement_stickiness_target: float
    weights: dict[str, float]
    priority_weights: dict[str, float]
    grades: dict[str, float]


@dataclass(frozen=True)
class RevenueSettings:
    gross_margin: float
    min_churn_rate: float
    churn_rate_months: int
    segment_wait_days: float
    currency_rates: dict[str, float]


@dataclass(frozen=True)
class Eligibility:
    """Who a feature is for: customers of these segments and plans (empty = any)."""
    segments: list[str] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)

    def admits(self, segment: str | None, plan: str | None) -> bool:
        return ((not self.segments or segment in self.segments)
                and (not self.plans or plan in self.plans))


def eligibility_group(rule: Eligibility | None) -> str:
    """A name for the customers a rule admits: features with equal rules share their counts."""
    if rule is None:
        return "*"
    return f"segments={','.join(sorted(rule.segments))};plans={','.join(sorted(rule.plans))}"


@dataclass(frozen=True)
class FeatureSettings:
    key: list[str]
    retention_window_days: int
    min_group: int
    configured: list[str]
    released: dict[str, str]
    eligible: dict[str, Eligibility] = field(default_factory=dict)


@dataclass(frozen=True)
class ChurnSettings:
    horizon_days: int
    settle_days: int
    min_labelled: int
    model: str
    publish_interval_seconds: float
    bands: dict[str, float]
    champion_window: int
    champion_min_labels: int
    champion_margin: float
    calibration_half_life: float
    # HMAC key of published model snapshots (docs/churn.md); never printed (``as_dict``).
    model_secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class AlertRule:
    metric: str
    op: str
    threshold: float
    severity: str
    summary: str
    actions: list[str]
    threshold_by_segment: dict[str, float] = field(default_factory=dict)
    for_days: float = 0.0
    # Hysteresis: a firing alert resolves only once the metric is past the threshold by this
    # margin (away from the firing side), and has stayed there resolve_for_days.
    resolve_margin: float = 0.0
    resolve_for_days: float = 0.0


@dataclass(frozen=True)
class AlertSettings:
    customer_rules: list[str]
    business_rules: list[str]
    feature_rules: list[str]
    rules: dict[str, AlertRule]


@dataclass(frozen=True)
class Settings:
    app: AppSettings
    topics: TopicSettings
    kafka: KafkaSettings
    ingest: IngestSettings
    time: TimeSettings
    emit: EmitSettings
    activity: ActivitySettings
    milestones: MilestoneSettings
    health: HealthSettings
    revenue: RevenueSettings
    features: FeatureSettings
    churn: ChurnSettings
    alerts: AlertSettings
    sources: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("sources")
        if data["churn"]["model_secret"]:
            data["churn"]["model_secret"] = "<set>"
        return data


# Settings taken verbatim from the environment (a secret of digits stays a string).
RAW_STRING_KEYS = {("churn", "model_secret")}
# Maps whose keys are data (feature names, currencies), not a fixed schema.
OPEN_MAPS = {("features", "released"), ("features", "eligible"), ("revenue", "currency_rates"),
             ("alerts", "rules")}
ENUMS = {
    ("time", "mode"): {"event", "live"},
    ("churn", "model"): {"logistic", "forest"},
    ("app", "log_level"): {"crit", "error", "warn", "info", "debug"},
    ("kafka", "security_protocol"): {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"},
    ("kafka", "sasl_mechanism"): {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"},
}
ALERT_OPS = {"<", "<=", ">", ">="}
SEVERITIES = {"info", "warning", "critical"}


def load_settings(overlay: str | os.PathLike[str] | None = None,
                  env: typing.Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the overlay file (argument or VITALS_CONFIG), then VITALS_* variables."""
    env = os.environ if env is None else env
    with open(DEFAULT_FILE, "rb") as fh:
        defaults = tomllib.load(fh)
    merged = _deep_copy(defaults)
    sources = [str(DEFAULT_FILE)]
    overlay = overlay or env.get("VITALS_CONFIG")
    if overlay:
        path = Path(overlay)
        if not path.is_file() and (CONFIG_DIR / path).is_file():
            path = CONFIG_DIR / path
        try:
            with open(path, "rb") as fh:
                extra = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"config file not found: {overlay}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        _merge(merged, extra, defaults, ())
        sources.append(str(path))
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == "VITALS_CONFIG":
            continue
        parts: list[str] = []
        for part in name[len(ENV_PREFIX):].split("__"):
            # Keys of open maps are data (a currency code, a feature name): keep their case.
            parts.append(part if tuple(parts) in OPEN_MAPS else part.lower())
        keypath = tuple(parts)
        value = raw if keypath in RAW_STRING_KEYS else _parse_env_value(raw)
        _merge(merged, _nest(keypath, value), defaults, ())
        sources.append(f"env {name}")
    settings = _build(merged)
    _validate(settings)
    _validate_kafka(settings.kafka, env)
    return dataclasses.replace(settings, sources=tuple(sources))


def _parse_env_value(raw: str) -> Any:
    """Environment values are TOML literals when they parse as such, else plain strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _nest(keypath: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(keypath):
        out = {part: out}
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return list(data)
    return data


def _merge(target: dict[str, Any], extra: dict[str, Any], schema: dict[str, Any],
           path: tuple[str, ...]) -> None:
    for key, value in extra.items():
        keypath = path + (key,)
        dotted = ".".join(keypath)
        if path in OPEN_MAPS:
            target[key] = value
            continue
        if key not in schema:
            raise SettingsError(f"unknown setting '{dotted}'")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise SettingsError(f"setting '{dotted}' must be a table, got {value!r}")
            _merge(target[key], value, schema[key], keypath)
        else:
            target[key] = value


def _build(data: dict[str, Any]) -> Settings:
    sections = {}
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        if f.name == "sources":
            continue
        cls = hints[f.name]
        sections[f.name] = _build_section(cls, data.get(f.name, {}), f.name)
    return Settings(**sections)


def _build_section(cls: type, data: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for extra in set(data) - names:
        raise SettingsError(f"unknown setting '{section}.{extra}'")
    for f in dataclasses.fields(cls):
        key = f"{section}.{f.name}"
        if f.name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise SettingsError(f"missing setting '{key}'")
        values[f.name] = _coerce(data[f.name], hints[f.name], key)
    return cls(**values)


def _as_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(f"setting '{key}' must be true or false, got {value!r}")
    return value


def _as_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"setting '{key}' must be an integer, got {value!r}")
    return value


def _as_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"setting '{key}' must be a number, got {value!r}")
    return float(value)


def _as_str(value: Any, key: str) -> str:
    if isinstance(value, datetime) and value.tzinfo is not None:
        # An unquoted TOML date-time (also from VITALS_* variables): keep it as RFC 3339.
        return value.isoformat().replace("+00:00", "Z")
    if not isinstance(value, str):
        raise SettingsError(f"setting '{key}' must be a string, got {value!r}")
    return value


_SCALARS: dict[Any, Callable[[Any, str], Any]] = {
    bool: _as_bool, int: _as_int, float: _as_float, str: _as_str}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    scalar = _SCALARS.get(hint)
    if scalar is not None:
        return scalar(value, key)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise SettingsError(f"setting '{key}' must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise SettingsError(f"setting '{key}' must be a table, got {value!r}")
        return {k: _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise SettingsError(f"setting '{key}' must be a table, got {value!r}")
        return _build_section(hint, value, key)
    if isinstance(hint, types.UnionType):  # pragma: no cover - not used yet
        return value
    raise SettingsError(f"setting '{key}' has an unsupported type {hint!r}")


def _validate(s: Settings) -> None:
    """Checks no single field's type can express, in the order they are reported."""
    _validate_choices(s)
    _validate_min_ts(s)
    _validate_tables(s)
    _validate_scores(s)
    _validate_ranges(s)


def _validate_choices(s: Settings) -> None:
    """Settings that name one of a fixed set of values; the alert rules' own fields."""
    for (section, name), allowed in ENUMS.items():
        value = getattr(getattr(s, section), name)
        if value not in allowed:
            raise SettingsError(
                f"setting '{section}.{name}' must be one of {sorted(allowed)}, got {value!r}")
    for name, rule in s.alerts.rules.items():
        if rule.op not in ALERT_OPS:
            raise SettingsError(f"setting 'alerts.rules.{name}.op' must be one of "
                                f"{sorted(ALERT_OPS)}, got {rule.op!r}")
        if rule.severity not in SEVERITIES:
            raise SettingsError(f"setting 'alerts.rules.{name}.severity' must be one of "
                                f"{sorted(SEVERITIES)}, got {rule.severity!r}")
        for key in ("for_days", "resolve_margin", "resolve_for_days"):
            if not 0 <= getattr(rule, key) < float("inf"):
                raise SettingsError(f"setting 'alerts.rules.{name}.{key}' must be a number "
                                    f">= 0, got {getattr(rule, key)!r}")


def _validate_min_ts(s: Settings) -> None:
    from streams.events import EPOCH_MS_THRESHOLD, MAX_TS, InvalidEvent, parse_rfc3339

    try:
        min_ts = parse_rfc3339(s.time.min_ts)
    except InvalidEvent as exc:
        raise SettingsError(f"setting 'time.min_ts' must be an RFC 3339 time with an offset, "
                            f"e.g. 2000-01-01T00:00:00Z: {exc.detail}") from None
    # Epoch numbers above 1e11 are read as milliseconds; ms values are >= 1e11 ms
    # (1973-03-03), so a lower min_ts would make some epoch numbers ambiguous.
    if not EPOCH_MS_THRESHOLD / 1000 <= min_ts < MAX_TS:
        raise SettingsError("setting 'time.min_ts' must be between 1973-03-03T09:46:40Z and "
                            f"9999-12-31T23:59:59Z, got {s.time.min_ts!r}")


def _validate_tables(s: Settings) -> None:
    """Keyed tables: positive currency rates, known segments, defined alert rules."""
    from streams.events import SEGMENTS

    for code, rate in s.revenue.currency_rates.items():
        if not 0 < rate < float("inf"):
            raise SettingsError(f"setting 'revenue.currency_rates.{code}' must be a positive "
                                f"number, got {rate!r}")
    for feature, rule in s.features.eligible.items():
        unknown = set(rule.segments) - SEGMENTS
        if unknown:
            raise SettingsError(f"setting 'features.eligible.{feature}.segments' names unknown "
                                f"segments {sorted(unknown)}; known: {sorted(SEGMENTS)}")
    for kind in ("customer_rules", "business_rules", "feature_rules"):
        for name in getattr(s.alerts, kind):
            if name not in s.alerts.rules:
                raise SettingsError(f"setting 'alerts.{kind}' names an unknown rule {name!r}")


def _validate_scores(s: Settings) -> None:
    """The health score's weights and grades, the churn model's bands and champion rules."""
    total = sum(s.health.weights.values())
    if abs(total - 1.0) > 1e-9:
        raise SettingsError(f"setting 'health.weights' must sum to 1, sums to {total:g}")
    for key, weight in s.health.weights.items():
        if weight < 0:
            raise SettingsError(f"setting 'health.weights.{key}' must be >= 0, got {weight:g}")
    if not s.health.grades["green"] > s.health.grades["yellow"]:
        raise SettingsError("setting 'health.grades': green must be above yellow")
    if not s.churn.bands["high"] > s.churn.bands["medium"]:
        raise SettingsError("setting 'churn.bands': high must be above medium")
    c = s.churn
    if not (c.champion_window >= c.champion_min_labels >= 1 and c.champion_margin >= 0
            and c.calibration_half_life > 0):
        raise SettingsError("settings 'churn.champion_*': need champion_window >= "
                            "champion_min_labels >= 1, champion_margin >= 0 and "
                            "calibration_half_life > 0")
    from models.churn import MIN_SECRET_CHARS

    secret = s.churn.model_secret
    if secret and len(secret) < MIN_SECRET_CHARS:
        raise SettingsError(f"setting 'churn.model_secret' must have at least "
                            f"{MIN_SECRET_CHARS} characters")


def _validate_ranges(s: Settings) -> None:
    """Sizes, durations, ports, the broker address, the margin, the reporting currency."""
    positive = {
        "app.partitions": s.app.partitions, "topics.input_partitions": s.topics.input_partitions,
        "app.session_timeout_seconds": s.app.session_timeout_seconds,
        "ingest.batch_max_events": s.ingest.batch_max_events,
        "emit.interval_seconds": s.emit.interval_seconds,
        "emit.max_delay_seconds": s.emit.max_delay_seconds,
        "activity.window_days": s.activity.window_days,
        "time.dedup_horizon_days": s.time.dedup_horizon_days,
        "time.max_skew_days": s.time.max_skew_days,
        "topics.replication_factor": s.topics.replication_factor,
        "kafka.connect_timeout_seconds": s.kafka.connect_timeout_seconds,
    }
    for key, value in positive.items():
        if value <= 0:
            raise SettingsError(f"setting '{key}' must be > 0, got {value!r}")
    if s.time.lateness_days < 0:
        raise SettingsError(
            f"setting 'time.lateness_days' must be >= 0, got {s.time.lateness_days}")
    if s.ingest.order_grace_seconds < 0:
        raise SettingsError("setting 'ingest.order_grace_seconds' must be >= 0, got "
                            f"{s.ingest.order_grace_seconds}")
    if s.time.dedup_horizon_days < s.time.lateness_days:
        raise SettingsError("setting 'time.dedup_horizon_days' must be >= 'time.lateness_days'")
    if s.emit.max_delay_seconds < s.emit.interval_seconds:
        raise SettingsError("setting 'emit.max_delay_seconds' must be >= 'emit.interval_seconds'")
    if not (0 <= s.app.web_port < 65536 and 0 <= s.app.embedded_port < 65536):
        raise SettingsError("settings 'app.web_port' and 'app.embedded_port' must be ports")
    broker = s.app.broker
    if broker != "embedded" and not broker.startswith("kafka://"):
        raise SettingsError(
            f"setting 'app.broker' must be 'embedded' or 'kafka://host:port', got {broker!r}")
    if not (0 < s.revenue.gross_margin <= 1):
        raise SettingsError("setting 'revenue.gross_margin' must be in (0, 1]")
    if s.app.reporting_currency not in s.revenue.currency_rates:
        raise SettingsError(
            f"setting 'revenue.currency_rates' needs the reporting currency "
            f"{s.app.reporting_currency!r}")


def _validate_kafka(k: KafkaSettings, env: typing.Mapping[str, str]) -> None:
    """TLS files must exist and SASL needs a user and a password source, checked at start."""
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(k, name)
        if path and not Path(path).is_file():
            raise SettingsError(f"setting 'kafka.{name}': no such file {path!r}")
    if bool(k.ssl_certfile) != bool(k.ssl_keyfile):
        raise SettingsError("settings 'kafka.ssl_certfile' and 'kafka.ssl_keyfile' go together "
                            "(a client certificate needs its key)")
    if (k.ssl_cafile or k.ssl_certfile) and not k.uses_tls:
        raise SettingsError(f"setting 'kafka.ssl_*' is given but 'kafka.security_protocol' is "
                            f"{k.security_protocol!r}: use SSL or SASL_SSL")
    if not k.uses_sasl:
        return
    if not k.sasl_username:
        raise SettingsError(f"setting 'kafka.sasl_username' is needed with "
                            f"security_protocol {k.security_protocol}")
    if k.sasl_password_file:
        if not Path(k.sasl_password_file).is_file():
            raise SettingsError(f"setting 'kafka.sasl_password_file': no such file "
                                f"{k.sasl_password_file!r}")
    elif not k.sasl_password_env or not env.get(k.sasl_password_env):
        raise SettingsError(f"SASL needs a password: set the environment variable "
                            f"{k.sasl_password_env or '(kafka.sasl_password_env is empty)'} or "
                            f"'kafka.sasl_password_file'")
    if k.sasl_password_env.startswith(ENV_PREFIX):
        raise SettingsError(f"setting 'kafka.sasl_password_env' must not start with "
                            f"{ENV_PREFIX} (those variables are settings)")
