"""The session port and its embedded backend, the ``sessions`` table.

The token handed to the client (cookie or bearer) is random; the store keeps only its
SHA-256, so a leaked database dump holds no usable session.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy import delete, insert, select, update

from picscale.settings import Settings, SettingsError
from picscale.tiers.db import Database
from picscale.tiers.db.schema import sessions, utcnow


@dataclass(slots=True)
class Session:
    token: str
    user_id: int
    expires_at: datetime
    data: dict[str, Any] = field(default_factory=dict)


class SessionStore(Protocol):
    async def create(self, user_id: int, data: dict[str, Any] | None = None) -> Session: ...

    async def get(self, token: str) -> Session | None:
        """The live session for ``token``, its expiry slid forward; None if unknown or expired."""
        ...

    async def update(self, session: Session) -> None: ...

    async def delete(self, token: str) -> None: ...

    async def delete_for_user(self, user_id: int) -> None: ...


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class DatabaseSessionStore:
    def __init__(self, db: Database, ttl: timedelta) -> None:
        self._db = db
        self._ttl = ttl
        # slide the expiry only when a good part of it is used: not one write per request
        self._slide_after = ttl / 10

    async def create(self, user_id: int, data: dict[str, Any] | None = None) -> Session:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        session = Session(token, user_id, now + self._ttl, dict(data or {}))
        async with self._db.write() as tx:
            await tx.conn.execute(
                insert(sessions).values(
                    id=token_digest(token),
                    user_id=user_id,
                    data=session.data,
                    created_at=now,
                    expires_at=session.expires_at,
                )
            )
            if secrets.randbelow(100) == 0:  # sweep expired sessions now and then
                await tx.conn.execute(delete(sessions).where(sessions.c.expires_at < now))
        return session

    async def get(self, token: str) -> Session | None:
        if not token or len(token) > 256:
            return None
        digest = token_digest(token)
        async with self._db.read_on_primary(
            "session"
        ) as conn:  # a new session must be seen at once
            row = (
                await conn.execute(
                    select(sessions.c.user_id, sessions.c.data, sessions.c.expires_at).where(
                        sessions.c.id == digest
                    )
                )
            ).first()
        now = utcnow()
        if row is None or row.expires_at <= now:
            return None
        session = Session(token, row.user_id, row.expires_at, dict(row.data or {}))
        if session.expires_at - now < self._ttl - self._slide_after:
            session.expires_at = now + self._ttl
            async with self._db.write() as tx:
                await tx.conn.execute(
                    update(sessions)
                    .where(sessions.c.id == digest)
                    .values(expires_at=session.expires_at)
                )
        return session

    async def update(self, session: Session) -> None:
        async with self._db.write() as tx:
            await tx.conn.execute(
                update(sessions)
                .where(sessions.c.id == token_digest(session.token))
                .values(data=session.data)
            )

    async def delete(self, token: str) -> None:
        async with self._db.write() as tx:
            await tx.conn.execute(delete(sessions).where(sessions.c.id == token_digest(token)))

    async def delete_for_user(self, user_id: int) -> None:
        async with self._db.write() as tx:
            await tx.conn.execute(delete(sessions).where(sessions.c.user_id == user_id))


SESSION_TIMEOUT_SECONDS = 1.0


def create_session_store(settings: Settings, db: Database) -> SessionStore:
    scheme = urlsplit(settings.sessions.url).scheme
    if scheme == "database":
        return DatabaseSessionStore(db, timedelta(seconds=settings.sessions.ttl_seconds))
    if scheme in ("redis", "rediss", "redis+sentinel"):
        from picscale.tiers.cache.redis import redis_client
        from picscale.tiers.sessions.redis import RedisSessionStore

        # sessions are not optional like the cache: a longer timeout than the cache's
        client = redis_client(settings.sessions.url, timeout=SESSION_TIMEOUT_SECONDS)
        # behind Sentinel there are replicas: logins and logouts wait for one of them
        return RedisSessionStore(
            client,
            timedelta(seconds=settings.sessions.ttl_seconds),
            wait_replicas=1 if scheme == "redis+sentinel" else 0,
        )
    raise SettingsError(
        f"PICSCALE_SESSION_URL scheme {scheme!r} is not supported: "
        "use database:// or redis://host:port/db"
    )
