"""The one way every tier opens Redis: ``redis://``, ``rediss://`` or Sentinel's master.

The cache, the sessions and the job events each get their own client (their timeouts
differ: the cache is optional and gives up fast, sessions are not), all made here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel

from picscale.settings import SettingsError

POOL_SIZE = 16
SCHEMES = ("redis", "rediss", "redis+sentinel")


def is_redis_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


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
