"""The worker's HTTP views through Faust's real web stack (aiohttp), without a broker."""
from __future__ import annotations

import asyncio
import io
import json
import logging
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.cli import configure_logging
from streams.exporters.metrics import Metrics
from streams.exporters.web import BadRequest, business_filter, register_views
from streams.health import EXIT_SERVICE_DIED, Health
from tests.unit.test_logs import saved_logging

RECORDS = {
    "all|2026-03": {"scope": "all", "period": "2026-03", "mrr_end": 10.0},
    "segment:smb|2026-03": {"scope": "segment:smb", "period": "2026-03", "mrr_end": 4.0},
    "all|2026-04": {"scope": "all", "period": "2026-04", "mrr_end": 12.0},
}


class Worker:
    """What the views read of a worker, on an unstarted Faust app."""

    def __init__(self) -> None:
        self.app = faust.App("web-unit", broker="kafka://127.0.0.1:1")
        self.health = Health(exit_delay=60.0, stop=lambda: None)
        self.ingest = SimpleNamespace(ready=True)
        self.service = SimpleNamespace(
            app=self.app, health=self.health, ingest=self.ingest, metrics=Metrics(), flushes=3,
            processor=SimpleNamespace(), feature_records={}, business_records=dict(RECORDS))
        register_views(self.service, self.app.Table("customers"))
        self.app.tables.recovery.completed.set()


@pytest.fixture
async def http():
    worker = Worker()
    client = TestClient(TestServer(worker.app.web.web_app))
    await client.start_server()
    client.worker = worker
    yield client
    await client.close()


async def get(client: TestClient, path: str) -> tuple[int, Any]:
    resp = await client.get(path)
    assert resp.content_type == "application/json", (path, await resp.text())
    return resp.status, await resp.json()


@pytest.mark.parametrize("query, error", [
    ("period=9999-99", "invalid_period"),
    ("period=2026-3", "invalid_period"),
    ("period=2026-00", "invalid_period"),
    ("period=2026-03-01", "invalid_period"),
    ("period=", "invalid_period"),
    ("scope=zzz", "invalid_scope"),
    ("scope=segment:", "invalid_scope"),
    ("scope=segment:whales", "invalid_scope"),
    ("scope=ALL", "invalid_scope"),
    ("scope=all&scope=segment:smb", "repeated_parameter"),
    ("scop=all", "unknown_parameter"),
])
async def test_bad_business_parameters_answer_400_json_and_log_no_error(http, caplog, query,
                                                                        error):
    with caplog.at_level(logging.DEBUG):
        status, body = await get(http, f"/business?{query}")
    assert status == 400 and body["error"] == error
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_good_business_queries_filter_the_records(http):
    status, body = await get(http, "/business?scope=all&period=2026-03")
    assert status == 200 and [r["mrr_end"] for r in body["records"]] == [10.0]
    status, body = await get(http, "/business?period=2026-03")
    assert [r["scope"] for r in body["records"]] == ["all", "segment:smb"]
    status, body = await get(http, "/business?scope=segment:unknown")
    assert status == 200 and body["records"] == []
    status, body = await get(http, "/business")
    assert len(body["records"]) == 3


def test_business_filter_reasons_name_what_is_allowed():
    with pytest.raises(BadRequest) as err:
        business_filter({"scope": "segment:whales"})
    assert "segment:smb" in err.value.detail["expected"]
    assert business_filter({"scope": "segment:smb", "period": "1999-12"}) == (
        "segment:smb", "1999-12")


async def test_unknown_feature_is_404_json(http):
    assert await get(http, "/features/nope") == (404, {"error": "unknown_feature",
                                                       "feature": "nope"})


async def test_healthz_readyz_livez_when_ready_and_live(http):
    assert await get(http, "/healthz") == (200, {"ready": True, "live": True, "flushes": 3})
    assert await get(http, "/readyz") == (200, {"ready": True})
    assert await get(http, "/livez") == (200, {"live": True})


async def test_not_ready_is_503_on_readyz_and_healthz_but_live(http):
    http.worker.ingest.ready = False
    http.worker.app.tables.recovery.completed.clear()
    status, body = await get(http, "/readyz")
    assert status == 503 and body == {
        "ready": False, "reason": "ingest not in its group yet, table recovery not complete"}
    status, body = await get(http, "/healthz")
    assert status == 503 and body["live"] is True and body["reason"].startswith("not ready")
    assert await get(http, "/livez") == (200, {"live": True})


async def test_a_dead_service_turns_every_probe_503_with_the_reason(http):
    http.worker.health.fail("IngestService", TypeError("unhashable type: 'list'"))
    reason = "IngestService died: TypeError: unhashable type: 'list'"
    assert await get(http, "/healthz") == (503, {"ready": False, "live": False, "flushes": 3,
                                                  "reason": reason})
    assert await get(http, "/livez") == (503, {"live": False, "reason": reason})
    assert await get(http, "/readyz") == (503, {"ready": False, "reason": reason})
    assert http.worker.health.exit_code(0) == EXIT_SERVICE_DIED


async def test_a_request_aiohttp_cannot_parse_is_a_warning_without_traceback(http):
    out = io.StringIO()
    with saved_logging():
        configure_logging("warn", out)
        reader, writer = await asyncio.open_connection(http.host, http.port)
        writer.write(b"GET /business?a=b c d HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.read(200), 5)
        writer.close()
    assert head.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    server = [r for r in lines if r["logger"] == "aiohttp.server"]
    assert server and all(r["level"] == "WARNING" and "exc_info" not in r for r in server)
    assert "Bad status line" in server[0]["msg"]
    assert not [r for r in lines if r["level"] in ("ERROR", "CRITICAL")]


async def test_metrics_carry_build_info_and_process_series(http):
    resp = await http.get("/metrics")
    text = await resp.text()
    assert resp.status == 200
    assert 'vitals_build_info{commit="' in text
    assert "process_resident_memory_bytes" in text and "python_info{" in text
