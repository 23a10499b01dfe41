"""``redis://`` sessions: every web server sees every session, so no sticky routing.

A session is one key (the SHA-256 of its token) holding the user id and the session's
data (the read-your-writes WAL position among it), expiring with the session; a set per
user lists their sessions so that all of them can be ended at once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

from picscale.tiers.db.schema import utcnow
from picscale.tiers.sessions.port import Session, token_digest

T = TypeVar("T")

PREFIX = "picscale:session:"
USER_PREFIX = "picscale:user-sessions:"


class _Stored(msgspec.Struct):
    user_id: int
    expires_at: float  # unix seconds
    data: dict[str, Any] = {}


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Stored).decode


FAILOVER_WAIT_SECONDS = 10.0


async def _patiently(operation: Callable[[], Awaitable[T]]) -> T:
    """Retry through a Redis failover (Sentinel promotes a replica within seconds)."""
    deadline = time.monotonic() + FAILOVER_WAIT_SECONDS
    delay = 0.05
    while True:
        try:
            return await operation()
        except (ConnectionError, TimeoutError, OSError, ReadOnlyError):
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class RedisSessionStore:
    def __init__(self, client: Redis, ttl: timedelta) -> None:
        self._redis = client
        self._ttl = ttl
        self._slide_after = ttl / 10

    def _store(self, session: Session) -> bytes:
        return _encode(_Stored(session.user_id, session.expires_at.timestamp(), session.data))

    async def _save(self, digest: str, session: Session) -> None:
        ms = max(1, int((session.expires_at - utcnow()).total_seconds() * 1000))

        async def save() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(PREFIX + digest, self._store(session), px=ms)
                pipe.sadd(USER_PREFIX + str(session.user_id), digest)
                pipe.pexpire(
                    USER_PREFIX + str(session.user_id), int(self._ttl.total_seconds() * 1000)
                )
                await pipe.execute()

        await _patiently(save)

    async def create(self, user_id: int, data: dict[str, Any] | None = None) -> Session:
        token = secrets.token_urlsafe(32)
        session = Session(token, user_id, utcnow() + self._ttl, dict(data or {}))
        await self._save(token_digest(token), session)
        return session

    async def get(self, token: str) -> Session | None:
        if not token or len(token) > 256:
            return None
        digest = token_digest(token)
        blob = await _patiently(lambda: self._redis.get(PREFIX + digest))
        if blob is None:
            return None
        stored = _decode(blob)
        expires = datetime.fromtimestamp(stored.expires_at, UTC)
        now = utcnow()
        if expires <= now:
            return None
        session = Session(token, stored.user_id, expires, stored.data)
        if session.expires_at - now < self._ttl - self._slide_after:
            session.expires_at = now + self._ttl  # sliding expiry, not a write per request
            await self._save(digest, session)
        return session

    async def update(self, session: Session) -> None:
        await self._save(token_digest(session.token), session)

    async def delete(self, token: str) -> None:
        await _patiently(lambda: self._redis.delete(PREFIX + token_digest(token)))

    async def delete_for_user(self, user_id: int) -> None:
        key = USER_PREFIX + str(user_id)
        digests = await self._redis.smembers(key)
        if digests:
            names = (d.decode() if isinstance(d, bytes) else str(d) for d in digests)
            await self._redis.delete(*(PREFIX + name for name in names))
        await self._redis.delete(key)
