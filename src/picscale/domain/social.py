"""Follows and the home feed (photos of followed users, newest first)."""

from __future__ import annotations

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from picscale.domain.errors import Invalid, NotFound
from picscale.domain.photos import CACHED_PAGE_SIZES, Photos, parse_cursor
from picscale.domain.records import IdPage, Page, UserRecord
from picscale.tiers.cache import Cache
from picscale.tiers.cache.port import feed_key, profile_key
from picscale.tiers.db import Database, is_unique_violation
from picscale.tiers.db.schema import follows, photos, users, utcnow


class Social:
    def __init__(self, db: Database, cache: Cache, photos: Photos, *, feed_ttl: float) -> None:
        self._db = db
        self._cache = cache
        self._photos = photos
        self._feed_ttl = feed_ttl

    def _changed(self, actor: UserRecord, target_name: str) -> list[str]:
        """What a follow or unfollow makes stale: both profiles' counts, the actor's feed."""
        return [
            profile_key(actor.username),
            profile_key(target_name),
            *(feed_key(actor.id, n) for n in CACHED_PAGE_SIZES),
        ]

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
                await self._cache.invalidate(tx, self._changed(actor, target_name))
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
                await self._cache.invalidate(tx, self._changed(actor, target_name))

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
        """Pull model: the ids of the viewer's and followed users' photos, newest first,
        then the photos themselves from the cache in one bulk read.

        The first page's ids are cached for ``feed_ttl`` seconds (see the README: a new
        photo by someone you follow may take that long to appear; your own writes and
        follows drop your cached page at once). Edits and deletes never show stale,
        because the page holds ids and each photo is invalidated precisely.
        Fan-out on write (precomputed feeds) comes with sharding."""
        before = parse_cursor(cursor)
        ids: IdPage | None
        if before is None and limit in CACHED_PAGE_SIZES:

            async def load() -> IdPage:
                return await self._feed_ids(viewer.id, None, limit)

            ids = await self._cache.get_or_load(feed_key(viewer.id, limit), load, self._feed_ttl)
            assert ids is not None
        else:
            ids = await self._feed_ids(viewer.id, before, limit)
        found = await self._photos.get_many(ids.ids)
        items = [found[i] for i in ids.ids if i in found and found[i].status == "ready"]
        return Page(items=items, next_cursor=ids.next_cursor)

    async def _feed_ids(self, viewer_id: int, before: int | None, limit: int) -> IdPage:
        followed = select(follows.c.followee_id).where(follows.c.follower_id == viewer_id)
        query = select(photos.c.id).where(
            or_(photos.c.owner_id == viewer_id, photos.c.owner_id.in_(followed)),
            photos.c.status == "ready",
        )
        if before is not None:
            query = query.where(photos.c.id < before)
        async with self._db.read() as conn:
            rows = list(await conn.scalars(query.order_by(photos.c.id.desc()).limit(limit + 1)))
        page = rows[:limit]
        return IdPage(ids=page, next_cursor=str(page[-1]) if len(rows) > limit and page else None)
