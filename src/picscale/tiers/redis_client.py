"""The one way every tier opens Redis: ``redis://``, ``rediss://`` or Sentinel's master.

The cache, the sessions and the job events each get their own client (their timeouts
differ: the cache is optional and gives up fast, sessions are not), all made here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel

from picscale.settings import SettingsError, checked_url

POOL_SIZE = 16
SCHEMES = ("redis", "rediss", "redis+sentinel")
URL_FORMS = "redis://host:6379/0, rediss://host:6380/0 or redis+sentinel://host:26379/master/0"


def is_redis_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def check_redis_url(variable: str, url: str, schemes: tuple[str, ...], forms: str) -> None:
    """A Redis URL (or one of the other ``schemes``) that its client will accept."""
    parts = checked_url(variable, url, (*schemes, *SCHEMES), forms)
    if parts.scheme not in SCHEMES:
        return
    path = [p for p in parts.path.split("/") if p]
    if parts.scheme == "redis+sentinel":
        if not path or not (len(path) == 1 or path[1].isdecimal()):
            raise SettingsError(
                f"{variable}: name the master (and a database number), as in "
                "redis+sentinel://host:26379,host:26380/mymaster/0"
            )
        return
    if "," in parts.netloc or (path and (len(path) > 1 or not path[0].isdecimal())):
        raise SettingsError(f"{variable}: one host and a database number, as in {forms}")


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
