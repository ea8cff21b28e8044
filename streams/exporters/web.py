"""HTTP views on the worker's web port: /metrics, /healthz, /customers/{id} (CONTRACT.md §3-4)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
