"""Follows and the home feed (photos of followed users, newest first)."""

from __future__ import annotations

from picscale.data.follows import FollowRepository
from picscale.data.photos import PhotoRepository
from picscale.data.users import UserRepository
from picscale.domain.cache_keys import CACHED_PAGE_SIZES, feed_key, profile_key
from picscale.domain.errors import Invalid, NotFound
from picscale.domain.paging import parse_cursor
from picscale.domain.photos import Photos
from picscale.domain.records import IdPage, Page, UserRecord
from picscale.ids import IdGenerator, shard_of
from picscale.jobs import follow_mirror
from picscale.tiers.cache import Cache
from picscale.tiers.db.shards import Shards
from picscale.tiers.queue import JobQueue


class Social:
    """Follows and the home feed. A follow is written on the follower's shard (the
    truth: what the follower sees at once); the followee's side and count follow by a
    job (``follow_mirror``), so the followee's profile count converges within seconds."""

    def __init__(
        self,
        shards: Shards,
        cache: Cache,
        photos: Photos,
        queue: JobQueue,
        ids: IdGenerator,
        *,
        feed_ttl: float,
    ) -> None:
        self._shards = shards
        self._users = UserRepository(shards)
        self._follows = FollowRepository(shards)
        self._photo_rows = PhotoRepository(shards)
        self._queue = queue
        self._ids = ids
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
        found = await self._users.named(name)
        if found is None:
            raise NotFound(f"user {name!r} does not exist")
        return found

    async def follow(self, actor: UserRecord, username: str) -> None:
        target_id, target_name = await self._target(username)
        if target_id == actor.id:
            raise Invalid("you cannot follow yourself")
        await self._change(actor, target_id, target_name, follow=True)

    async def unfollow(self, actor: UserRecord, username: str) -> None:
        target_id, target_name = await self._target(username)
        await self._change(actor, target_id, target_name, follow=False)

    async def _change(
        self, actor: UserRecord, target_id: int, target_name: str, *, follow: bool
    ) -> bool:
        """One transaction on the actor's shard: the follow, the actor's count, and the
        job that mirrors it on the target's shard. False when nothing changed."""
        job_id = self._ids.next_id(shard_of(actor.id))
        async with self._shards.write(actor.id) as tx:
            if follow:
                # already following: following again changes nothing
                changed = await self._follows.add(tx, actor.id, target_id)
            else:
                changed = await self._follows.remove(tx, actor.id, target_id)
            if changed:
                await self._users.count_following(tx, actor.id, +1 if follow else -1)
                await self._queue.enqueue(
                    tx,
                    follow_mirror.new_job(
                        job_id, follower=actor.id, followee=target_id, followee_name=target_name
                    ),
                )
                await self._cache.invalidate(tx, self._changed(actor, target_name))
        return changed

    async def is_following(self, actor: UserRecord, target_id: int) -> bool:
        return await self._follows.exists(actor.id, target_id)

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
        """Pull: the viewer's followees (one query on the viewer's shard), then their
        photos and the viewer's own on each cluster involved, in parallel."""
        owners = [viewer_id, *await self._follows.followees(viewer_id)]
        rows = await self._photo_rows.recent_ids_across_shards(owners, before, limit + 1)
        page = rows[:limit]
        return IdPage(ids=page, next_cursor=str(page[-1]) if len(rows) > limit and page else None)
