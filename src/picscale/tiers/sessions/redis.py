"""``redis://`` sessions: every web server sees every session, so no sticky routing.

A session is one key (the SHA-256 of its token) holding the user id and the session's
data (the read-your-writes WAL position among it), expiring with the session; a set per
user lists their sessions so that all of them can be ended at once.

Redis replicates asynchronously. With replicas (``redis+sentinel://``), a login and a
logout are acknowledged only after ``WAIT`` has seen a replica take them (up to half a
second; past that the request still succeeds and the shortfall is logged), so that a
master's crash neither logs people out nor brings an ended session back. Sliding expiry
and read-your-writes positions are not waited for: losing one costs little.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ReadOnlyError, RedisError, TimeoutError

from picscale.clock import utcnow
from picscale.tiers.sessions.port import Session, SessionStoreUnavailable, token_digest

log = structlog.get_logger(__name__)

T = TypeVar("T")
REPLICA_WAIT_MS = 500

# one atomic command, so that WAIT (which covers this connection's writes) can follow it;
# a save of an existing session (ARGV[5] = "existing") never brings back one that ended
_SAVE = """
local stored
if ARGV[5] == 'existing' then
  stored = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'XX')
else
  stored = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if not stored then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

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
    """Retry through a Redis failover (Sentinel promotes a replica within seconds); a
    store still out of reach, or failing otherwise, is SessionStoreUnavailable."""
    deadline = time.monotonic() + FAILOVER_WAIT_SECONDS
    delay = 0.05
    while True:
        try:
            return await operation()
        except (ConnectionError, TimeoutError, OSError, ReadOnlyError) as exc:
            if time.monotonic() + delay > deadline:
                raise SessionStoreUnavailable(f"Redis: {exc!r}"[:300]) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        except RedisError as exc:
            raise SessionStoreUnavailable(f"Redis: {exc!r}"[:300]) from exc


class RedisSessionStore:
    def __init__(self, client: Redis, ttl: timedelta, *, wait_replicas: int = 0) -> None:
        self._redis = client
        self._ttl = ttl
        self._slide_after = ttl / 10
        self._wait_replicas = wait_replicas
        self.last_replicated: int | None = None  # replicas that took the last login/logout

    async def _durably(self, write: Callable[[Redis], Awaitable[Any]]) -> None:
        """``write``, then wait for it to reach the replicas, on one connection."""
        if not self._wait_replicas:
            await write(self._redis)
            return
        async with self._redis.client() as conn:
            await write(conn)
            acked = int(await conn.wait(self._wait_replicas, REPLICA_WAIT_MS))
        self.last_replicated = acked
        if acked < self._wait_replicas:
            log.warning("session_not_replicated", replicas=acked, wanted=self._wait_replicas)

    def _store(self, session: Session) -> bytes:
        return _encode(_Stored(session.user_id, session.expires_at.timestamp(), session.data))

    async def _save(
        self, digest: str, session: Session, *, durable: bool = False, new: bool = False
    ) -> None:
        """Store ``session``; unless ``new``, only while it exists: a process that read it
        before another ended it (a log-out, a password change) must not bring it back."""
        ms = max(1, int((session.expires_at - utcnow()).total_seconds() * 1000))
        keys = (PREFIX + digest, USER_PREFIX + str(session.user_id))
        ttl = int(self._ttl.total_seconds() * 1000)
        args = (self._store(session), ms, digest, ttl, "new" if new else "existing")

        async def save(client: Redis) -> None:
            await client.eval(_SAVE, 2, *keys, *args)

        if durable:
            await _patiently(lambda: self._durably(save))
        else:
            await _patiently(lambda: save(self._redis))

    async def create(self, user_id: int, data: dict[str, Any] | None = None) -> Session:
        token = secrets.token_urlsafe(32)
        session = Session(token, user_id, utcnow() + self._ttl, dict(data or {}))
        await self._save(token_digest(token), session, durable=True, new=True)
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
        key = PREFIX + token_digest(token)

        async def delete(client: Redis) -> None:
            await client.delete(key)

        await _patiently(lambda: self._durably(delete))

    async def delete_for_user(self, user_id: int) -> None:
        key = USER_PREFIX + str(user_id)

        async def delete() -> None:
            digests = await self._redis.smembers(key)
            if digests:
                names = (d.decode() if isinstance(d, bytes) else str(d) for d in digests)
                await self._redis.delete(*(PREFIX + name for name in names))
            await self._redis.delete(key)

        await _patiently(delete)
