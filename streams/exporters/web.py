"""HTTP views on the worker's web port: /metrics, /healthz, /readyz, /livez, /customers/{id},
/features, /business (CONTRACT.md §3-4).

Input errors answer 4xx with a JSON reason and are not logged as errors: they are the client's
mistake, not the worker's.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from streams.events import SEGMENTS
from streams.exporters.metrics import CONTENT_TYPE
from streams.health import readiness

if TYPE_CHECKING:
    from streams.service import Service

PERIOD = re.compile(r"(?P<year>\d{4})-(?P<month>\d{2})")
#: Customers without a signup yet are booked under this segment (see the processor).
UNKNOWN_SEGMENT = "unknown"
BUSINESS_PARAMS = ("scope", "period")


class BadRequest(ValueError):
    """A query parameter the view cannot answer for; its text is the reason sent back."""

    def __init__(self, reason: str, **detail: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def business_filter(query: Mapping[str, str] | Any) -> tuple[str | None, str | None]:
    """The (scope, period) of a /business query; BadRequest for anything else."""
    keys = [k for k, _ in query.items()]  # a MultiDict's items() keeps repeated keys
    unknown = sorted(set(keys) - set(BUSINESS_PARAMS))
    if unknown:
        raise BadRequest("unknown_parameter", parameters=unknown, allowed=list(BUSINESS_PARAMS))
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise BadRequest("repeated_parameter", parameters=repeated)
    scope, period = query.get("scope"), query.get("period")
    if scope is not None:
        segments = sorted(SEGMENTS | {UNKNOWN_SEGMENT})
        segment = scope[len("segment:"):] if scope.startswith("segment:") else None
        if scope != "all" and segment not in segments:
            raise BadRequest("invalid_scope", scope=scope,
                             expected=["all", *(f"segment:{s}" for s in segments)])
    if period is not None:
        m = PERIOD.fullmatch(period)
        if m is None or not 1 <= int(m["month"]) <= 12:
            raise BadRequest("invalid_period", period=period, expected="YYYY-MM (UTC month)")
    return scope, period


def health_status(service: Service) -> tuple[int, dict[str, Any]]:
    """/healthz: 200 when live and ready, else 503 with the reason."""
    health = service.health
    waiting = readiness(service)
    body: dict[str, Any] = {"ready": not waiting and health.live, "live": health.live,
                            "flushes": service.flushes}
    if not health.live:
        body["reason"] = health.reason
    elif waiting:
        body["reason"] = "not ready: " + ", ".join(waiting)
    return (200 if body["ready"] else 503), body


def register_views(service: Service, customers: Any) -> None:
    app = service.app
    processor = service.processor

    def error(web: Any, status: int, exc: BadRequest) -> Any:
        return web.json({"error": exc.reason, **exc.detail}, status=status)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(service.metrics.exposition(), content_type=CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        status, body = health_status(service)
        return web.json(body, status=status)

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        # Ready to serve: partitions assigned and recovered, and nothing died.
        waiting = readiness(service)
        if not service.health.live:
            waiting.insert(0, service.health.reason or "a service died")
        return web.json({"ready": not waiting, **({"reason": ", ".join(waiting)} if waiting
                                                  else {})}, status=503 if waiting else 200)

    @app.page("/livez")
    async def livez(web: Any, request: Any) -> Any:
        health = service.health
        if health.live:
            return web.json({"live": True})
        return web.json({"live": False, "reason": health.reason}, status=503)

    @app.page("/customers/{customer_id}")
    @app.table_route(table=customers, match_info="customer_id")
    async def customer(web: Any, request: Any, customer_id: str) -> Any:
        # Routed to the worker that owns the customer's partition, so any worker answers.
        partition = processor.partition_of(customer_id)
        if customer_id not in processor.members.get(partition, ()):
            return web.json({"error": "unknown_customer", "customer_id": customer_id},
                            status=404)
        return web.json(processor.record(customer_id, partition))

    @app.page("/features")
    async def features(web: Any, request: Any) -> Any:
        # The feature impact view: which features go with customers who stay.
        return web.json({"features": by_retention_impact(service.feature_records.values())})

    @app.page("/features/{feature}")
    async def feature(web: Any, request: Any, feature: str) -> Any:
        record = service.feature_records.get(feature)
        if record is None:
            return web.json({"error": "unknown_feature", "feature": feature}, status=404)
        return web.json(record)

    @app.page("/business")
    async def business(web: Any, request: Any) -> Any:
        try:
            scope, period = business_filter(request.query)
        except BadRequest as exc:
            return error(web, 400, exc)
        records = [r for r in service.business_records.values()
                   if (scope is None or r["scope"] == scope)
                   and (period is None or r["period"] == period)]
        return web.json({"records": sorted(records, key=lambda r: (r["scope"], r["period"]))})


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a 400 it answers itself) as an ERROR with a
    traceback; that is a client's mistake, so it becomes one WARNING line without one."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and _is_bad_request(exc):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"{record.getMessage()}: {exc}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def _is_bad_request(exc: BaseException | None) -> bool:
    from aiohttp.http_exceptions import HttpProcessingError

    return isinstance(exc, HttpProcessingError) and getattr(exc, "code", None) == 400


def by_retention_impact(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest retention impact first; features without one (groups too small) last."""
    return sorted(records, key=lambda r: (r["retention_impact"] is None,
                                          -(r["retention_impact"] or 0.0), r["feature"]))
