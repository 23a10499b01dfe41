"""Timelines in tables, on each user's own shard: ``timeline_state`` says a timeline is
warm (built, and read within its TTL), ``timelines`` holds its photo ids."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, insert, select, update

from picscale.clock import utcnow
from picscale.data.schema import timeline_state, timelines
from picscale.data.statements import insert_new
from picscale.tiers.db import Database
from picscale.tiers.db.shards import Shards


class TimelineRepository:
    def __init__(self, shards: Shards, *, cap: int, ttl_seconds: int) -> None:
        self._shards = shards
        self._cap = cap
        self._ttl = timedelta(seconds=ttl_seconds)

    async def read(self, user_id: int, before: int | None, count: int) -> list[int] | None:
        async with self._shards.read(user_id) as conn:
            built = await conn.scalar(
                select(timeline_state.c.built_at).where(timeline_state.c.user_id == user_id)
            )
            if built is None or built < utcnow() - self._ttl:
                return None
            query = select(timelines.c.photo_id).where(timelines.c.user_id == user_id)
            if before is not None:
                query = query.where(timelines.c.photo_id < before)
            return list(
                await conn.scalars(query.order_by(timelines.c.photo_id.desc()).limit(count))
            )

    async def build(self, user_id: int, photo_ids: Sequence[int]) -> None:
        keep = list(photo_ids)[: self._cap]
        async with self._shards.write(user_id) as tx:
            await tx.conn.execute(delete(timelines).where(timelines.c.user_id == user_id))
            if keep:
                await tx.conn.execute(
                    insert(timelines), [{"user_id": user_id, "photo_id": p} for p in keep]
                )
            await tx.conn.execute(delete(timeline_state).where(timeline_state.c.user_id == user_id))
            await tx.conn.execute(insert(timeline_state).values(user_id=user_id, built_at=utcnow()))

    async def push(self, user_ids: Sequence[int], photo_id: int) -> int:
        """Into warm timelines only, on each cluster involved in parallel."""
        groups = self._shards.grouped(user_ids)
        since = utcnow() - self._ttl

        async def on(db: Database) -> int:
            async with db.write() as tx:
                warm = list(
                    await tx.conn.scalars(
                        select(timeline_state.c.user_id).where(
                            timeline_state.c.user_id.in_(groups[db]),
                            timeline_state.c.built_at >= since,
                        )
                    )
                )
                if warm:
                    await tx.conn.execute(
                        insert_new(self._shards.dialect, timelines),
                        [{"user_id": u, "photo_id": photo_id} for u in warm],
                    )
            return len(warm)

        return sum(await self._shards.across(on, list(groups)))

    async def drop(self, user_id: int) -> None:
        async with self._shards.write(user_id) as tx:
            await tx.conn.execute(
                update(timeline_state)
                .where(timeline_state.c.user_id == user_id)
                .values(built_at=utcnow() - self._ttl - timedelta(days=1))
            )
