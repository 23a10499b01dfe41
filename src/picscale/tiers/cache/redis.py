"""``redis://``: the cache shared by every process and host.

Cache-aside: values are set on a miss, and deleted (never set) after the write that made
them stale commits. A delete that fails is logged, counted and retried in the
background. Redis being down or slow costs a short client timeout and a database read,
never a failed request; the cache comes back on its own.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from picscale.settings import SettingsError
from picscale.tiers.cache.port import Found, Observer
from picscale.tiers.db import WriteTx

log = structlog.get_logger(__name__)

POOL_SIZE = 16
BREAKER_FAILURES = 3
BREAKER_OPEN_SECONDS = 1.0
KEY_PREFIX = "picscale:"
LOCK_PREFIX = "picscale:filling:"
FILL_LOCK_MS = 2000
DELETE_RETRIES = 5
DELETE_BACKOFF_SECONDS = 0.2


class RedisCache:
    def __init__(self, client: Redis, observe: Observer) -> None:
        self._redis = client
        self._observe = observe
        # a circuit breaker: after a few failures in a row, leave Redis alone for a moment
        # so that no request waits on a dead or hung cache
        self._failures = 0
        self._open_until = 0.0
        self._generation = 0
        self._retries: set[asyncio.Task[None]] = set()

    def _closed(self) -> bool:
        if time.monotonic() < self._open_until:
            self._observe("bypass")
            return False
        return True

    def _ok(self) -> None:
        if self._failures:
            log.info("cache_back")
        self._failures = 0

    async def get_many(self, keys: Sequence[str]) -> dict[str, Found[Any]]:
        if not keys or not self._closed():
            return {}
        try:
            raw = await self._redis.mget([KEY_PREFIX + k for k in keys])
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return {}
        self._ok()
        out: dict[str, Found[Any]] = {}
        for key, blob in zip(keys, raw, strict=True):
            if blob is not None:
                # our own values, written by our own processes (schema-versioned keys)
                out[key] = Found(pickle.loads(cast(bytes, blob)))  # noqa: S301
        return out

    def generation(self) -> int:
        return self._generation

    async def set_many(
        self, items: Mapping[str, Found[Any]], ttl: float, since: int | None = None
    ) -> None:
        if not items or (since is not None and since != self._generation) or not self._closed():
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, found in items.items():
                    pipe.set(
                        KEY_PREFIX + key, pickle.dumps(found.value), px=max(1, int(ttl * 1000))
                    )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("set", exc)

    async def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        self._generation += 1
        try:
            await self._redis.delete(*(KEY_PREFIX + k for k in keys))
        except (RedisError, OSError) as exc:
            self._failed("delete", exc)
            task = asyncio.create_task(self._retry_delete(list(keys)))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _retry_delete(self, keys: list[str]) -> None:
        delay = DELETE_BACKOFF_SECONDS
        for attempt in range(1, DELETE_RETRIES + 1):
            await asyncio.sleep(delay)
            try:
                await self._redis.delete(*(KEY_PREFIX + k for k in keys))
                log.info("cache_delete_retried", keys=len(keys), attempt=attempt)
                return
            except (RedisError, OSError) as exc:
                self._failed("delete", exc)
                delay = min(delay * 2, 5.0)
        # entries expire with their TTL at the latest; say so loudly
        log.error("cache_delete_given_up", keys=keys[:20])

    async def invalidate(self, tx: WriteTx, keys: Sequence[str]) -> None:
        async def after() -> None:
            await self.delete_many(keys)

        tx.after_commit(after)

    async def sync(self) -> None:
        return None  # one shared store: nothing to catch up on

    async def claim_fill(self, key: str) -> bool:
        """A short lock: of many processes missing one key at once, one loads it."""
        if not self._closed():
            return True
        try:
            got = await self._redis.set(LOCK_PREFIX + key, b"1", nx=True, px=FILL_LOCK_MS)
        except (RedisError, OSError) as exc:
            self._failed("lock", exc)
            return True  # no cache, no lock: load
        return bool(got)

    async def release_fill(self, key: str) -> None:
        try:
            await self._redis.delete(LOCK_PREFIX + key)
        except (RedisError, OSError) as exc:
            self._failed("unlock", exc)  # it expires by itself

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._observe("error")
        self._failures += 1
        if self._failures >= BREAKER_FAILURES:
            self._open_until = time.monotonic() + BREAKER_OPEN_SECONDS
        log.warning("cache_unavailable", operation=operation, error=repr(exc)[:200])

    async def close(self) -> None:
        for task in list(self._retries):
            task.cancel()
        await self._redis.aclose()


def _sentinel_client(url: str, timeout: float) -> Redis:
    """``redis+sentinel://h1:p1,h2:p2/master-name/db``: the master the Sentinels name,
    found again after a failover."""
    parts = urlsplit(url)
    hosts = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.strip().rpartition(":")
        hosts.append((host or "127.0.0.1", int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise SettingsError(
            f"{url!r}: name the master, as in redis+sentinel://host:26379,host:26380/mymaster/0"
        )
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        socket_timeout=timeout,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    client: Redis = sentinel.master_for(
        path[0], db=db, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    return client


def redis_client(url: str, *, timeout: float) -> Redis:
    """A client that gives up fast: a dead cache must not hold a request."""
    if url.startswith("redis+sentinel://"):
        return _sentinel_client(url, timeout)
    # a bounded pool: a burst of requests shares a few connections instead of opening
    # hundreds at once (each would pay a connect inside the timeout)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=10,
        retry_on_timeout=False,
    )
    return Redis(connection_pool=pool)
