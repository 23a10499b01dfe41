"""``database://``: sessions in the database's ``sessions`` table (the embedded default).

A session lives on its user's shard: its token is ``<user id>.<secret>``, so any
process routes it by the id before the dot (the table keeps only the secret's hash).
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from picscale.clock import utcnow
from picscale.data.sessions import SessionRepository
from picscale.tiers.db.shards import Shards
from picscale.tiers.sessions.port import Session, token_digest


class DatabaseSessionStore:
    def __init__(self, shards: Shards, ttl: timedelta) -> None:
        self._rows = SessionRepository(shards)
        self._ttl = ttl
        # slide the expiry only when a good part of it is used: not one write per request
        self._slide_after = ttl / 10

    async def create(self, user_id: int, data: dict[str, Any] | None = None) -> Session:
        token = f"{user_id}.{secrets.token_urlsafe(32)}"
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
        user = _user_of(token)
        if user is None:
            return None
        digest = token_digest(token)
        found = await self._rows.get(user, digest)
        now = utcnow()
        if found is None or found[1] <= now:
            return None
        data, expires_at = found
        session = Session(token, user, expires_at, data)
        if session.expires_at - now < self._ttl - self._slide_after:
            session.expires_at = now + self._ttl  # sliding expiry, not a write per request
            await self._rows.set_expiry(user, digest, session.expires_at)
        return session

    async def update(self, session: Session) -> None:
        await self._rows.set_data(session.user_id, token_digest(session.token), session.data)

    async def delete(self, token: str) -> None:
        user = _user_of(token)
        if user is not None:
            await self._rows.delete(user, token_digest(token))

    async def delete_for_user(self, user_id: int) -> None:
        await self._rows.delete_for_user(user_id)


def _user_of(token: str) -> int | None:
    """The user id a token starts with; None for anything else (a forged token)."""
    if not token or len(token) > 256:
        return None
    head, sep, secret = token.partition(".")
    # ASCII digits: int() takes any script's digits, or fails on some ('²') that
    # isdigit() accepts
    if not sep or not secret or not (head.isascii() and head.isdigit()) or len(head) > 19:
        return None
    user = int(head)
    return user if 0 < user < 1 << 63 else None
