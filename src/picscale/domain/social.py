"""Follows and the home feed (photos of followed users, newest first)."""

from __future__ import annotations

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from picscale.domain.errors import Invalid, NotFound
from picscale.domain.photos import _photo_select, page_of, parse_cursor
from picscale.domain.records import Page, UserRecord
from picscale.tiers.cache import Cache
from picscale.tiers.cache.port import profile_key
from picscale.tiers.db import Database, is_unique_violation
from picscale.tiers.db.schema import follows, photos, users, utcnow


class Social:
    def __init__(self, db: Database, cache: Cache) -> None:
        self._db = db
        self._cache = cache

    async def _target(self, username: str) -> tuple[int, str]:
        name = username.strip().lower()
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(users.c.id, users.c.username).where(users.c.username == name)
                )
            ).first()
        if row is None:
            raise NotFound(f"user {name!r} does not exist")
        return row.id, row.username

    async def follow(self, actor: UserRecord, username: str) -> None:
        target_id, target_name = await self._target(username)
        if target_id == actor.id:
            raise Invalid("you cannot follow yourself")
        try:
            async with self._db.write() as tx:
                await tx.conn.execute(
                    insert(follows).values(
                        follower_id=actor.id, followee_id=target_id, created_at=utcnow()
                    )
                )
                await self._count(tx.conn, actor.id, target_id, +1)
                await self._cache.invalidate(
                    tx, [profile_key(actor.username), profile_key(target_name)]
                )
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            # already following: following again changes nothing

    async def unfollow(self, actor: UserRecord, username: str) -> None:
        target_id, target_name = await self._target(username)
        async with self._db.write() as tx:
            gone = await tx.conn.execute(
                delete(follows).where(
                    follows.c.follower_id == actor.id, follows.c.followee_id == target_id
                )
            )
            if gone.rowcount:
                await self._count(tx.conn, actor.id, target_id, -1)
                await self._cache.invalidate(
                    tx, [profile_key(actor.username), profile_key(target_name)]
                )

    @staticmethod
    async def _count(conn: AsyncConnection, follower: int, followee: int, delta: int) -> None:
        await conn.execute(
            update(users)
            .where(users.c.id == follower)
            .values(following_count=users.c.following_count + delta)
        )
        await conn.execute(
            update(users)
            .where(users.c.id == followee)
            .values(follower_count=users.c.follower_count + delta)
        )

    async def is_following(self, actor: UserRecord, target_id: int) -> bool:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(follows.c.follower_id).where(
                        follows.c.follower_id == actor.id, follows.c.followee_id == target_id
                    )
                )
            ).first()
        return row is not None

    async def feed(self, viewer: UserRecord, cursor: str | None, limit: int) -> Page:
        """Pull model: the viewer's and followed users' photos, one query per page.

        Fan-out on write (precomputed feeds) comes with sharding."""
        before = parse_cursor(cursor)
        followed = select(follows.c.followee_id).where(follows.c.follower_id == viewer.id)
        query = _photo_select().where(
            or_(photos.c.owner_id == viewer.id, photos.c.owner_id.in_(followed)),
            photos.c.status == "ready",
        )
        if before is not None:
            query = query.where(photos.c.id < before)
        async with self._db.read() as conn:
            rows = (await conn.execute(query.order_by(photos.c.id.desc()).limit(limit + 1))).all()
        return page_of(list(rows), limit)
