"""The embedded session store's table: a session by its user (whose shard holds it) and
the SHA-256 of its token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update

from picscale.data.schema import sessions
from picscale.tiers.db.shards import Shards


class SessionRepository:
    def __init__(self, shards: Shards) -> None:
        self._shards = shards

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
        """A new session; ``sweep`` also deletes the expired ones (on this cluster)."""
        async with self._shards.write(user_id) as tx:
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

    async def get(self, user_id: int, digest: str) -> tuple[dict[str, Any], datetime] | None:
        """(data, expiry), on the primary: a new session must be seen at once."""
        async with self._shards.read_on_primary(user_id, "session") as conn:
            row = (
                await conn.execute(
                    select(sessions.c.data, sessions.c.expires_at).where(
                        sessions.c.user_id == user_id, sessions.c.id == digest
                    )
                )
            ).first()
        return (dict(row.data or {}), row.expires_at) if row is not None else None

    @staticmethod
    def _one(user_id: int, digest: str) -> Any:
        return (sessions.c.user_id == user_id) & (sessions.c.id == digest)

    async def set_expiry(self, user_id: int, digest: str, expires_at: datetime) -> None:
        async with self._shards.write(user_id) as tx:
            await tx.conn.execute(
                update(sessions).where(self._one(user_id, digest)).values(expires_at=expires_at)
            )

    async def set_data(self, user_id: int, digest: str, data: dict[str, Any]) -> None:
        async with self._shards.write(user_id) as tx:
            await tx.conn.execute(
                update(sessions).where(self._one(user_id, digest)).values(data=data)
            )

    async def delete(self, user_id: int, digest: str) -> None:
        async with self._shards.write(user_id) as tx:
            await tx.conn.execute(delete(sessions).where(self._one(user_id, digest)))

    async def delete_for_user(self, user_id: int) -> None:
        async with self._shards.write(user_id) as tx:
            await tx.conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
