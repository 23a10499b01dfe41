"""Follows: who follows whom (the counters they change live with the users)."""

from __future__ import annotations

from sqlalchemy import delete, select

from picscale.clock import utcnow
from picscale.data.schema import follows
from picscale.data.statements import insert_new
from picscale.tiers.db import Database, WriteTx


class FollowRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, tx: WriteTx, follower: int, followee: int) -> bool:
        """False when ``follower`` follows ``followee`` already (nothing changes)."""
        result = await tx.conn.execute(
            insert_new(self._db.dialect, follows).values(
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

    async def exists(self, follower: int, followee: int) -> bool:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(follows.c.follower_id).where(
                        follows.c.follower_id == follower, follows.c.followee_id == followee
                    )
                )
            ).first()
        return row is not None

    async def remove_all_of(self, tx: WriteTx, user_id: int) -> tuple[list[int], list[int]]:
        """Every follow to or from ``user_id`` gone; returns (whom they followed, who
        followed them)."""
        gone = (
            await tx.conn.execute(
                delete(follows)
                .where((follows.c.follower_id == user_id) | (follows.c.followee_id == user_id))
                .returning(follows.c.follower_id, follows.c.followee_id)
            )
        ).all()
        followees = [r.followee_id for r in gone if r.follower_id == user_id]
        followers = [r.follower_id for r in gone if r.followee_id == user_id]
        return followees, followers
