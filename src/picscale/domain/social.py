"""Follows and the home feed (photos of followed users, newest first)."""

from __future__ import annotations

import contextlib
import time

import structlog

from picscale.data.celebrities import CelebrityRepository
from picscale.data.follows import FollowRepository
from picscale.data.photos import PhotoRepository
from picscale.data.users import UserRepository
from picscale.domain.cache_keys import profile_key
from picscale.domain.errors import Invalid, NotFound
from picscale.domain.paging import parse_cursor
from picscale.domain.photos import Photos
from picscale.domain.records import IdPage, Page, UserRecord
from picscale.domain.users import USERNAME, normalise_username
from picscale.ids import IdGenerator, shard_of
from picscale.jobs import follow_mirror
from picscale.tiers.cache import Cache
from picscale.tiers.db.shards import Shards
from picscale.tiers.queue import JobQueue
from picscale.tiers.timelines import TimelineStore, TimelinesUnavailable

STARS_TTL_SECONDS = 5.0

log = structlog.get_logger(__name__)


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
        timelines: TimelineStore,
        *,
        timeline_max: int,
    ) -> None:
        self._shards = shards
        self._users = UserRepository(shards)
        self._follows = FollowRepository(shards)
        self._photo_rows = PhotoRepository(shards)
        self._queue = queue
        self._ids = ids
        self._cache = cache
        self._photos = photos
        self._timelines = timelines
        self._timeline_max = timeline_max
        self._celebrities = CelebrityRepository(shards.home)
        self._stars_seen: set[int] = set()
        self._stars_at = -STARS_TTL_SECONDS

    def _changed(self, actor: UserRecord, target_name: str) -> list[str]:
        """What a follow or unfollow makes stale: both profiles' counts."""
        return [profile_key(actor.username), profile_key(target_name)]

    async def _target(self, username: str) -> tuple[int, str]:
        name = normalise_username(username)
        # what is no username names nobody (and a NUL would fail PostgreSQL's lookup)
        found = await self._users.named(name) if USERNAME.fullmatch(name) else None
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
        if changed:  # the actor's timeline no longer holds what it should: rebuilt
            try:
                await self._timelines.drop(actor.id)
            except TimelinesUnavailable as exc:  # it ends with its TTL
                log.warning("timeline_not_dropped", user_id=str(actor.id), error=str(exc))
        return changed

    async def follower_count_seen_by(self, actor: UserRecord, target_id: int) -> int:
        """The target's follower count as the actor should see it: their own follow or
        unfollow at once, before its mirror job has run (read fresh, not cached)."""
        following = await self._follows.exists(actor.id, target_id, on_primary=True)
        counted, mirrored = await self._follows.count_and_mirrored(target_id, actor.id)
        return counted + (following and not mirrored) - (mirrored and not following)

    async def is_following(self, actor: UserRecord, target_id: int) -> bool:
        return await self._follows.exists(actor.id, target_id)

    async def feed(self, viewer: UserRecord, cursor: str | None, limit: int) -> Page:
        """Hybrid fan-out: the viewer's timeline (photo ids pushed by ``fan_out`` jobs
        when followees upload), merged at read time with the recent photos of the
        celebrities they follow (never pushed) and their own; then the photos
        themselves from the cache in one bulk read. A cold timeline is rebuilt by a
        pull across the clusters of everyone followed. Edits and deletes never show
        stale: the timeline holds ids, and each photo is read (and invalidated) alone."""
        ids = await self._feed_ids(viewer.id, parse_cursor(cursor), limit)
        found = await self._photos.get_many(ids.ids)
        items = [found[i] for i in ids.ids if i in found and found[i].status == "ready"]
        return Page(items=items, next_cursor=ids.next_cursor)

    async def _feed_ids(self, viewer_id: int, before: int | None, limit: int) -> IdPage:
        want = limit + 1
        followees = await self._follows.followees(viewer_id)  # one query, viewer's shard
        stars = await self._stars() & set(followees)
        try:
            timeline = await self._timelines.read(viewer_id, before, want)
        except TimelinesUnavailable as exc:
            log.warning("timeline_unavailable", error=str(exc))
            timeline = None  # pulled this time, and not kept
            available = False
        else:
            available = True
        if timeline is None:
            # cold: a pull on every cluster of the followees, in parallel, kept warm
            pulled = await self._photo_rows.recent_ids_across_shards(
                followees, None, self._timeline_max
            )
            if available:
                with contextlib.suppress(TimelinesUnavailable):
                    await self._timelines.build(viewer_id, pulled)
            timeline = [i for i in pulled if before is None or i < before][:want]
        elif before is not None and len(timeline) < want and followees:
            # older than what the capped timeline holds: pulled
            timeline = await self._photo_rows.recent_ids_across_shards(followees, before, want)
        merged = await self._photo_rows.recent_ids_across_shards(
            [viewer_id, *sorted(stars)], before, want
        )
        rows = sorted(set(timeline) | set(merged), reverse=True)[:want]
        page = rows[:limit]
        return IdPage(ids=page, next_cursor=str(page[-1]) if len(rows) > limit and page else None)

    async def _stars(self) -> set[int]:
        """The celebrities, as this process saw them a few seconds ago."""
        now = time.monotonic()
        if now - self._stars_at > STARS_TTL_SECONDS:
            self._stars_seen = await self._celebrities.all()
            self._stars_at = now
        return self._stars_seen
