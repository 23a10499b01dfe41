"""Choose how job events travel: Redis when the cache or the sessions are on Redis."""

from __future__ import annotations

from picscale.settings import Settings
from picscale.tiers.events.port import JobEvents
from picscale.tiers.redis_client import is_redis_url


def create_job_events(settings: Settings, same_host: bool) -> JobEvents:
    """Redis when the cache or the sessions are on Redis; else the data directory."""
    for url in (settings.cache.url, settings.sessions.url):
        if is_redis_url(url):
            from picscale.tiers.events.redis import RedisJobEvents
            from picscale.tiers.redis_client import redis_client

            return RedisJobEvents(redis_client(url, timeout=settings.cache.timeout_seconds))
    from picscale.tiers.epoch import EpochFile
    from picscale.tiers.events.local import LocalJobEvents

    epoch = EpochFile(settings.data_dir / "job-epoch") if same_host else None
    return LocalJobEvents(epoch)
