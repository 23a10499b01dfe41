"""What operators and their tools ask: is this process alive (/healthz), can it serve
(/readyz, for the load balancer), and its Prometheus metrics (/metrics)."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from picscale.web.auth import services_of


class OpsController(Controller):
    tags = ["ops"]

    @get("/healthz", summary="Alive")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", summary="Ready: database, queue and storage answer")
    async def readyz(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        """503 only when this process can serve nothing: a load balancer takes it out of the
        pool. A shared dependency whose loss the service rides out does not count, or every
        server would leave the pool at once and a partial outage would become a whole one:
        the queue (jobs wait in the database: the lease table, or the outbox while a broker is
        down), and the primary database while there are replicas (reads go on; writes wait
        for the failover). Those are reported as "degraded"."""
        services = services_of(request)
        checks: dict[str, str] = {}

        async def check(name: str, probe: Any) -> bool:
            try:
                await asyncio.wait_for(probe(), timeout=2.0)
                checks[name] = "ok"
                return True
            except Exception as exc:  # a probe reports, it does not crash
                checks[name] = f"failing: {type(exc).__name__}: {exc}"[:300]
                return False

        database = await check("database", services.shards.ping)
        queue = await check("queue", services.queue.depth)
        storage = await check("storage", services.storage.ping)
        ready = storage and (database or services.shards.replicas)
        status = "ok" if database and queue and storage else "degraded" if ready else "unavailable"
        return Response(
            {"status": status, "checks": checks},
            status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE,
        )

    @get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        services = services_of(request)
        services.metrics.cache_store_figures(await services.cache.stats())
        body, content_type = services.metrics.exposition()
        return Response(body, media_type=content_type)
