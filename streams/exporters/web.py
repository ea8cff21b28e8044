"""HTTP views on the worker's web port: /metrics, /healthz, /customers/{id}, /features,
/business (CONTRACT.md §3-4)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from streams.exporters.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from streams.app import Service


def register_views(service: "Service", customers: Any) -> None:
    app = service.app
    processor = service.processor

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(service.metrics.exposition(), content_type=CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        ready = service.ready()
        return web.json({"ready": ready, "flushes": service.flushes},
                        status=200 if ready else 503)

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
        scope = request.query.get("scope")
        period = request.query.get("period")
        records = [r for r in service.business_records.values()
                   if (scope is None or r["scope"] == scope)
                   and (period is None or r["period"] == period)]
        return web.json({"records": sorted(records, key=lambda r: (r["scope"], r["period"]))})


def by_retention_impact(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest retention impact first; features without one (groups too small) last."""
    return sorted(records, key=lambda r: (r["retention_impact"] is None,
                                          -(r["retention_impact"] or 0.0), r["feature"]))
