"""Timelines as rows on each user's own shard (``data/timelines``)."""

from __future__ import annotations

from collections.abc import Sequence

from picscale.data.timelines import TimelineRepository
from picscale.tiers.db.shards import Shards


class TableTimelines:
    def __init__(self, shards: Shards, *, cap: int, ttl_seconds: int) -> None:
        self._rows = TimelineRepository(shards, cap=cap, ttl_seconds=ttl_seconds)

    async def read(self, user_id: int, before: int | None, count: int) -> list[int] | None:
        return await self._rows.read(user_id, before, count)

    async def build(self, user_id: int, photo_ids: Sequence[int]) -> None:
        await self._rows.build(user_id, photo_ids)

    async def push(self, user_ids: Sequence[int], photo_id: int) -> int:
        return await self._rows.push(user_ids, photo_id)

    async def drop(self, user_id: int) -> None:
        await self._rows.drop(user_id)

    async def close(self) -> None:
        return None
