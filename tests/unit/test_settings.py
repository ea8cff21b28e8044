"""Settings: defaults, overlay file, VITALS_* environment, validation that names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import (
    DEFAULT_FILE,
    Settings,
    SettingsError,
    _parse_env_value,
    load_settings,
)


def load(**env: str) -> Settings:
    """load_settings with an explicit environment (never os.environ)."""
    return load_settings(env=env)


# ---- defaults ---------------------------------------------------------------------------------


def test_defaults_load() -> None:
    s = load()
    assert s.app.id == "vitals"
    assert s.app.broker == "embedded"
    assert s.app.web_port == 6066
    assert s.app.reporting_currency == "USD"
    assert s.topics.usage == "events.usage"
    assert s.topics.deadletter == "vitals.deadletter"
    assert s.time.mode == "event"
    assert s.time.lateness_days == 2.0
    assert s.time.dedup_horizon_days == 3.0
    assert s.time.max_skew_days == 1.0
    assert s.activity.window_days == 30
    assert s.health.weights == {"usage_frequency": 0.30, "feature_adoption": 0.25,
                                "support": 0.20, "payment": 0.15, "engagement": 0.10}
    assert s.health.priority_weights == {"low": 0.5, "normal": 1.0, "high": 2.0, "urgent": 4.0}
    assert s.revenue.currency_rates == {"USD": 1.0}
    assert s.features.key == []
    assert s.features.released == {}
    assert s.churn.model == "logistic"
    assert s.sources == (str(DEFAULT_FILE),)


def test_defaults_have_the_declared_types() -> None:
    s = load()
    # TOML ints given to float settings are coerced to float, ints stay int
    assert isinstance(s.time.lateness_days, float)
    assert isinstance(s.health.target_active_days, float)
    assert isinstance(s.app.partitions, int) and not isinstance(s.app.partitions, bool)
    assert isinstance(s.milestones.feature_events_are_value, bool)


def test_input_topics_map_names_to_families() -> None:
    s = load()
    assert s.topics.input_topics() == {
        "events.signup": "signup", "events.usage": "usage", "events.feature": "feature",
        "events.billing": "billing", "events.support": "support",
    }
    assert "vitals.deadletter" in s.topics.output_topics()


def test_environment_other_than_vitals_is_ignored() -> None:
    s = load(HOME="/root", PATH="/bin", VITALSX="1")
    assert s == load()


# ---- environment overrides ---------------------------------------------------------------------


def test_env_override_section_key() -> None:
    s = load(VITALS_TIME__LATENESS_DAYS="1")
    assert s.time.lateness_days == 1.0  # TOML int 1 coerced to float
    assert isinstance(s.time.lateness_days, float)
    assert "env VITALS_TIME__LATENESS_DAYS" in s.sources


def test_env_override_is_case_insensitive_on_the_key() -> None:
    s = load(VITALS_app__web_port="7000")
    assert s.app.web_port == 7000


def test_env_override_nested_weights() -> None:
    # 0.30 + 0.25 + 0.15 + 0.20 + 0.10 = 1.0
    s = load(VITALS_HEALTH__WEIGHTS__SUPPORT="0.15", VITALS_HEALTH__WEIGHTS__PAYMENT="0.20")
    assert s.health.weights["support"] == 0.15
    assert s.health.weights["payment"] == 0.20
    assert s.health.weights["usage_frequency"] == 0.30  # untouched keys keep their default


def test_env_override_open_map_adds_a_key() -> None:
    s = load(VITALS_FEATURES__RELEASED__reports='"2026-01-01T00:00:00Z"')
    assert s.features.released == {"reports": "2026-01-01T00:00:00Z"}


def test_env_currency_rate_keeps_the_iso_code_case() -> None:
    s = load(VITALS_REVENUE__CURRENCY_RATES__EUR="1.1")
    assert s.revenue.currency_rates == {"USD": 1.0, "EUR": 1.1}


def test_env_reporting_currency_with_its_rate() -> None:
    s = load(VITALS_APP__REPORTING_CURRENCY="EUR", VITALS_REVENUE__CURRENCY_RATES__EUR="1")
    assert s.app.reporting_currency == "EUR"


@pytest.mark.parametrize("raw, expected", [
    ("3", 3),
    ("2.5", 2.5),
    ("true", True),
    ("false", False),
    ('"quoted"', "quoted"),
    ("plain text", "plain text"),   # not a TOML literal: taken as a string
    ("info", "info"),
    ("0.0.0.0", "0.0.0.0"),         # not valid TOML either
    ("kafka://h:9092", "kafka://h:9092"),
    ('["a", "b"]', ["a", "b"]),
    ("[]", []),
    ("{ a = 1 }", {"a": 1}),
])
def test_env_values_are_toml_literals_else_strings(raw: str, expected: object) -> None:
    value = _parse_env_value(raw)
    assert value == expected
    assert type(value) is type(expected)


def test_env_list_and_bool_and_string_values() -> None:
    s = load(VITALS_FEATURES__KEY='["reports", "alerts"]',
             VITALS_MILESTONES__FEATURE_EVENTS_ARE_VALUE="false",
             VITALS_APP__LOG_LEVEL="debug",
             VITALS_APP__BROKER="kafka://localhost:9092")
    assert s.features.key == ["reports", "alerts"]
    assert s.milestones.feature_events_are_value is False
    assert s.app.log_level == "debug"
    assert s.app.broker == "kafka://localhost:9092"


def test_env_string_that_looks_like_a_number_is_rejected_naming_the_key() -> None:
    # Documented behaviour (TOML literal first): "123" is an int, and app.id wants a string.
    # The user must quote it: VITALS_APP__ID='"123"'.
    with pytest.raises(SettingsError, match=r"'app\.id'"):
        load(VITALS_APP__ID="123")
    assert load(VITALS_APP__ID='"123"').app.id == "123"


def test_vitals_config_is_not_a_setting(tmp_path: Path) -> None:
    overlay = tmp_path / "o.toml"
    overlay.write_text("[app]\nweb_port = 7100\n")
    s = load(VITALS_CONFIG=str(overlay))
    assert s.app.web_port == 7100
    assert s.sources == (str(DEFAULT_FILE), str(overlay))


# ---- overlay file ------------------------------------------------------------------------------


def test_overlay_file_merges_over_defaults(tmp_path: Path) -> None:
    overlay = tmp_path / "prod.toml"
    overlay.write_text(
        '[app]\nbroker = "kafka://k1:9092,k2:9092"\n'
        "[time]\nlateness_days = 1\n"
        "[revenue.currency_rates]\nEUR = 1.08\n"
        '[features.released]\nreports = "2026-02-01T00:00:00Z"\n'
    )
    s = load_settings(overlay, env={})
    assert s.app.broker == "kafka://k1:9092,k2:9092"
    assert s.app.web_port == 6066  # untouched default
    assert s.time.lateness_days == 1.0
    assert s.time.dedup_horizon_days == 3.0
    assert s.revenue.currency_rates == {"USD": 1.0, "EUR": 1.08}  # open map: merged, case kept
    assert s.features.released == {"reports": "2026-02-01T00:00:00Z"}
    assert s.sources == (str(DEFAULT_FILE), str(overlay))


def test_env_wins_over_overlay(tmp_path: Path) -> None:
    overlay = tmp_path / "o.toml"
    overlay.write_text("[app]\nweb_port = 7100\n")
    s = load_settings(overlay, env={"VITALS_APP__WEB_PORT": "7200"})
    assert s.app.web_port == 7200
    assert s.sources == (str(DEFAULT_FILE), str(overlay), "env VITALS_APP__WEB_PORT")


def test_overlay_not_found(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(tmp_path / "missing.toml", env={})


def test_overlay_not_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[app\nid = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad, env={})


def test_overlay_unknown_key_names_it(tmp_path: Path) -> None:
    overlay = tmp_path / "o.toml"
    overlay.write_text("[time]\nlatenes_days = 1\n")
    with pytest.raises(SettingsError, match=r"unknown setting 'time\.latenes_days'"):
        load_settings(overlay, env={})


# ---- unknown keys and bad types ----------------------------------------------------------------


@pytest.mark.parametrize("env, key", [
    ({"VITALS_TIME__LATENESS": "1"}, "time.lateness"),
    ({"VITALS_NOPE__X": "1"}, "nope"),
    ({"VITALS_APP_ID": "x"}, "app_id"),  # single underscore: not a section separator
    ({"VITALS_HEALTH__WEIGHTS__USAGE": "0.3"}, "health.weights.usage"),  # closed map
    ({"VITALS_HEALTH__GRADES__ORANGE": "50"}, "health.grades.orange"),
])
def test_unknown_key_fails_naming_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError, match=rf"unknown setting '{key}'"):
        load_settings(env=env)


@pytest.mark.parametrize("env, key", [
    ({"VITALS_APP__WEB_PORT": "high"}, "app.web_port"),      # string for int
    ({"VITALS_APP__WEB_PORT": "80.5"}, "app.web_port"),      # float for int
    ({"VITALS_APP__PARTITIONS": "true"}, "app.partitions"),  # bool is not an int
    ({"VITALS_TIME__LATENESS_DAYS": "two"}, "time.lateness_days"),
    ({"VITALS_TIME__LATENESS_DAYS": "true"}, "time.lateness_days"),  # bool is not a number
    ({"VITALS_MILESTONES__FEATURE_EVENTS_ARE_VALUE": "1"}, "milestones.feature_events_are_value"),
    ({"VITALS_FEATURES__KEY": "reports"}, "features.key"),   # string for list
    ({"VITALS_FEATURES__KEY": "[1, 2]"}, r"features.key\[0\]"),
    ({"VITALS_HEALTH__WEIGHTS__SUPPORT": '"x"'}, "health.weights.support"),
    ({"VITALS_REVENUE__CURRENCY_RATES": "1"}, "revenue.currency_rates"),  # table expected
    ({"VITALS_TIME": "1"}, "time"),  # a section given a scalar
])
def test_bad_type_fails_naming_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError, match=rf"'{key}'"):
        load_settings(env=env)


# ---- validation --------------------------------------------------------------------------------


def test_weights_not_summing_to_one_fail() -> None:
    # 0.30 + 0.25 + 0.30 + 0.15 + 0.10 = 1.10
    with pytest.raises(SettingsError, match=r"'health\.weights' must sum to 1, sums to 1\.1"):
        load(VITALS_HEALTH__WEIGHTS__SUPPORT="0.30")


def test_negative_weight_fails_even_if_sum_is_one() -> None:
    # 0.30 + 0.25 + (-0.05) + 0.40 + 0.10 = 1.0
    with pytest.raises(SettingsError, match=r"'health\.weights\.support' must be >= 0"):
        load(VITALS_HEALTH__WEIGHTS__SUPPORT="-0.05", VITALS_HEALTH__WEIGHTS__PAYMENT="0.40")


@pytest.mark.parametrize("key, good, bad", [
    ("VITALS_TIME__MODE", ["event", "live"], "wallclock"),
    ("VITALS_CHURN__MODEL", ["logistic", "forest"], "svm"),
    ("VITALS_APP__LOG_LEVEL", ["crit", "error", "warn", "info", "debug"], "verbose"),
])
def test_enum_values(key: str, good: list[str], bad: str) -> None:
    section, name = key[len("VITALS_"):].lower().split("__")
    for value in good:
        assert getattr(getattr(load(**{key: value}), section), name) == value
    with pytest.raises(SettingsError, match=rf"'{section}\.{name}' must be one of"):
        load(**{key: bad})


@pytest.mark.parametrize("env, key", [
    ({"VITALS_APP__PARTITIONS": "0"}, "app.partitions"),
    ({"VITALS_ACTIVITY__WINDOW_DAYS": "0"}, "activity.window_days"),
    ({"VITALS_TIME__MAX_SKEW_DAYS": "0"}, "time.max_skew_days"),
    ({"VITALS_TIME__LATENESS_DAYS": "-1"}, "time.lateness_days"),
    ({"VITALS_TIME__LATENESS_DAYS": "4"}, "time.dedup_horizon_days"),  # horizon 3 < lateness 4
    ({"VITALS_EMIT__MAX_DELAY_SECONDS": "0.5"}, "emit.max_delay_seconds"),  # < interval 1
    ({"VITALS_APP__WEB_PORT": "70000"}, "app.web_port"),
    ({"VITALS_APP__BROKER": '"localhost:9092"'}, "app.broker"),
    ({"VITALS_REVENUE__GROSS_MARGIN": "0"}, "revenue.gross_margin"),
    ({"VITALS_HEALTH__GRADES__YELLOW": "80"}, "health.grades"),  # yellow 80 > green 70
    ({"VITALS_CHURN__BANDS__MEDIUM": "0.6"}, "churn.bands"),     # medium 0.6 > high 0.5
    ({"VITALS_APP__REPORTING_CURRENCY": '"GBP"'}, "revenue.currency_rates"),  # no GBP rate
])
def test_range_checks_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError, match=rf"'{key}'"):
        load_settings(env=env)


def test_lateness_equal_to_horizon_is_allowed() -> None:
    s = load(VITALS_TIME__LATENESS_DAYS="3")
    assert s.time.lateness_days == s.time.dedup_horizon_days == 3.0


# ---- as_dict -----------------------------------------------------------------------------------


def test_as_dict() -> None:
    s = load(VITALS_APP__WEB_PORT="7000")
    d = s.as_dict()
    assert "sources" not in d
    assert set(d) == {"app", "topics", "kafka", "ingest", "time", "emit", "activity", "milestones",
                      "health", "revenue", "features", "churn", "alerts"}
    assert d["app"]["web_port"] == 7000
    assert d["time"] == {"mode": "event", "lateness_days": 2.0, "dedup_horizon_days": 3.0,
                         "max_skew_days": 1.0, "min_ts": "2000-01-01T00:00:00Z"}
    assert d["health"]["weights"]["usage_frequency"] == 0.30
    # a plain, JSON-serialisable structure
    import json
    assert json.loads(json.dumps(d)) == d


# ---- time.min_ts and currency rates (docs/validation.md) ---------------------------------------


def test_min_ts_default_and_override() -> None:
    assert load().time.min_ts == "2000-01-01T00:00:00Z"
    assert load().time.min_epoch() == 946684800.0
    s = load(VITALS_TIME__MIN_TS="2020-06-01T00:00:00+02:00")
    assert s.time.min_epoch() == 1590962400.0  # 2020-05-31T22:00:00Z


@pytest.mark.parametrize("value", ["2000-01-01", "2000-01-01T00:00:00", "yesterday",
                                   "20000101T000000Z", "1970-01-01T00:00:00Z",
                                   "1973-03-03T09:46:39Z", "9999-12-31T23:59:59Z"])
def test_min_ts_must_be_rfc3339_within_bounds(value: str) -> None:
    with pytest.raises(SettingsError, match="time.min_ts"):
        load(VITALS_TIME__MIN_TS=value)


def test_min_ts_lowest_allowed_is_the_milliseconds_threshold() -> None:
    assert load(VITALS_TIME__MIN_TS="1973-03-03T09:46:40Z").time.min_epoch() == 1e8


@pytest.mark.parametrize("rate", ["0", "-1.1", "inf", "nan"])
def test_currency_rates_must_be_positive_finite(rate: str) -> None:
    with pytest.raises(SettingsError, match="revenue.currency_rates.EUR"):
        load(VITALS_REVENUE__CURRENCY_RATES__EUR=rate)
