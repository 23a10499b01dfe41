"""Follows, on both shards of a follow.

``follows`` (follower → followee) lives on the follower's shard and is the truth: the
follow request writes it in its own transaction. ``followers`` (followee → follower)
lives on the followee's shard: a job mirrors the truth there, with the followee's
follower count (``counters``), so that a followee's followers are one query on one
cluster (fan-out) and a celebrity's count is not one hot row.
"""

from __future__ import annotations

from sqlalchemy import delete, select, text

from picscale.clock import utcnow
from picscale.data.counters import followers_total
from picscale.data.schema import followers, follows
from picscale.data.statements import insert_new
from picscale.tiers.db import WriteTx
from picscale.tiers.db.shards import Shards


class FollowRepository:
    def __init__(self, shards: Shards) -> None:
        self._shards = shards

    # -- the truth, on the follower's shard ---------------------------------------------------

    async def add(self, tx: WriteTx, follower: int, followee: int) -> bool:
        """False when ``follower`` follows ``followee`` already (nothing changes)."""
        result = await tx.conn.execute(
            insert_new(self._shards.dialect, follows).values(
                follower_id=follower, followee_id=followee, created_at=utcnow()
            )
        )
        return bool(result.rowcount)

    async def remove(self, tx: WriteTx, follower: int, followee: int) -> bool:
        """False when there was no such follow."""
        result = await tx.conn.execute(
            delete(follows).where(
                follows.c.follower_id == follower, follows.c.followee_id == followee
            )
        )
        return bool(result.rowcount)

    async def exists(self, follower: int, followee: int, *, on_primary: bool = False) -> bool:
        reading = (
            self._shards.read_on_primary(follower, "jobs")
            if on_primary
            else self._shards.read(follower)
        )
        async with reading as conn:
            row = (
                await conn.execute(
                    select(follows.c.follower_id).where(
                        follows.c.follower_id == follower, follows.c.followee_id == followee
                    )
                )
            ).first()
        return row is not None

    async def followees(self, follower: int) -> list[int]:
        async with self._shards.read(follower) as conn:
            return list(
                await conn.scalars(
                    select(follows.c.followee_id).where(follows.c.follower_id == follower)
                )
            )

    async def remove_all_from(self, tx: WriteTx, user_id: int) -> list[int]:
        """Every follow by ``user_id`` gone (on their shard); returns whom they followed."""
        return list(
            await tx.conn.scalars(
                delete(follows)
                .where(follows.c.follower_id == user_id)
                .returning(follows.c.followee_id)
            )
        )

    # -- the mirror, on the followee's shard ------------------------------------------------

    async def lock_pair(self, tx: WriteTx, followee: int, follower: int) -> None:
        """Mirror updates of one pair, one at a time (SQLite's writes are serial anyway);
        other pairs of the same followee go on in parallel."""
        if self._shards.dialect == "postgresql":
            await tx.conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _pair_key(followee, follower)}
            )

    async def mirror_add(self, tx: WriteTx, followee: int, follower: int) -> bool:
        result = await tx.conn.execute(
            insert_new(self._shards.dialect, followers).values(
                followee_id=followee, follower_id=follower, created_at=utcnow()
            )
        )
        return bool(result.rowcount)

    async def mirror_remove(self, tx: WriteTx, followee: int, follower: int) -> bool:
        result = await tx.conn.execute(
            delete(followers).where(
                followers.c.followee_id == followee, followers.c.follower_id == follower
            )
        )
        return bool(result.rowcount)

    async def count_and_mirrored(self, followee: int, follower: int) -> tuple[int, bool]:
        """The followee's follower count and whether ``follower`` is in their mirror, in
        one statement on the followee's primary: one snapshot of what the job wrote."""
        mirrored = (
            select(followers.c.follower_id)
            .where(followers.c.followee_id == followee, followers.c.follower_id == follower)
            .exists()
        )
        async with self._shards.read_on_primary(followee, "read") as conn:
            row = (await conn.execute(select(followers_total(followee), mirrored))).first()
        assert row is not None
        return int(row[0] or 0), bool(row[1])

    async def followers_page(self, followee: int, after: int | None, count: int) -> list[int]:
        """Up to ``count`` followers of ``followee`` with ids above ``after``, in order."""
        query = select(followers.c.follower_id).where(followers.c.followee_id == followee)
        if after is not None:
            query = query.where(followers.c.follower_id > after)
        async with self._shards.read(followee) as conn:
            return list(await conn.scalars(query.order_by(followers.c.follower_id).limit(count)))

    async def remove_all_to(self, tx: WriteTx, user_id: int) -> list[int]:
        """The mirror of everyone who followed ``user_id`` gone; returns who they were."""
        return list(
            await tx.conn.scalars(
                delete(followers)
                .where(followers.c.followee_id == user_id)
                .returning(followers.c.follower_id)
            )
        )


def _pair_key(followee: int, follower: int) -> int:
    """A signed 64-bit advisory-lock key for the pair."""
    mixed = (followee * 0x9E3779B97F4A7C15 ^ follower) & ((1 << 64) - 1)
    return mixed - (1 << 64) if mixed >= 1 << 63 else mixed
