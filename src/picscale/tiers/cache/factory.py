"""Choose the cache backend by the scheme of ``PICSCALE_CACHE_URL``."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from picscale.settings import Settings, SettingsError
from picscale.tiers.cache.local import LocalCache, NoCache
from picscale.tiers.cache.port import Cache, CacheBackend, Observer, _no_observer, _no_timer
from picscale.tiers.db import Database
from picscale.tiers.epoch import EpochFile


def create_cache(
    settings: Settings,
    db: Database,
    observe: Observer = _no_observer,
    observe_load: Callable[[float], None] = _no_timer,
) -> Cache:
    scheme = urlsplit(settings.cache.url).scheme
    backend: CacheBackend
    if scheme == "memory":
        # the epoch file is a fast path for processes on one host, which SQLite implies
        epoch = EpochFile(settings.data_dir / "cache-epoch") if db.dialect == "sqlite" else None
        backend = LocalCache(db, settings.cache.max_entries, epoch)
    elif scheme in ("redis", "rediss", "redis+sentinel"):
        from picscale.tiers.cache.redis import NearCache, RedisCache, redis_client

        client = redis_client(settings.cache.url, timeout=settings.cache.timeout_seconds)
        near = NearCache(
            settings.cache.near_ttl_seconds,
            settings.cache.hot_reads_per_second,
            settings.cache.near_max_entries,
        )
        backend = RedisCache(client, observe, near)
    elif scheme == "none":
        backend = NoCache()
    else:
        raise SettingsError(
            f"PICSCALE_CACHE_URL scheme {scheme!r} is not supported: "
            "use memory://, redis://host:port/db or none://"
        )
    return Cache(
        backend, ttl=settings.cache.ttl_seconds, observe=observe, observe_load=observe_load
    )
