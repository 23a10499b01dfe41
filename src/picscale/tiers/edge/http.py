"""An HTTP edge (``http(s)://host:port``): Varnish with xkey, or any edge that takes
``PURGE`` with an ``xkey-purge`` header. Each process checks the edge's own health
endpoint and hands out edge URLs only while it answers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aiohttp
import structlog

from picscale.observability.metrics import Metrics
from picscale.tiers.edge.port import EdgeUnavailable

log = structlog.get_logger("picscale.edge")

HEALTH_PATH = "/.edge/health"  # answered by the edge itself, never by the origin
PURGE_TIMEOUT_SECONDS = 2.0
HEALTH_TIMEOUT_SECONDS = 1.0
DOWN_AFTER_FAILURES = 2  # one lost probe is not an outage
PURGE_BATCH = 100  # keys per PURGE: ~3 KB of header, well under Varnish's 8 KB limit


class HttpEdge:
    def __init__(self, url: str, purge_url: str, *, metrics: Metrics, interval: float) -> None:
        self.url = url.rstrip("/")
        self.purge_url = purge_url.rstrip("/")
        self._metrics = metrics
        self._interval = interval
        self._up = False  # until the first check says otherwise: origin URLs always work
        self._failures = 0
        self._session: aiohttp.ClientSession | None = None

    def base_url(self) -> str:
        return self.url if self._up else ""

    @property
    def up(self) -> bool:
        return self._up

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=8), raise_for_status=False
            )
        return self._session

    async def purge(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), PURGE_BATCH):
            await self._purge(keys[start : start + PURGE_BATCH])

    async def _purge(self, keys: Sequence[str]) -> None:
        try:
            async with self._client().request(
                "PURGE",
                self.purge_url + "/",
                headers={"xkey-purge": " ".join(keys)},
                timeout=aiohttp.ClientTimeout(total=PURGE_TIMEOUT_SECONDS),
            ) as response:
                await response.read()
                if response.status != 200:
                    raise EdgeUnavailable(
                        f"the edge answered {response.status} to a purge of {' '.join(keys)}"
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._metrics.edge_purges.labels("failed").inc()
            raise EdgeUnavailable(f"purge of {' '.join(keys)} failed: {exc!r}") from exc
        except EdgeUnavailable:
            self._metrics.edge_purges.labels("failed").inc()
            raise
        self._metrics.edge_purges.labels("ok").inc()
        log.info("edge_purged", keys=" ".join(keys))

    async def check(self) -> bool:
        """One health check; switches the URLs when the edge's state changed."""
        try:
            async with self._client().get(
                self.url + HEALTH_PATH,
                timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_SECONDS),
            ) as response:
                await response.read()
                healthy = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            healthy = False
        self._failures = 0 if healthy else self._failures + 1
        if healthy and not self._up:
            self._switch(True)
        elif self._up and self._failures >= DOWN_AFTER_FAILURES:
            self._switch(False)
        return healthy

    def _switch(self, up: bool) -> None:
        self._up = up
        self._metrics.edge_up.set(1 if up else 0)
        self._metrics.edge_switches.labels("edge" if up else "origin").inc()
        if up:
            log.info("edge_up", edge=self.url, urls="edge")
        else:
            log.warning("edge_down", edge=self.url, urls="origin")

    async def watch(self, stop: asyncio.Event) -> None:
        self._metrics.edge_up.set(0)  # origin URLs until the first check passes
        while not stop.is_set():
            try:
                await self.check()
            except Exception:  # the watch must outlive any one check
                log.exception("edge_check_failed", edge=self.url)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
