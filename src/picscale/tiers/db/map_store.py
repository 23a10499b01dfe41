"""Where the shard map is kept, and how every process learns of a new version.

A store keeps versions of the map and publishes a new one only on top of the newest
(compare-and-set), so that two moves racing to flip the map cannot both win. Two stores:

- ``TableMapStore`` (``PICSCALE_SHARD_MAP_URL`` empty or ``database://``): rows of the
  ``shard_map`` table in the global database (the first cluster), one per version;
- ``EtcdMapStore`` (``etcd://host:port[,host:port…]/key/path``): one key in etcd, through
  etcd v3's JSON gateway, compared by its modification revision.

``MapWatcher`` polls the store and hands each newer version to the router.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import structlog
from sqlalchemy import func, select

from picscale.clock import utcnow
from picscale.data.schema import shard_map
from picscale.data.statements import insert_new
from picscale.settings import SettingsError, checked_url
from picscale.tiers.db.database import Database
from picscale.tiers.db.shard_map import ShardMap

log = structlog.get_logger(__name__)

URL_VARIABLE = "PICSCALE_SHARD_MAP_URL"
DEFAULT_ETCD_KEY = "/picscale/shard-map"


class MapStoreUnavailable(Exception):
    """The store of the shard map cannot be reached, or refused a request."""


class MapStore(Protocol):
    async def load(self) -> ShardMap | None:
        """The newest stored version; None if no map was ever published."""
        ...

    async def publish(self, new: ShardMap) -> bool:
        """Store ``new`` if the newest stored version is ``new.version - 1`` (or nothing is
        stored and ``new.version`` is 1); otherwise change nothing and return False."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """Where the map lives, for operators."""
        ...


def check_map_url(url: str) -> None:
    if url:
        checked_url(
            URL_VARIABLE,
            url,
            ("database", "etcd"),
            "nothing (or database://) for a table in the first cluster's database, "
            "or etcd://host:port[,host:port]/key",
        )
    if url.startswith("etcd://"):
        parse_etcd_url(url)


def create_map_store(url: str, global_db: Database) -> MapStore:
    check_map_url(url)
    if url.startswith("etcd://"):
        return EtcdMapStore(url)
    return TableMapStore(global_db)


# -- a table in the global database ------------------------------------------------------


class TableMapStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self) -> ShardMap | None:
        async with self._db.read_on_primary("shard_map") as conn:
            body = await conn.scalar(
                select(shard_map.c.body).order_by(shard_map.c.version.desc()).limit(1)
            )
        return ShardMap.from_json(body) if body is not None else None

    async def publish(self, new: ShardMap) -> bool:
        async with self._db.write() as tx:
            newest = await tx.conn.scalar(select(func.max(shard_map.c.version)))
            if (newest or 0) != new.version - 1:
                return False
            # a racing publisher of the same version: the primary key lets one in
            result = await tx.conn.execute(
                insert_new(self._db.dialect, shard_map).values(
                    version=new.version, body=new.to_json().decode(), created_at=utcnow()
                )
            )
            return bool(result.rowcount == 1)

    async def close(self) -> None:
        pass  # the database is its owner's to dispose of

    def describe(self) -> str:
        return f"table shard_map on {self._db.name}"


# -- etcd ---------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def parse_etcd_url(url: str) -> tuple[list[str], str]:
    """``etcd://h1:2379,h2:2379/picscale/shard-map`` → (["h1:2379", "h2:2379"], key)."""
    rest = url.removeprefix("etcd://")
    hosts, slash, path = rest.partition("/")
    endpoints = [h.strip() for h in hosts.split(",") if h.strip()]
    bad = [e for e in endpoints if not e.rpartition(":")[2].isdigit()]
    if not endpoints or bad:
        raise SettingsError(
            f"{URL_VARIABLE} {url!r}: give etcd's client endpoints as host:port, e.g. "
            f"etcd://127.0.0.1:2379,127.0.0.1:22379{DEFAULT_ETCD_KEY}"
        )
    key = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_ETCD_KEY
    return endpoints, key


