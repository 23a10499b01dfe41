"""The embedded session store's table: a session by the SHA-256 of its token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update

from picscale.data.schema import sessions
from picscale.tiers.db import Database


class SessionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(
        self,
        digest: str,
        user_id: int,
        data: dict[str, Any],
        created_at: datetime,
        expires_at: datetime,
        *,
        sweep: bool = False,
    ) -> None:
        """A new session; ``sweep`` also deletes the expired ones."""
        async with self._db.write() as tx:
            await tx.conn.execute(
                insert(sessions).values(
                    id=digest,
                    user_id=user_id,
                    data=data,
                    created_at=created_at,
                    expires_at=expires_at,
                )
            )
            if sweep:
                await tx.conn.execute(delete(sessions).where(sessions.c.expires_at < created_at))

    async def get(self, digest: str) -> tuple[int, dict[str, Any], datetime] | None:
        """(user id, data, expiry), on the primary: a new session must be seen at once."""
        async with self._db.read_on_primary("session") as conn:
            row = (
                await conn.execute(
                    select(sessions.c.user_id, sessions.c.data, sessions.c.expires_at).where(
                        sessions.c.id == digest
                    )
                )
            ).first()
        return (row.user_id, dict(row.data or {}), row.expires_at) if row is not None else None

    async def set_expiry(self, digest: str, expires_at: datetime) -> None:
        async with self._db.write() as tx:
            await tx.conn.execute(
                update(sessions).where(sessions.c.id == digest).values(expires_at=expires_at)
            )

    async def set_data(self, digest: str, data: dict[str, Any]) -> None:
        async with self._db.write() as tx:
            await tx.conn.execute(update(sessions).where(sessions.c.id == digest).values(data=data))

    async def delete(self, digest: str) -> None:
        async with self._db.write() as tx:
            await tx.conn.execute(delete(sessions).where(sessions.c.id == digest))

    async def delete_for_user(self, user_id: int) -> None:
        async with self._db.write() as tx:
            await tx.conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
