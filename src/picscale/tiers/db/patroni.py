"""Replicas discovered from Patroni's REST API, and kept up to date.

``PICSCALE_DATABASE_PATRONI_URL`` names one or more Patroni REST endpoints
(comma-separated). Every few seconds the cluster's members are read from the first that
answers (``GET /cluster``); running replicas become the replica set, so a failover, a
new replica or a rejoined old primary changes where reads go without a restart.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from picscale.tiers.db.replicas import Replica, ReplicaSet

log = structlog.get_logger(__name__)

REFRESH_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 1.0
REPLICA_ROLES = ("replica", "sync_standby", "standby")


def _members(endpoints: list[str]) -> list[dict[str, Any]]:
    last: Exception | None = None
    for endpoint in endpoints:
        try:
            with urllib.request.urlopen(  # noqa: S310 - operator-configured http(s) URL
                endpoint.rstrip("/") + "/cluster", timeout=REQUEST_TIMEOUT_SECONDS
            ) as response:
                members: list[dict[str, Any]] = json.load(response).get("members", [])
                return members
        except (OSError, ValueError) as exc:
            last = exc
    raise ConnectionError(f"no Patroni REST API answered: {last}")


class PatroniDiscovery:
    """Keeps a ReplicaSet's members equal to the cluster's running replicas."""

    def __init__(
        self,
        endpoints: list[str],
        replicas: ReplicaSet,
        template: URL,
        make_engine: Callable[[URL], AsyncEngine],
    ) -> None:
        self._endpoints = endpoints
        self._replicas = replicas
        self._template = template
        self._make_engine = make_engine
        self._refreshed_at = -1.0
        self._lock = asyncio.Lock()

    async def refresh_if_due(self) -> None:
        if time.monotonic() - self._refreshed_at < REFRESH_SECONDS:
            return
        async with self._lock:
            if time.monotonic() - self._refreshed_at < REFRESH_SECONDS:
                return
            self._refreshed_at = time.monotonic()
            try:
                members = await asyncio.to_thread(_members, self._endpoints)
            except ConnectionError as exc:
                log.warning("patroni_unreachable", error=str(exc)[:200])
                return
            wanted = {
                f"{m['host']}:{m['port']}"
                for m in members
                if m.get("role") in REPLICA_ROLES and m.get("state") in ("running", "streaming")
            }
            current = {r.name: r for r in self._replicas.replicas}
            for name in wanted - current.keys():
                host, _, port = name.rpartition(":")
                url = self._template.set(host=host, port=int(port))
                self._replicas.replicas.append(Replica(name, self._make_engine(url)))
                log.info("replica_discovered", replica=name)
            for name in current.keys() - wanted:
                gone = current[name]
                self._replicas.replicas.remove(gone)
                log.info("replica_gone", replica=name)
                await gone.engine.dispose()
