"""``database://``: sessions in the database's ``sessions`` table (the embedded default)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from picscale.clock import utcnow
from picscale.data.sessions import SessionRepository
from picscale.tiers.db import Database
from picscale.tiers.sessions.port import Session, token_digest


class DatabaseSessionStore:
    def __init__(self, db: Database, ttl: timedelta) -> None:
        self._rows = SessionRepository(db)
        self._ttl = ttl
        # slide the expiry only when a good part of it is used: not one write per request
        self._slide_after = ttl / 10

    async def create(self, user_id: int, data: dict[str, Any] | None = None) -> Session:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        session = Session(token, user_id, now + self._ttl, dict(data or {}))
        await self._rows.insert(
            token_digest(token),
            user_id,
            session.data,
            now,
            session.expires_at,
            sweep=secrets.randbelow(100) == 0,  # expired sessions go now and then
        )
        return session

    async def get(self, token: str) -> Session | None:
        if not token or len(token) > 256:
            return None
        digest = token_digest(token)
        found = await self._rows.get(digest)
        now = utcnow()
        if found is None or found[2] <= now:
            return None
        user_id, data, expires_at = found
        session = Session(token, user_id, expires_at, data)
        if session.expires_at - now < self._ttl - self._slide_after:
            session.expires_at = now + self._ttl  # sliding expiry, not a write per request
            await self._rows.set_expiry(digest, session.expires_at)
        return session

    async def update(self, session: Session) -> None:
        await self._rows.set_data(token_digest(session.token), session.data)

    async def delete(self, token: str) -> None:
        await self._rows.delete(token_digest(token))

    async def delete_for_user(self, user_id: int) -> None:
        await self._rows.delete_for_user(user_id)