class EtcdMapStore:
    """The map as one etcd key, compared by its ``mod_revision`` when published.

    Requests go to the endpoint that answered last; a connection error, a timeout or a 5xx
    moves on to the next one.
    """

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.endpoints, self.key = parse_etcd_url(url)
        self._key64 = _b64(self.key.encode())
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._current = 0  # index of the endpoint that answered last

    def describe(self) -> str:
        return f"etcd {','.join(self.endpoints)} key {self.key}"

    async def load(self) -> ShardMap | None:
        kv, _ = await self._get()
        return ShardMap.from_json(base64.b64decode(kv["value"])) if kv else None

    async def publish(self, new: ShardMap) -> bool:
        kv, _ = await self._get()
        if kv is None:
            if new.version != 1:
                return False
            compare = {"target": "CREATE", "create_revision": "0"}
        else:
            if ShardMap.from_json(base64.b64decode(kv["value"])).version != new.version - 1:
                return False
            compare = {"target": "MOD", "mod_revision": str(kv["mod_revision"])}
        value = new.to_json()
        body, retried = await self._post(
            "/v3/kv/txn",
            {
                "compare": [{"key": self._key64, "result": "EQUAL", **compare}],
                "success": [{"request_put": {"key": self._key64, "value": _b64(value)}}],
            },
        )
        if body.get("succeeded", False):  # (proto3 JSON leaves out a false)
            return True
        if retried:
            # an endpoint failed mid-request: it may have applied our put before it went
            # away, and our retry then found our own write
            kv, _ = await self._get()
            return kv is not None and base64.b64decode(kv["value"]) == value
        return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self) -> tuple[dict[str, Any] | None, bool]:
        body, retried = await self._post("/v3/kv/range", {"key": self._key64})
        kvs = body.get("kvs") or []
        return (kvs[0] if kvs else None), retried

    async def _post(self, path: str, payload: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The JSON answer of the first endpoint that gives one, and whether an endpoint
        failed before it."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        errors: list[str] = []
        n = len(self.endpoints)
        for i in range(n):
            index = (self._current + i) % n
            endpoint = self.endpoints[index]
            try:
                async with self._session.post(f"http://{endpoint}{path}", json=payload) as resp:
                    if resp.status >= 500:
                        errors.append(f"{endpoint}: HTTP {resp.status} {(await resp.text())[:200]}")
                        continue
                    if resp.status != 200:
                        raise MapStoreUnavailable(
                            f"etcd at {endpoint} refused {path} (HTTP {resp.status}: "
                            f"{(await resp.text())[:300]}): check that it is etcd v3.4 or "
                            f"later serving its JSON gateway, as {URL_VARIABLE} says"
                        )
                    body: dict[str, Any] = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{endpoint}: {exc!r}"[:200])
                continue
            if index != self._current:
                log.warning("shard_map_etcd_endpoint_changed", endpoint=endpoint, failed=errors)
                self._current = index
            return body, bool(errors)
        raise MapStoreUnavailable(
            f"no etcd endpoint of {URL_VARIABLE} answers ({'; '.join(errors)}): check that "
            "etcd runs and that the URL lists its client endpoints (host:port)"
        )


# -- watching for new versions -----------------------------------------------------------


class MapWatcher:
    """Polls the store and calls ``on_change`` with each newer version, in order of
    discovery; an error of the store or of ``on_change`` is logged and polling goes on (a
    version whose ``on_change`` failed is offered again at the next poll)."""

    def __init__(
        self, store: MapStore, on_change: Callable[[ShardMap], None], interval: float = 0.25
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._interval = interval
        self._current: ShardMap | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def current(self) -> ShardMap | None:
        return self._current

    async def start(self, initial: ShardMap) -> None:
        self._current = initial
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="shard-map-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_newer(self, version: int, timeout: float) -> ShardMap | None:  # noqa: ASYNC109
        """A map newer than ``version`` as soon as one is known; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        polled = False
        while True:
            changed = self._changed
            if self._current is not None and self._current.version > version:
                return self._current
            if not polled or self._task is None:  # at once; then by the poller, if one runs
                polled = True
                await self._check()
                if self._current is not None and self._current.version > version:
                    return self._current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, self._interval))

    async def _poll(self) -> None:
        while True:
            await self._check()
            await asyncio.sleep(self._interval)

    async def _check(self) -> None:
        try:
            newest = await self._store.load()
        except Exception as exc:
            log.warning(
                "shard_map_poll_failed", store=self._store.describe(), error=repr(exc)[:300]
            )
            return
        current = self._current
        if newest is None or (current is not None and newest.version <= current.version):
            return
        try:
            self._on_change(newest)
        except Exception:
            log.exception("shard_map_change_failed", version=newest.version)
            return
        log.info("shard_map_changed", map=newest.describe())
        self._current = newest
        self._changed.set()
        self._changed = asyncio.Event()
