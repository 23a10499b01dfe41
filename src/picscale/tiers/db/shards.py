"""The routing layer: every query names its shard, and runs on the cluster that holds it.

``Shards`` holds one ``Database`` (an engine and pool, replicas, read-your-writes) per
physical cluster of the layout, and the current shard map (``shard_map``), which a
watcher keeps within a second of the map store's newest version. A key is any sharded
id (a user's, a photo's, a job's: each carries its logical shard); ``write(key)``,
``read(key)`` and ``read_on_primary(key)`` run on the cluster that holds it.

Queries that span shards say so: ``across(fn)`` runs ``fn`` on every cluster in
parallel, ``grouped(ids)`` splits ids by the cluster that holds them. Global tables
(usernames, the map, id nodes, moves, traffic, log-in failures) live on ``home``, the
first cluster of the layout; they never move.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import structlog
from sqlalchemy import text

from picscale.ids import shard_of
from picscale.tiers.db.database import Database, ReadConnection, ShardMoving, WriteTx
from picscale.tiers.db.read_your_writes import mark_stale_read, wants_fresh
from picscale.tiers.db.shard_map import ShardMap, ShardMapError

if TYPE_CHECKING:
    from picscale.settings import Settings
    from picscale.tiers.db.map_store import MapStore, MapWatcher

log = structlog.get_logger(__name__)
T = TypeVar("T")

# the fenced ranges of a cluster (``resharding``): a handful of rows at most
FENCES = text('SELECT "first", "last" FROM shard_fences')
TRAFFIC_FLUSH_SECONDS = 5.0
MOVE_WAIT_SECONDS = 5.0  # a write fenced by a move waits this long for the new map


class Shards:
    def __init__(self, clusters: dict[str, Database], logical: int = 8192) -> None:
        if not clusters:
            raise ShardMapError("the layout names no cluster")
        self.clusters = clusters
        self.home = next(iter(clusters.values()))
        self.dialect = self.home.dialect
        self.logical = logical
        self._map: ShardMap | None = None
        self._changed = asyncio.Event()
        self._store: MapStore | None = None
        self._watcher: MapWatcher | None = None
        self._traffic: Counter[tuple[int, bool]] = Counter()
        self._flusher: asyncio.Task[None] | None = None

    # -- the map ---------------------------------------------------------------------------

    @property
    def map(self) -> ShardMap:
        if self._map is None:
            raise RuntimeError("the shard map is not loaded: call Shards.start() first")
        return self._map

    def set_map(self, new: ShardMap) -> None:
        unknown = set(new.clusters) - set(self.clusters)
        if unknown:
            log.error("shard_map_names_unknown_clusters", clusters=sorted(unknown))
            raise ShardMapError(
                f"shard map v{new.version} names clusters {sorted(unknown)} that "
                f"PICSCALE_DATABASE_URL does not define (it has {list(self.clusters)})"
            )
        if self._map is None or new.version > self._map.version:
            if self._map is not None:
                log.info("shard_map_changed", map=new.describe())
            self._map = new
            self._changed.set()
            self._changed = asyncio.Event()

    async def start(self, store: MapStore, *, watch: bool = True) -> None:
        """Load the map (the first process of a new layout writes version 1: the
        logical shards split evenly over the clusters), then follow its new versions."""
        from picscale.tiers.db.map_store import MapWatcher

        self._store = store
        current = await store.load()
        if current is None:
            # compare-and-set: when several processes start at once, one version 1 wins
            await store.publish(ShardMap.even(list(self.clusters), self.logical))
            current = await store.load()
            if current is None:
                raise ShardMapError(f"no shard map could be stored in {store.describe()}")
        self.set_map(current)
        if watch:
            self._watcher = MapWatcher(store, self._on_change)
            await self._watcher.start(current)
            self._flusher = asyncio.create_task(self._flush_traffic_forever())

    def _on_change(self, new: ShardMap) -> None:
        with contextlib.suppress(ShardMapError):  # logged: keep routing by the last good map
            self.set_map(new)

    async def wait_moved(self, seen_version: int, within: float = MOVE_WAIT_SECONDS) -> bool:
        """After a write met a move's fence: wait until a newer map than ``seen_version``
        is known (True), or ``within`` seconds have passed (False)."""
        deadline = time.monotonic() + within
        while self.map.version <= seen_version:
            if self._watcher is not None:
                found = await self._watcher.wait_newer(
                    seen_version, max(0.0, deadline - time.monotonic())
                )
                if found is not None:
                    self._on_change(found)
                    continue
                return False
            if self._store is not None:
                found = await self._store.load()
                if found is not None and found.version > seen_version:
                    self._on_change(found)
                    continue
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # -- routing ---------------------------------------------------------------------------

    def shard(self, key: int) -> int:
        return shard_of(key)

    def for_shard(self, shard: int) -> Database:
        return self.clusters[self.map.cluster_of(shard)]

    def cluster_for(self, key: int) -> Database:
        """The cluster that holds the row with sharded id ``key``."""
        return self.for_shard(shard_of(key))

    def write(self, key: int) -> contextlib.AbstractAsyncContextManager[WriteTx]:
        shard = shard_of(key)
        self._traffic[(shard, True)] += 1
        return self._write(self.for_shard(shard))

    @asynccontextmanager
    async def _write(self, db: Database) -> AsyncIterator[WriteTx]:
        seen = self.map.version
        try:
            async with db.write() as tx:
                yield tx
        except ShardMoving as exc:
            exc.map_version = seen
            raise

    def read(self, key: int) -> contextlib.AbstractAsyncContextManager[ReadConnection]:
        shard = shard_of(key)
        self._traffic[(shard, False)] += 1
        return self._read(self.for_shard(shard), {shard})

    def read_for(
        self, db: Database, keys: Iterable[int]
    ) -> contextlib.AbstractAsyncContextManager[ReadConnection]:
        """Reads on ``db`` of rows with these sharded ids (a cross-shard query's part)."""
        shards = {shard_of(k) for k in keys}
        for shard in shards:
            self._traffic[(shard, False)] += 1
        return self._read(db, shards)

    @asynccontextmanager
    async def _read(self, db: Database, shards: set[int]) -> AsyncIterator[ReadConnection]:
        async with db.read() as conn:
            yield conn
            if wants_fresh():
                # a value for the cache: if a move has fenced (or moved away) any of these
                # shards here, this cluster may no longer get their writes: serve it,
                # but do not cache it (a process on the old map for a moment)
                fences = (await conn.execute(FENCES)).all()
                if any(first <= s <= last for first, last in fences for s in shards):
                    mark_stale_read()

    def read_on_primary(
        self, key: int, intent: str = "read", *, fall_back: bool = False
    ) -> contextlib.AbstractAsyncContextManager[ReadConnection]:
        shard = shard_of(key)
        self._traffic[(shard, False)] += 1
        return self.for_shard(shard).read_on_primary(intent, fall_back=fall_back)

    def grouped(self, ids: Iterable[int]) -> dict[Database, list[int]]:
        """``ids`` split by the cluster that holds them (order kept within a cluster)."""
        out: dict[Database, list[int]] = {}
        for i in ids:
            out.setdefault(self.cluster_for(i), []).append(i)
        return out

    async def across(
        self, fn: Callable[[Database], Awaitable[T]], clusters: Sequence[Database] | None = None
    ) -> list[T]:
        """``fn`` on every cluster (or those given), in parallel: a cross-shard query."""
        targets = list(clusters) if clusters is not None else list(self.clusters.values())
        return list(await asyncio.gather(*(fn(db) for db in targets)))

    def holding(self) -> list[Database]:
        """The clusters that hold at least one logical shard now."""
        return [self.clusters[name] for name in self.map.clusters]

    # -- traffic (for ``shards status`` and rebalancing) -----------------------------------

    def traffic(self) -> Counter[tuple[int, bool]]:
        return self._traffic

    async def flush_traffic(self) -> None:
        if not self._traffic:
            return
        counts, self._traffic = self._traffic, Counter()
        from picscale.data.traffic import record_traffic

        try:
            await record_traffic(self.home, counts)
        except Exception as exc:  # traffic figures are best effort
            log.warning("shard_traffic_not_recorded", error=repr(exc)[:200])

    async def _flush_traffic_forever(self) -> None:
        while True:
            await asyncio.sleep(TRAFFIC_FLUSH_SECONDS)
            await self.flush_traffic()

    # -- life ------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self.across(lambda db: db.ping())

    @property
    def replicas(self) -> bool:
        return any(db.replicas is not None for db in self.clusters.values())

    async def dispose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            await self.flush_traffic()
        if self._watcher is not None:
            await self._watcher.stop()
        if self._store is not None:
            await self._store.close()
        for db in self.clusters.values():
            await db.dispose()


@asynccontextmanager
async def open_sharding(
    settings: Settings,
) -> AsyncIterator[tuple[dict[str, Database], Database, MapStore]]:
    """The clusters of the layout, the home cluster and the map store, for tools that
    work on clusters themselves (``picscale shards``); closed on exit. The map is made
    (version 1, even) if none is stored yet."""
    from picscale.observability.metrics import Metrics
    from picscale.tiers.db.factory import create_shards
    from picscale.tiers.db.map_store import create_map_store

    shards = create_shards(settings, Metrics())
    store = create_map_store(settings.shards.map_url, shards.home)
    try:
        await shards.start(store, watch=False)
        yield shards.clusters, shards.home, store
    finally:
        await shards.dispose()
