"""Choose the cache backend by the scheme of ``PICSCALE_CACHE_URL``."""

from __future__ import annotations

from urllib.parse import urlsplit

from picscale.observability.metrics import Metrics
from picscale.settings import Settings
from picscale.tiers.cache.cache_aside import Cache
from picscale.tiers.cache.port import CacheBackend
from picscale.tiers.db.shards import Shards
from picscale.tiers.redis_client import URL_FORMS, check_redis_url, is_redis_url


def check_cache_url(url: str) -> None:
    check_redis_url(
        "PICSCALE_CACHE_URL", url, ("memory", "none"), f"memory://, none://, {URL_FORMS}"
    )


def create_cache(settings: Settings, shards: Shards, metrics: Metrics) -> Cache:
    url = settings.cache.url
    check_cache_url(url)
    backend: CacheBackend
    if urlsplit(url).scheme == "memory":
        from picscale.tiers.cache.memory import MemoryCache
        from picscale.tiers.epoch import EpochFile

        # the epoch file is a fast path for processes on one host, which SQLite implies
        same_host = shards.dialect == "sqlite"
        epoch = EpochFile(settings.data_dir / "cache-epoch") if same_host else None
        backend = MemoryCache(list(shards.clusters.values()), settings.cache.max_entries, epoch)
    elif is_redis_url(url):
        from picscale.tiers.cache.redis import NearCache, RedisCache
        from picscale.tiers.redis_client import redis_client

        near = NearCache(
            settings.cache.near_ttl_seconds,
            settings.cache.hot_reads_per_second,
            settings.cache.near_max_entries,
        )
        backend = RedisCache(
            redis_client(url, timeout=settings.cache.timeout_seconds), metrics, near
        )
    else:  # none://
        from picscale.tiers.cache.none import NoCache

        backend = NoCache()
    return Cache(backend, ttl=settings.cache.ttl_seconds, metrics=metrics)
