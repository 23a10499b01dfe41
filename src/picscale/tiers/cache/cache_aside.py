"""Cache-aside, the front that domain code uses over any cache backend: single-flight
loads, TTL jitter, bulk reads, and fills that never store what a write made stale."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from picscale.observability.metrics import Metrics
from picscale.tiers.cache.port import CacheBackend, Found
from picscale.tiers.db import WriteTx
from picscale.tiers.db.read_your_writes import fresh_reads

T = TypeVar("T")
K = TypeVar("K")

# a process that finds another loading a key waits this long for its value, then loads
FILL_WAIT_SECONDS = 1.0
FILL_POLL_SECONDS = 0.01


class Cache:
    """Cache-aside over a backend: single-flight loads, TTL jitter, bulk reads."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        ttl: float,
        metrics: Metrics,
        not_found_ttl: float = 10.0,
    ) -> None:
        self.backend = backend
        self.ttl = ttl
        self.not_found_ttl = not_found_ttl
        self._observe = metrics.cache_event
        self._observe_load = metrics.cache_load
        self._inflight: dict[str, asyncio.Future[Found[Any]]] = {}

    def _jittered(self, ttl: float) -> float:
        # spread expiry so that keys filled together do not all expire together
        return ttl * random.uniform(0.9, 1.1)

    async def get_or_load(
        self, key: str, load: Callable[[], Awaitable[T | None]], ttl: float | None = None
    ) -> T | None:
        found = (await self.backend.get_many([key])).get(key)
        if found is not None:
            self._observe("hit")
            return found.value
        self._observe("miss")
        pending = self._inflight.get(key)
        if pending is not None:  # another request in this process is loading it
            return (await asyncio.shield(pending)).value
        future: asyncio.Future[Found[Any]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        claimed = False
        try:
            claimed = await self.backend.claim_fill(key)
            if not claimed:
                # another process is loading it: wait a moment for its value
                waited, claimed = await self._wait_for_fill(key)
                if waited is not None:
                    self._observe("hit")
                    future.set_result(waited)
                    return waited.value
            self._observe("load")
            since = self.backend.generation()
            started = time.perf_counter()
            with fresh_reads() as fresh:
                value = await load()
            self._observe_load(time.perf_counter() - started)
            result: Found[Any] = Found(value)
            if fresh.stale:  # read on a replica while the primary was gone: not cached
                self._observe("stale_load")
            else:
                await self.backend.set_many(
                    {key: result},
                    self._jittered(self.not_found_ttl if value is None else (ttl or self.ttl)),
                    since,
                )
            future.set_result(result)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[key]
            if claimed:
                await self.backend.release_fill(key)

    async def _wait_for_fill(self, key: str) -> tuple[Found[Any] | None, bool]:
        """The value another process is loading, or else whether we now hold the fill
        lock ourselves (its loader finished without storing, say after a write)."""
        deadline = time.monotonic() + FILL_WAIT_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(FILL_POLL_SECONDS)
            found = (await self.backend.get_many([key])).get(key)
            if found is not None:
                return found, False
            if await self.backend.claim_fill(key):
                return None, True
        return None, False  # the loader is slow or gone: load it ourselves

    async def get_many_or_load(
        self,
        keys: Mapping[str, K],
        load_many: Callable[[list[K]], Awaitable[Mapping[K, T]]],
        ttl: float | None = None,
    ) -> dict[K, T]:
        """Read many entries at once; load only the missing ones, set them in one call."""
        cached = await self.backend.get_many(list(keys))
        out: dict[K, T] = {}
        missing: list[K] = []
        for key, ident in keys.items():
            found = cached.get(key)
            if found is None:
                missing.append(ident)
            elif found.value is not None:
                out[ident] = found.value
        self._observe("hit", len(keys) - len(missing))
        if missing:
            self._observe("miss", len(missing))
            self._observe("load", len(missing))
            since = self.backend.generation()
            started = time.perf_counter()
            with fresh_reads() as fresh:
                loaded = await load_many(missing)
            self._observe_load(time.perf_counter() - started)
            if fresh.stale:
                self._observe("stale_load", len(missing))
            else:
                by_ident = {ident: key for key, ident in keys.items()}
                await self.backend.set_many(
                    {by_ident[i]: Found(loaded.get(i)) for i in missing},
                    self._jittered(ttl or self.ttl),
                    since,
                )
            out.update({i: v for i, v in loaded.items() if v is not None})
        return out

    def invalidate(self, tx: WriteTx, keys: Iterable[str]) -> Awaitable[None]:
        unique = sorted(set(keys))
        self._observe("invalidation", len(unique))
        return self.backend.invalidate(tx, unique)

    async def sync(self) -> None:
        await self.backend.sync()

    async def stats(self) -> dict[str, float]:
        return await self.backend.stats()

    async def close(self) -> None:
        await self.backend.close()
