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
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import structlog

from picscale.clock import utcnow
from picscale.data.invalidations import InvalidationLog
from picscale.tiers.cache.lru import LruCache
from picscale.tiers.cache.port import Found
from picscale.tiers.db import Database, WriteTx
from picscale.tiers.epoch import EpochFile

log = structlog.get_logger(__name__)

LOG_RETENTION = timedelta(hours=1)


class MemoryCache:
    """``memory://``: the in-process backend with the shared invalidation log."""

    def __init__(
        self, clusters: Sequence[Database], max_entries: int, epoch: EpochFile | None
    ) -> None:
        # one log per cluster: a write appends to its own cluster's, in its transaction
        self._logs = {db.name: InvalidationLog(db) for db in clusters}
        self._invalidations = next(iter(self._logs.values()))
        self._lru = LruCache(max_entries)
        # without an epoch file (processes on several hosts) the log is read every request
        self._epoch = epoch
        self._seen_epoch = -1
        self._cursors: dict[str, int | None] = dict.fromkeys(self._logs)
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
        await self._invalidations.append(tx, keys, now)
        if random.random() < 0.01:  # keep the log short; a lagging process resets itself
            await self._invalidations.prune(tx, now - LOG_RETENTION)

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
        for name, log in self._logs.items():
            cursor = self._cursors[name]
            last, entries = await log.read_after(cursor)
            if cursor is None:
                self._cursors[name] = last
                self._clear()
                continue
            if not entries:
                continue
            if entries[0][0] != cursor + 1:
                # entries this process never saw were pruned (or a sequence skipped): over
                self._clear()
            else:
                await self.delete_many([key for _, key in entries])
            self._cursors[name] = last

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
