"""Timelines as Redis sorted sets (``tl:<user id>``, scored by photo id), capped and
expiring when not read."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from picscale.tiers.timelines.port import TimelinesUnavailable

P = ParamSpec("P")
T = TypeVar("T")

PREFIX = "tl:"

# push into warm timelines only (a key that exists), keep the newest ``cap``
_PUSH = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', key, ARGV[1], ARGV[1])
    redis.call('ZREMRANGEBYRANK', key, 0, -(tonumber(ARGV[2]) + 2))
    n = n + 1
  end
end
return n
"""

# a member that keeps an empty timeline's key alive: warm, with nothing in it
EMPTY = "0"


def _unavailable(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis out of reach (a failover, a timeout) as TimelinesUnavailable."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise TimelinesUnavailable(f"the timelines' Redis: {exc!r}"[:300]) from exc

    return wrapper


class RedisTimelines:
    def __init__(self, client: Redis, *, cap: int, ttl_seconds: int) -> None:
        self._redis = client
        self._cap = cap
        self._ttl = ttl_seconds
        self._push = client.register_script(_PUSH)

    @_unavailable
    async def read(self, user_id: int, before: int | None, count: int) -> list[int] | None:
        key = PREFIX + str(user_id)
        top = f"({before}" if before is not None else "+inf"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(key)
            pipe.zrevrangebyscore(key, top, "(0", start=0, num=count)
            pipe.expire(key, self._ttl)
            exists, found, _ = await pipe.execute()
        if not exists:
            return None
        return [int(i) for i in found]

    @_unavailable
    async def build(self, user_id: int, photo_ids: Sequence[int]) -> None:
        key = PREFIX + str(user_id)
        members: dict[str, float] = {str(i): float(i) for i in photo_ids[: self._cap]}
        members[EMPTY] = 0.0
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.zadd(key, members)
            pipe.expire(key, self._ttl)
            await pipe.execute()

    @_unavailable
    async def push(self, user_ids: Sequence[int], photo_id: int) -> int:
        if not user_ids:
            return 0
        keys = [PREFIX + str(u) for u in user_ids]
        return int(await self._push(keys=keys, args=[photo_id, self._cap]))

    @_unavailable
    async def drop(self, user_id: int) -> None:
        await self._redis.delete(PREFIX + str(user_id))

    async def close(self) -> None:
        await self._redis.aclose()
