"""Photos: upload, edits (new versions, made by jobs), deletion, and the owner's gallery.

A photo's media live in the media store under ``photos/{id}/`` (``domain/media.py``);
its versions are made by ``render_version`` jobs (``jobs/render_version.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec

from picscale.clock import utcnow
from picscale.data.follows import FollowRepository
from picscale.data.photos import PhotoRepository
from picscale.data.users import UserRepository
from picscale.domain.cache_keys import (
    CACHED_PAGE_SIZES,
    first_pages,
    photo_changed,
    photo_key,
    profile_key,
    user_photos_key,
)
from picscale.domain.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PayloadTooLarge,
    UnsupportedMedia,
)
from picscale.domain.media import photo_prefix, source_key
from picscale.domain.paging import page_of, parse_cursor
from picscale.domain.records import JobRecord, Page, PhotoRecord, UserRecord
from picscale.domain.text import refuse_nul
from picscale.ids import IdGenerator, shard_of
from picscale.imaging import ImageRejected, InvalidEdit, Operation, probe, validate_operations
from picscale.jobs import drop_followee, fan_out, follow_mirror, purge_edge, render_version
from picscale.tiers.cache import Cache
from picscale.tiers.db import WriteTx
from picscale.tiers.db.shards import Shards
from picscale.tiers.edge import Edge
from picscale.tiers.queue import JobQueue, JobState
from picscale.tiers.storage import MediaStore

CAPTION_MAX = 2200
# a version is rendered from the source through every earlier edit: bound the chain
MAX_CHAIN = 50


def job_record(state: JobState) -> JobRecord:
    """A job as its owner sees it: the version it makes (done: the one it made)."""
    version = (state.result or {}).get("version")
    if version is None:
        version = state.payload.get("version")
    return JobRecord(
        id=state.id,
        kind=state.kind,
        status=state.status,
        photo_id=state.photo_id,
        owner_id=state.owner_id,
        version=version,
        error=state.error,
        attempts=state.attempts,
    )


class Photos:
    def __init__(
        self,
        shards: Shards,
        cache: Cache,
        storage: MediaStore,
        queue: JobQueue,
        ids: IdGenerator,
        edge: Edge,
        *,
        max_upload_bytes: int,
        max_pixels: int,
    ) -> None:
        self._shards = shards
        self._photos = PhotoRepository(shards)
        self._users = UserRepository(shards)
        self._follows = FollowRepository(shards)
        self._cache = cache
        self._storage = storage
        self._queue = queue
        self._ids = ids
        self._edge = edge
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels

    # -- reads -------------------------------------------------------------------------

    async def get(self, photo_id: int) -> PhotoRecord | None:
        async def load() -> PhotoRecord | None:
            return await self._photos.get(photo_id)

        return await self._cache.get_or_load(photo_key(photo_id), load)

    async def get_many(self, photo_ids: Sequence[int]) -> dict[int, PhotoRecord]:
        """Many photos in one cache round trip; only the missing ones from the database."""
        return await self._cache.get_many_or_load(
            {photo_key(i): i for i in photo_ids}, self._photos.get_many
        )

    async def require(self, photo_id: int) -> PhotoRecord:
        photo = await self.get(photo_id)
        if photo is None:
            raise NotFound(f"photo {photo_id} does not exist (or was deleted)")
        return photo

    async def by_owner(self, owner_id: int, cursor: str | None, limit: int) -> Page:
        before = parse_cursor(cursor)
        if before is None and limit in CACHED_PAGE_SIZES:
            # the first page is what profiles show: cache it whole, in the sizes pages use

            async def load() -> Page:
                return page_of(await self._photos.by_owner(owner_id, None, limit + 1), limit)

            page = await self._cache.get_or_load(user_photos_key(owner_id, limit), load)
            assert page is not None
            return page
        return page_of(await self._photos.by_owner(owner_id, before, limit + 1), limit)

    async def job(self, job_id: int, viewer: UserRecord) -> JobRecord:
        state = await self._queue.status(job_id)
        if state is None or state.owner_id != viewer.id:
            raise NotFound(f"job {job_id} does not exist")
        return job_record(state)

    async def first_render(self, photo_id: int) -> int | None:
        """The job making a new photo's first version, while it is queued or running."""
        return await self._queue.unfinished(photo_id, render_version.KIND)

    async def versions(self, photo_id: int) -> list[int]:
        return await self._photos.versions(photo_id)

    # -- writes ------------------------------------------------------------------------

    async def upload(self, owner: UserRecord, data: bytes, caption: str) -> PhotoRecord:
        if len(data) > self.max_upload_bytes:
            raise PayloadTooLarge(
                f"the file is {len(data)} bytes; the limit is {self.max_upload_bytes} bytes"
            )
        if len(caption) > CAPTION_MAX:
            raise Invalid(f"caption must be at most {CAPTION_MAX} characters")
        refuse_nul(caption=caption)
        try:
            info = await asyncio.to_thread(probe, data, max_pixels=self.max_pixels)
        except ImageRejected as exc:
            raise {413: PayloadTooLarge, 415: UnsupportedMedia}.get(exc.status, Invalid)(
                exc.message
            ) from None
        # minted on the owner's shard: the photo and its jobs live where its owner does
        photo = PhotoRecord(
            id=self._ids.next_id(shard_of(owner.id)),
            owner_id=owner.id,
            owner_username=owner.username,
            caption=caption,
            format=info.format.value,
            status="processing",
            version=0,
            width=info.width,
            height=info.height,
            created_at=utcnow(),
        )
        render = render_version.new_job(
            self._ids.next_id(shard_of(owner.id)),
            photo_id=photo.id,
            owner_id=owner.id,
            version=1,
            operations=[],
        )
        spread = fan_out.new_job(
            self._ids.next_id(shard_of(owner.id)), author=owner.id, photo_id=photo.id
        )
        await self._storage.put(source_key(photo.id), data, info.format.content_type)
        try:
            async with self._shards.write(owner.id) as tx:
                await self._photos.insert(tx, photo)
                await self._users.count_photos(tx, owner.id, +1)
                await self._queue.enqueue(tx, render)
                await self._queue.enqueue(tx, spread)  # into followers' timelines
                await self._cache.invalidate(tx, photo_changed(photo.id, owner.id, owner.username))
        except BaseException:
            await self._storage.delete_prefix(photo_prefix(photo.id))
            raise
        return photo

    async def _owned(self, tx: WriteTx, actor: UserRecord, photo_id: int) -> PhotoRecord:
        """The photo, held for ``tx``: only its owner may change it."""
        photo = await self._photos.lock(tx, photo_id)
        if photo is None:
            raise NotFound(f"photo {photo_id} does not exist (or was deleted)")
        if photo.owner_id != actor.id:
            raise Forbidden("this photo belongs to someone else: only its owner can change it")
        return photo

    async def delete(self, actor: UserRecord, photo_id: int) -> None:
        async with self._shards.write(photo_id) as tx:
            photo = await self._owned(tx, actor, photo_id)
            await self._photos.delete(tx, photo_id)
            await self._users.count_photos(tx, actor.id, -1)
            await self._cache.invalidate(
                tx, photo_changed(photo_id, actor.id, photo.owner_username)
            )

            async def remove_media() -> None:
                # the edge first: a failing store must not keep the media on the edge
                try:
                    # its media, and the anonymous copies of its owner's profile
                    keys = [f"photo-{photo_id}", f"profile-{actor.id}"]
                    await self._purge_edge(keys, shard_of(photo_id))
                finally:
                    await self._storage.delete_prefix(photo_prefix(photo_id))

            tx.after_commit(remove_media)

    async def delete_account(self, actor: UserRecord) -> int:
        """The user and everything of theirs: photos (rows, versions, media), follows in
        both directions (the other side's counts follow); the edge's copies of their
        media and profile are purged before this returns. Returns the photos gone.

        One transaction on the user's shard; the other side of their follows lives on
        other shards and is put right by jobs queued in it (``follow_mirror`` for whom
        they followed, ``drop_followee`` for their followers)."""
        shard = shard_of(actor.id)
        async with self._shards.write(actor.id) as tx:
            if not await self._users.lock(tx, actor.id):
                raise NotFound("this account was deleted already")
            followees = await self._follows.remove_all_from(tx, actor.id)
            followers = await self._follows.remove_all_to(tx, actor.id)
            photo_ids = await self._photos.delete_owned_by(tx, actor.id)
            await self._users.delete(tx, actor.id)
            for followee in followees:
                await self._queue.enqueue(
                    tx,
                    follow_mirror.new_job(
                        self._ids.next_id(shard),
                        follower=actor.id,
                        followee=followee,
                        followee_name="",
                    ),
                )
            ids = [self._ids.next_id(shard) for _ in range(drop_followee.batches(followers))]
            for job in drop_followee.new_jobs(ids, followee=actor.id, followers=followers):
                await self._queue.enqueue(tx, job)
            stale = [
                profile_key(actor.username),
                *first_pages(actor.id),
                *(photo_key(p) for p in photo_ids),
                # followers' feeds showed this user's photos
                *(key for f in followers for key in first_pages(f)),
            ]
            await self._cache.invalidate(tx, stale)

            async def remove_media() -> None:
                # the edge first: the owner's keys tag all their media and their profile
                try:
                    keys = [f"user-{actor.id}", f"profile-{actor.id}"]
                    await self._purge_edge(keys, shard_of(actor.id))
                finally:
                    for photo_id in photo_ids:
                        await self._storage.delete_prefix(photo_prefix(photo_id))

            tx.after_commit(remove_media)
        await self._users.release_name(actor.username, actor.id)
        return len(photo_ids)

    async def _purge_edge(self, keys: list[str], shard: int) -> None:
        await purge_edge.purge_now_or_later(
            self._edge, self._shards, self._queue, self._ids, keys, shard
        )

    async def request_edit(
        self, actor: UserRecord, photo_id: int, operations: Sequence[Operation]
    ) -> JobRecord:
        job_id = self._ids.next_id(shard_of(photo_id))
        async with self._shards.write(photo_id) as tx:
            photo = await self._owned(tx, actor, photo_id)
            if photo.status != "ready":
                raise Conflict(
                    f"photo {photo_id} is {photo.status}: edits can start once its status is ready"
                )
            try:
                validate_operations(operations, photo.width, photo.height)
            except InvalidEdit as exc:
                raise Invalid(str(exc)) from None
            reserved = await self._photos.reserve_version(tx, photo_id, photo.version)
            if reserved is None:
                raise NotFound(f"photo {photo_id} does not exist (or was deleted)")
            base, version = reserved
            # a version is rendered from the source with the whole chain of edits: no
            # generation loss from re-encoding an already encoded version
            chain: list[Any] = base + [msgspec.to_builtins(op) for op in operations]
            if len(chain) > MAX_CHAIN:
                raise Invalid(
                    f"this photo already carries {len(chain) - len(operations)} edits and a "
                    f"version is rendered from the upload with all of them (at most "
                    f"{MAX_CHAIN}): download the current version and upload it as a new photo"
                )
            await self._queue.enqueue(
                tx,
                render_version.new_job(
                    job_id, photo_id=photo_id, owner_id=actor.id, version=version, operations=chain
                ),
            )
        return JobRecord(
            id=job_id,
            kind=render_version.KIND,
            status="queued",
            photo_id=photo_id,
            owner_id=actor.id,
            version=version,
            error=None,
            attempts=0,
        )
