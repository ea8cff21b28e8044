"""Logs: one JSON object per line, RFC 3339 UTC timestamps, libraries quiet by default."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator

import pytest

from streams.cli import CLI_LOGGER, OWN_LOGGERS, configure_logging

RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
LIBRARIES = ("faust.worker", "mode.services", "aiokafka.consumer", "aiohttp.server")


@contextlib.contextmanager
def saved_logging() -> Iterator[None]:
    """Restores the root handlers and the levels and filters configure_logging changes."""
    names = ["", *OWN_LOGGERS, CLI_LOGGER, "aiohttp.server", "py.warnings"]
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg, lg.level, lg.handlers[:], lg.filters[:]) for lg in loggers]
    try:
        yield
    finally:
        for lg, level, handlers, filters in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.filters[:] = filters
        logging.captureWarnings(False)


def lines_of(out: io.StringIO) -> list[dict]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line parses, or this fails


def test_every_record_is_one_json_line_with_an_rfc3339_utc_timestamp():
    out = io.StringIO()
    with saved_logging():
        configure_logging("info", out)
        log = logging.getLogger("streams.test")
        log.info('a "quoted" value, a backslash \\ and a tab\t')
        log.warning("two\nlines and unicode: café ✓ %s", {"k": 'v"'})
        try:
            raise ValueError('bad "input"\nsecond line')
        except ValueError:
            log.exception("could not apply %d records", 3)
        log.error("with extras", extra={"customer_count": 7, "topic": "events.usage"})
    records = lines_of(out)
    assert len(records) == 4
    for rec in records:
        assert list(rec)[:4] == ["ts", "level", "logger", "msg"]
        assert RFC3339_UTC.fullmatch(rec["ts"]), rec["ts"]
        assert rec["logger"] == "streams.test"
    assert records[0]["msg"] == 'a "quoted" value, a backslash \\ and a tab\t'
    assert records[1]["msg"] == "two\nlines and unicode: café ✓ {'k': 'v\"'}"
    assert records[2]["level"] == "ERROR" and records[2]["msg"] == "could not apply 3 records"
    assert records[2]["exc_info"].startswith("Traceback") and 'ValueError: bad "input"' in \
        records[2]["exc_info"]
    assert records[3]["customer_count"] == 7 and records[3]["topic"] == "events.usage"


@pytest.mark.parametrize("level, ours, libraries", [
    ("warn", logging.WARNING, logging.WARNING),
    ("info", logging.INFO, logging.WARNING),
    ("debug", logging.DEBUG, logging.DEBUG),
    ("error", logging.ERROR, logging.ERROR),
])
def test_libraries_stay_at_warning_unless_debug(level, ours, libraries):
    out = io.StringIO()
    with saved_logging():
        configure_logging(level, out)
        for name in ("streams.app", "models.health", *LIBRARIES):
            for lvl in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
                logging.getLogger(name).log(lvl, "%s at %s", name, logging.getLevelName(lvl))
    seen = {(r["logger"], r["level"]) for r in lines_of(out)}
    for name in ("streams.app", "models.health"):
        assert {lv for lg, lv in seen if lg == name} == {
            logging.getLevelName(x) for x in (10, 20, 30, 40) if x >= ours}
    for name in LIBRARIES:
        assert {lv for lg, lv in seen if lg == name} == {
            logging.getLevelName(x) for x in (10, 20, 30, 40) if x >= libraries}


def test_the_command_line_says_where_the_worker_listens_at_the_default_level():
    out = io.StringIO()
    with saved_logging():
        configure_logging("warn", out)
        logging.getLogger(CLI_LOGGER).info("vitals worker: broker %s", "kafka://x:1")
        logging.getLogger("streams.app").info("customer partitions assigned")
    assert [r["msg"] for r in lines_of(out)] == ["vitals worker: broker kafka://x:1"]


def test_python_warnings_are_json_too():
    out = io.StringIO()
    with saved_logging():
        configure_logging("warn", out)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a deprecated thing", UserWarning, stacklevel=1)
    (rec,) = lines_of(out)
    assert rec["logger"] == "py.warnings" and "a deprecated thing" in rec["msg"]
