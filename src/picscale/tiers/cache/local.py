"""The embedded cache: a bounded in-process LRU with TTLs, kept coherent across processes.

Several processes (``--workers N``, job workers) share one SQLite database but not their
memory. Every write appends the keys it invalidates to ``cache_invalidations`` in its own
transaction, so the log can never miss a committed write. After the commit the writer
bumps a counter in a small memory-mapped file; each process compares that counter once
per request (a memory read) and only when it moved replays the log from where it was.
Because a process reads the counter before it loads anything, a value it loaded just
before someone else's commit is dropped at its next request at the latest.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import delete, func, insert, select

from picscale.tiers.cache.port import Found
from picscale.tiers.db import Database, WriteTx
from picscale.tiers.db.schema import cache_invalidations, utcnow
from picscale.tiers.epoch import EpochFile

log = structlog.get_logger(__name__)

LOG_RETENTION = timedelta(hours=1)


class LruCache:
    """Bounded LRU with per-entry expiry; one process, one event loop."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, Found[Any]]] = OrderedDict()
        self.evictions = 0  # entries pushed out to make room (not expiries)

    def get(self, key: str) -> Found[Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def set(self, key: str, value: Found[Any], ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self.evictions += 1

    def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class LocalCache:
    """``memory://``: the in-process backend with the shared invalidation log."""

    def __init__(self, db: Database, max_entries: int, epoch: EpochFile | None) -> None:
        self._db = db
        self._lru = LruCache(max_entries)
        # without an epoch file (processes on several hosts) the log is read every request
        self._epoch = epoch
        self._seen_epoch = -1
        self._cursor: int | None = None
        self._generation = 0

    async def stats(self) -> dict[str, float]:
        return {"entries": len(self._lru), "evictions": self._lru.evictions}

    async def get_many(self, keys: Sequence[str]) -> dict[str, Found[Any]]:
        out = {}
        for key in keys:
            found = self._lru.get(key)
            if found is not None:
                out[key] = found
        return out

    def generation(self) -> int:
        return self._generation

    async def set_many(
        self, items: Mapping[str, Found[Any]], ttl: float, since: int | None = None
    ) -> None:
        if since is not None and since != self._generation:
            return
        for key, value in items.items():
            self._lru.set(key, value, ttl)

    async def delete_many(self, keys: Sequence[str]) -> None:
        self._generation += 1
        for key in keys:
            self._lru.delete(key)

    async def invalidate(self, tx: WriteTx, keys: Sequence[str]) -> None:
        if not keys:
            return
        now = utcnow()
        await tx.conn.execute(
            insert(cache_invalidations), [{"key": k, "created_at": now} for k in keys]
        )
        if random.random() < 0.01:  # keep the log short; a lagging process resets itself
            await tx.conn.execute(
                delete(cache_invalidations).where(
                    cache_invalidations.c.created_at < now - LOG_RETENTION
                )
            )

        async def after() -> None:
            await self.delete_many(keys)
            if self._epoch is not None:
                self._epoch.bump()

        tx.after_commit(after)

    async def sync(self) -> None:
        if self._epoch is not None:
            epoch = self._epoch.read()
            if epoch == self._seen_epoch:
                return
            self._seen_epoch = epoch  # read before replaying: a later bump is seen next time
        # the log must miss nothing: read on the primary. While it is gone (a failover)
        # nothing new can commit, and a replica has the log up to a moment before: the
        # cursor moves on from a consistent snapshot, and a gap clears the cache anyway
        async with self._db.read_on_primary("cache", fall_back=True) as conn:
            if self._cursor is None:
                self._cursor = (await conn.scalar(select(func.max(cache_invalidations.c.seq)))) or 0
                self._clear()
                return
            rows = (
                await conn.execute(
                    select(cache_invalidations.c.seq, cache_invalidations.c.key)
                    .where(cache_invalidations.c.seq > self._cursor)
                    .order_by(cache_invalidations.c.seq)
                )
            ).all()
        if not rows:
            return
        if rows[0].seq != self._cursor + 1:
            # entries this process never saw were pruned (or a sequence skipped): start over
            self._clear()
        else:
            await self.delete_many([row.key for row in rows])
        self._cursor = rows[-1].seq

    def _clear(self) -> None:
        self._generation += 1
        self._lru.clear()

    async def claim_fill(self, key: str) -> bool:
        return True  # single-flight within the process is all an unshared cache needs

    async def release_fill(self, key: str) -> None:
        return None

    async def close(self) -> None:
        if self._epoch is not None:
            self._epoch.close()


class NoCache:
    """``none://``: every read goes to the database (for measurements and debugging)."""

    async def stats(self) -> dict[str, float]:
        return {}

    async def get_many(self, keys: Sequence[str]) -> dict[str, Found[Any]]:
        return {}

    def generation(self) -> int:
        return 0

    async def set_many(
        self, items: Mapping[str, Found[Any]], ttl: float, since: int | None = None
    ) -> None:
        return None

    async def delete_many(self, keys: Sequence[str]) -> None:
        return None

    async def invalidate(self, tx: WriteTx, keys: Sequence[str]) -> None:
        return None

    async def sync(self) -> None:
        return None

    async def claim_fill(self, key: str) -> bool:
        return True  # single-flight within the process is all an unshared cache needs

    async def release_fill(self, key: str) -> None:
        return None

    async def close(self) -> None:
        return None
