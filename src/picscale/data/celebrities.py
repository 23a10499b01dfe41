"""Celebrities (global): authors too followed to fan out to, merged in at read time."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from picscale.clock import utcnow
from picscale.data.schema import celebrities
from picscale.data.statements import insert_new
from picscale.tiers.db import Database


class CelebrityRepository:
    def __init__(self, home: Database) -> None:
        self._db = home

    async def mark(self, user_id: int, followers: int) -> None:
        async with self._db.write() as tx:
            result = await tx.conn.execute(
                insert_new(self._db.dialect, celebrities).values(
                    user_id=user_id, followers=followers, since=utcnow()
                )
            )
            if not result.rowcount:
                await tx.conn.execute(
                    update(celebrities)
                    .where(celebrities.c.user_id == user_id)
                    .values(followers=followers)
                )

    async def unmark(self, user_id: int) -> None:
        async with self._db.write() as tx:
            await tx.conn.execute(delete(celebrities).where(celebrities.c.user_id == user_id))

    async def all(self) -> set[int]:
        async with self._db.read() as conn:
            return set(await conn.scalars(select(celebrities.c.user_id)))
