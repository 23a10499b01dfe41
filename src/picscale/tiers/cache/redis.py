"""``redis://``: the cache shared by every process and host.

Cache-aside: values are set on a miss, and deleted (never set) after the write that made
them stale commits. A delete that fails is logged, counted and retried in the
background. Redis being down or slow costs a short client timeout and a database read,
never a failed request; the cache comes back on its own.

Hot keys (a celebrity's profile, read thousands of times a second, all from the one
Redis server that holds the key) are also kept in each process for about a second, once
that process reads them often enough. Every invalidation is published on a Redis
channel that each process listens to, and drops the key from its near cache at once; a
process that is not subscribed (Redis down, reconnecting) keeps no near cache at all.
A request whose user has just written skips the near cache: they read their own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from picscale.observability.metrics import Metrics
from picscale.tiers.cache.lru import LruCache
from picscale.tiers.cache.port import Found
from picscale.tiers.db import WriteTx
from picscale.tiers.db.read_your_writes import current_scope

log = structlog.get_logger(__name__)

BREAKER_FAILURES = 3
BREAKER_OPEN_SECONDS = 1.0
KEY_PREFIX = "picscale:"
LOCK_PREFIX = "picscale:filling:"
FILL_LOCK_MS = 2000
DELETE_RETRIES = 5
DELETE_BACKOFF_SECONDS = 0.2
# A fill holds a lease (the fill lock's token, as in "Scaling Memcache at Facebook"): an
# invalidation deletes the lease with the key, and a fill whose lease is gone does not
# store what it loaded, which may predate the write. No process sets a stale value.
_SET_IF_LEASED = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
INVALIDATIONS = "picscale:invalidations"  # the pub/sub channel: deleted keys, one per line
RESUBSCRIBE_MAX_SECONDS = 2.0


class NearCache:
    """Keys this process reads more than ``threshold`` times in a second, kept for
    ``ttl`` seconds; usable only while subscribed to invalidations."""

    def __init__(self, ttl: float, threshold: int, max_entries: int) -> None:
        self.ttl = ttl
        self.threshold = max(1, threshold)
        self.enabled = ttl > 0 and max_entries > 0
        self.ready = False  # subscribed: invalidations reach us
        self._entries = LruCache(max(1, max_entries))
        self._reads: dict[str, int] = {}
        self._second = 0

    def usable(self) -> bool:
        if not (self.enabled and self.ready):
            return False
        scope = current_scope()
        # read-your-writes: a user who has just written reads past the near cache
        return scope is None or not scope.pinned

    def get(self, key: str) -> Found[Any] | None:
        return self._entries.get(key)

    def is_hot(self, key: str) -> bool:
        second = int(time.monotonic())
        if second != self._second:
            self._second = second
            self._reads.clear()
        reads = self._reads.get(key, 0) + 1
        self._reads[key] = reads
        return reads >= self.threshold

    def put(self, key: str, found: Found[Any]) -> None:
        self._entries.set(key, found, self.ttl)

    def drop(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._entries.delete(key)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class RedisCache:
    def __init__(self, client: Redis, metrics: Metrics, near: NearCache | None = None) -> None:
        self._redis = client
        self._observe = metrics.cache_event
        self._near = near if near is not None else NearCache(0, 1, 0)
        self._listener: asyncio.Task[None] | None = None
        self._leases: dict[str, str] = {}  # key -> token of the fill lock we hold
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
        if self._listener is None and self._near.enabled:
            self._listener = asyncio.create_task(self._listen())
        out: dict[str, Found[Any]] = {}
        near = self._near.usable()
        if near:
            for key in keys:
                found = self._near.get(key)
                if found is not None:
                    out[key] = found
            if out:
                self._observe("near_hit", len(out))
                keys = [k for k in keys if k not in out]
        if not keys or not self._closed():
            return out
        since = self._generation
        try:
            raw = await self._redis.mget([KEY_PREFIX + k for k in keys])
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return out
        self._ok()
        # an invalidation that went by while we waited may have made these stale
        near = near and since == self._generation and self._near.ready
        for key, blob in zip(keys, raw, strict=True):
            if blob is not None:
                # our own values, written by our own processes (schema-versioned keys)
                found = Found(pickle.loads(cast(bytes, blob)))  # noqa: S301
                out[key] = found
                if near and self._near.is_hot(key):
                    self._near.put(key, found)
        return out

    async def stats(self) -> dict[str, float]:
        """The server's own figures (shared by every process), read when scraped."""
        if not self._closed():
            return {}
        try:
            info = await self._redis.info()
        except (RedisError, OSError) as exc:
            self._failed("info", exc)
            return {}
        names = {
            "evicted_keys": "evictions",
            "expired_keys": "expirations",
            "used_memory": "memory_bytes",
            "maxmemory": "max_memory_bytes",
            "keyspace_hits": "server_hits",
            "keyspace_misses": "server_misses",
        }
        out = {ours: float(info[theirs]) for theirs, ours in names.items() if theirs in info}
        out["near_entries"] = len(self._near)
        return out

    async def _listen(self) -> None:
        """Drop keys from the near cache as other processes invalidate them."""
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(INVALIDATIONS)
                while True:  # until Redis confirms: only then can nothing be missed
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        break
                self._near.clear()
                self._near.ready = True
                log.info("cache_invalidations_subscribed")
                delay = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message["type"] == "message":
                        keys = bytes(message["data"]).decode().split("\n")
                        self._generation += 1
                        self._near.drop(keys)
            except (RedisError, OSError) as exc:
                if self._near.ready:
                    log.warning("cache_invalidations_lost", error=repr(exc)[:200])
                self._near.ready = False
                self._near.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESUBSCRIBE_MAX_SECONDS)
            finally:
                self._near.ready = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def generation(self) -> int:
        return self._generation

    async def set_many(
        self, items: Mapping[str, Found[Any]], ttl: float, since: int | None = None
    ) -> None:
        if not items or (since is not None and since != self._generation) or not self._closed():
            return
        ms = max(1, int(ttl * 1000))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, found in items.items():
                    blob = pickle.dumps(found.value)
                    lease = self._leases.pop(key, None)
                    if lease is None:
                        pipe.set(KEY_PREFIX + key, blob, px=ms)
                    else:
                        keys = (KEY_PREFIX + key, LOCK_PREFIX + key)
                        pipe.eval(_SET_IF_LEASED, 2, *keys, lease, blob, ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("set", exc)

    async def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        self._generation += 1
        self._near.drop(keys)
        try:
            await self._delete(keys)
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
                await self._delete(keys)
                log.info("cache_delete_retried", keys=len(keys), attempt=attempt)
                return
            except (RedisError, OSError) as exc:
                self._failed("delete", exc)
                delay = min(delay * 2, 5.0)
        # entries expire with their TTL at the latest; say so loudly
        log.error("cache_delete_given_up", keys=keys[:20])

    async def _delete(self, keys: Sequence[str]) -> None:
        """Delete, and tell every process to drop its near-cached copies."""
        async with self._redis.pipeline(transaction=False) as pipe:
            # the fill leases go too: a fill that started before this write stores nothing
            pipe.delete(*(KEY_PREFIX + k for k in keys), *(LOCK_PREFIX + k for k in keys))
            pipe.publish(INVALIDATIONS, "\n".join(keys))
            await pipe.execute()

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
        token = secrets.token_hex(8)
        try:
            got = await self._redis.set(LOCK_PREFIX + key, token, nx=True, px=FILL_LOCK_MS)
        except (RedisError, OSError) as exc:
            self._failed("lock", exc)
            return True  # no cache, no lock: load
        if got:
            self._leases[key] = token
        return bool(got)

    async def release_fill(self, key: str) -> None:
        token = self._leases.pop(key, None)
        if token is None:  # used by set_many, or never held
            return
        try:
            await self._redis.eval(_RELEASE, 1, LOCK_PREFIX + key, token)
        except (RedisError, OSError) as exc:
            self._failed("unlock", exc)  # it expires by itself

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._observe("error")
        self._failures += 1
        if self._failures >= BREAKER_FAILURES:
            self._open_until = time.monotonic() + BREAKER_OPEN_SECONDS
        log.warning("cache_unavailable", operation=operation, error=repr(exc)[:200])

    async def close(self) -> None:
        tasks = [*self._retries, *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._redis.aclose()
