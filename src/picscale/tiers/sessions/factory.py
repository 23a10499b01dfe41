"""Choose the session store by the scheme of ``PICSCALE_SESSION_URL``."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from picscale.settings import Settings
from picscale.tiers.db.shards import Shards
from picscale.tiers.redis_client import URL_FORMS, check_redis_url
from picscale.tiers.sessions.port import SessionStore

SESSION_TIMEOUT_SECONDS = 1.0


def check_session_url(url: str) -> None:
    check_redis_url("PICSCALE_SESSION_URL", url, ("database",), f"database://, {URL_FORMS}")


def create_session_store(settings: Settings, shards: Shards) -> SessionStore:
    check_session_url(settings.sessions.url)
    scheme = urlsplit(settings.sessions.url).scheme
    if scheme == "database":
        from picscale.tiers.sessions.database import DatabaseSessionStore

        return DatabaseSessionStore(shards, timedelta(seconds=settings.sessions.ttl_seconds))
    from picscale.tiers.redis_client import redis_client
    from picscale.tiers.sessions.redis import RedisSessionStore

    # sessions are not optional like the cache: a longer timeout than the cache's
    client = redis_client(settings.sessions.url, timeout=SESSION_TIMEOUT_SECONDS)
    # behind Sentinel there are replicas: logins and logouts wait for one of them
    return RedisSessionStore(
        client,
        timedelta(seconds=settings.sessions.ttl_seconds),
        wait_replicas=1 if scheme == "redis+sentinel" else 0,
    )
