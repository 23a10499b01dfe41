"""Timelines in Redis when the cache is Redis, else in tables on each user's shard."""

from __future__ import annotations

from picscale.settings import Settings
from picscale.tiers.db.shards import Shards
from picscale.tiers.redis_client import is_redis_url
from picscale.tiers.timelines.port import TimelineStore


def create_timelines(settings: Settings, shards: Shards) -> TimelineStore:
    cap, ttl = settings.feed.timeline_max, settings.feed.timeline_ttl_seconds
    if is_redis_url(settings.cache.url):
        from picscale.tiers.redis_client import redis_client
        from picscale.tiers.timelines.redis import RedisTimelines

        # not the cache's client: a feed read may wait a little longer than a cache get
        client = redis_client(settings.cache.url, timeout=max(1.0, settings.cache.timeout_seconds))
        return RedisTimelines(client, cap=cap, ttl_seconds=ttl)
    from picscale.tiers.timelines.table import TableTimelines

    return TableTimelines(shards, cap=cap, ttl_seconds=ttl)
