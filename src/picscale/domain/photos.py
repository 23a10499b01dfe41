"""Photos: upload, versions made by jobs, edits, deletion, and the owner's gallery.

A photo's media lives under ``photos/{id}/``: the upload as ``source`` (kept, never
served) and each version's variants as ``v{n}/{original,large,thumb}.{ext}``. Version
numbers are reserved when a job is queued, so a job that runs twice writes the same keys
and inserts the same ``photo_versions`` row, which the primary key lets in only once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import structlog
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from picscale.domain.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PayloadTooLarge,
    UnsupportedMedia,
)
from picscale.domain.records import JobRecord, Page, PhotoRecord, UserRecord
from picscale.ids import IdGenerator, shard_of
from picscale.imaging import (
    ImageRejected,
    InvalidEdit,
    Operation,
    Rendered,
    probe,
    validate_operations,
)
from picscale.tiers.cache import Cache
from picscale.tiers.cache.port import feed_key, photo_key, profile_key, user_photos_key
from picscale.tiers.db import Database, WriteTx, is_unique_violation
from picscale.tiers.db.schema import (
    follows,
    jobs,
    photo_versions,
    photos,
    users,
    utcnow,
)
from picscale.tiers.edge import Edge
from picscale.tiers.queue import ClaimedJob, JobQueue, NewJob
from picscale.tiers.storage import MediaStore

log = structlog.get_logger(__name__)

VARIANTS = ("original", "large", "thumb")
RENDER_JOB = "render_version"
PURGE_JOB = "purge_edge"  # a purge the edge did not confirm at once, retried until it does
# backoff doubles up to 5 minutes: about 8 hours of retries before a purge is given up on
# (a dead purge_edge job is in `picscale jobs dead list`, to retry by hand)
PURGE_ATTEMPTS = 100
CAPTION_MAX = 2200
# first pages of a gallery in these sizes are cached (and invalidated); others are not
CACHED_PAGE_SIZES = (12, 20)

# a version is rendered from the source through every earlier edit: bound the chain
MAX_CHAIN = 50

Renderer = Callable[[bytes, Sequence[Operation], int], Awaitable[Rendered]]

_ops_decoder = msgspec.json.Decoder(list[Operation])


def source_key(photo_id: int) -> str:
    return f"photos/{photo_id}/source"


def variant_key(photo_id: int, version: int, variant: str, extension: str) -> str:
    return f"photos/{photo_id}/v{version}/{variant}.{extension}"


_photo_columns = (
    photos.c.id,
    photos.c.owner_id,
    users.c.username.label("owner_username"),
    photos.c.caption,
    photos.c.format,
    photos.c.status,
    photos.c.version,
    photos.c.width,
    photos.c.height,
    photos.c.created_at,
)


def _photo_select() -> Any:
    return select(*_photo_columns).join(users, users.c.id == photos.c.owner_id)


def _photo(row: Any) -> PhotoRecord:
    return PhotoRecord(
        id=row.id,
        owner_id=row.owner_id,
        owner_username=row.owner_username,
        caption=row.caption,
        format=row.format,
        status=row.status,
        version=row.version,
        width=row.width,
        height=row.height,
        created_at=row.created_at,
    )


def parse_cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    if not cursor.isdigit() or len(cursor) > 20:
        raise Invalid("cursor is not valid: pass back the next_cursor of the previous page")
    return int(cursor)


def page_of(rows: list[Any], limit: int) -> Page:
    items = [_photo(r) for r in rows[:limit]]
    next_cursor = str(items[-1].id) if len(rows) > limit and items else None
    return Page(items=items, next_cursor=next_cursor)


def job_record(row: Any) -> JobRecord:
    status = {"queued": "queued", "failed": "queued", "running": "running", "done": "done"}.get(
        row.status, "failed"
    )
    result = row.result or {}
    version = result.get("version") if isinstance(result, dict) else None
    if version is None and isinstance(row.payload, dict):
        version = row.payload.get("version")
    return JobRecord(
        id=row.id,
        kind=row.kind,
        status=status,  # type: ignore[arg-type]
        photo_id=row.photo_id,
        owner_id=row.owner_id,
        version=version,
        error=row.last_error if status == "failed" else None,
        attempts=row.attempts,
    )


def _chunks(ids: Sequence[int], size: int = 1000) -> list[Sequence[int]]:
    """Bounded IN lists: a database takes at most some tens of thousands of parameters."""
    return [ids[i : i + size] for i in range(0, len(ids), size)]


class Photos:
    def __init__(
        self,
        db: Database,
        cache: Cache,
        storage: MediaStore,
        queue: JobQueue,
        ids: IdGenerator,
        edge: Edge,
        *,
        max_upload_bytes: int,
        max_pixels: int,
    ) -> None:
        self._db = db
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
            async with self._db.read() as conn:
                row = (await conn.execute(_photo_select().where(photos.c.id == photo_id))).first()
            return _photo(row) if row is not None else None

        return await self._cache.get_or_load(photo_key(photo_id), load)

    async def get_many(self, photo_ids: Sequence[int]) -> dict[int, PhotoRecord]:
        """Many photos in one cache round trip; only the missing ones from the database."""

        async def load(missing: list[int]) -> dict[int, PhotoRecord]:
            async with self._db.read() as conn:
                rows = await conn.execute(_photo_select().where(photos.c.id.in_(missing)))
                return {row.id: _photo(row) for row in rows}

        return await self._cache.get_many_or_load({photo_key(i): i for i in photo_ids}, load)

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
                return await self._by_owner(owner_id, None, limit)

            page = await self._cache.get_or_load(user_photos_key(owner_id, limit), load)
            assert page is not None
            return page
        return await self._by_owner(owner_id, before, limit)

    async def _by_owner(self, owner_id: int, before: int | None, limit: int) -> Page:
        query = _photo_select().where(photos.c.owner_id == owner_id)
        if before is not None:
            query = query.where(photos.c.id < before)
        async with self._db.read() as conn:
            rows = (await conn.execute(query.order_by(photos.c.id.desc()).limit(limit + 1))).all()
        return page_of(list(rows), limit)

    async def job(self, job_id: int, viewer: UserRecord) -> JobRecord:
        async with self._db.read() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        if row is None or row.owner_id != viewer.id:
            raise NotFound(f"job {job_id} does not exist")
        return job_record(row)

    async def first_render(self, photo_id: int) -> int | None:
        """The job making a new photo's first version, while it is queued or running."""
        async with self._db.read_on_primary("photos") as conn:
            found = await conn.scalar(
                select(jobs.c.id)
                .where(
                    jobs.c.photo_id == photo_id,
                    jobs.c.kind == RENDER_JOB,
                    jobs.c.status.in_(("queued", "running", "failed")),
                )
                .order_by(jobs.c.id)
                .limit(1)
            )
        return int(found) if found is not None else None

    async def versions(self, photo_id: int) -> list[int]:
        async with self._db.read() as conn:
            rows = await conn.scalars(
                select(photo_versions.c.version)
                .where(photo_versions.c.photo_id == photo_id)
                .order_by(photo_versions.c.version)
            )
            return list(rows)

    # -- writes ------------------------------------------------------------------------

    def _invalidate(self, tx: WriteTx, photo_id: int, owner_id: int, owner: str) -> Any:
        return self._cache.invalidate(
            tx, [photo_key(photo_id), profile_key(owner), *self._first_pages(owner_id)]
        )

    @staticmethod
    def _first_pages(owner_id: int) -> list[str]:
        """The owner's gallery and their own feed (which shows their photos too)."""
        return [user_photos_key(owner_id, n) for n in CACHED_PAGE_SIZES] + [
            feed_key(owner_id, n) for n in CACHED_PAGE_SIZES
        ]

    async def upload(self, owner: UserRecord, data: bytes, caption: str) -> PhotoRecord:
        if len(data) > self.max_upload_bytes:
            raise PayloadTooLarge(
                f"the file is {len(data)} bytes; the limit is {self.max_upload_bytes} bytes"
            )
        if len(caption) > CAPTION_MAX:
            raise Invalid(f"caption must be at most {CAPTION_MAX} characters")
        try:
            info = await asyncio.to_thread(probe, data, max_pixels=self.max_pixels)
        except ImageRejected as exc:
            raise {413: PayloadTooLarge, 415: UnsupportedMedia}.get(exc.status, Invalid)(
                exc.message
            ) from None
        photo_id = self._ids.next_id(shard_of(owner.id))
        job_id = self._ids.next_id(shard_of(owner.id))
        await self._storage.put(source_key(photo_id), data, info.format.content_type)
        now = utcnow()
        try:
            async with self._db.write() as tx:
                await tx.conn.execute(
                    insert(photos).values(
                        id=photo_id,
                        owner_id=owner.id,
                        caption=caption,
                        format=info.format.value,
                        status="processing",
                        version=0,
                        next_version=2,
                        width=info.width,
                        height=info.height,
                        created_at=now,
                    )
                )
                await tx.conn.execute(
                    update(users)
                    .where(users.c.id == owner.id)
                    .values(photo_count=users.c.photo_count + 1)
                )
                await self._queue.enqueue(
                    tx,
                    NewJob(
                        id=job_id,
                        kind=RENDER_JOB,
                        payload={"photo_id": photo_id, "version": 1, "operations": []},
                        photo_id=photo_id,
                        owner_id=owner.id,
                    ),
                )
                await self._invalidate(tx, photo_id, owner.id, owner.username)
        except BaseException:
            await self._storage.delete_prefix(f"photos/{photo_id}")
            raise
        return PhotoRecord(
            id=photo_id,
            owner_id=owner.id,
            owner_username=owner.username,
            caption=caption,
            format=info.format.value,
            status="processing",
            version=0,
            width=info.width,
            height=info.height,
            created_at=now,
        )

    async def _owned(self, actor: UserRecord, photo_id: int) -> PhotoRecord:
        async with self._db.write() as tx:  # read on the primary: the check guards a write
            row = (await tx.conn.execute(_photo_select().where(photos.c.id == photo_id))).first()
        if row is None:
            raise NotFound(f"photo {photo_id} does not exist (or was deleted)")
        if row.owner_id != actor.id:
            raise Forbidden("this photo belongs to someone else: only its owner can change it")
        return _photo(row)

    async def delete(self, actor: UserRecord, photo_id: int) -> None:
        photo = await self._owned(actor, photo_id)
        async with self._db.write() as tx:
            gone = await tx.conn.execute(
                delete(photos).where(photos.c.id == photo_id, photos.c.owner_id == actor.id)
            )
            if not gone.rowcount:
                raise NotFound(f"photo {photo_id} does not exist (or was deleted)")
            await tx.conn.execute(
                delete(photo_versions).where(photo_versions.c.photo_id == photo_id)
            )
            await tx.conn.execute(
                update(users)
                .where(users.c.id == actor.id)
                .values(photo_count=users.c.photo_count - 1)
            )
            await self._invalidate(tx, photo_id, actor.id, photo.owner_username)

            async def remove_media() -> None:
                # the edge first: a failing store must not keep the media on the edge
                try:
                    # its media, and the anonymous copies of its owner's profile
                    keys = [f"photo-{photo_id}", f"profile-{actor.id}"]
                    await self.purge_edge(keys, shard_of(photo_id))
                finally:
                    await self._storage.delete_prefix(f"photos/{photo_id}")

            tx.after_commit(remove_media)

    async def delete_account(self, actor: UserRecord) -> int:
        """The user and everything of theirs: photos (rows, versions, media), follows in
        both directions (the other side's counts follow); the edge's copies of their
        media and profile are purged before this returns. Returns the photos gone."""
        async with self._db.write() as tx:
            # one deletion at a time per account (a row lock on PostgreSQL; SQLite's
            # write transactions are serial anyway)
            locked = await tx.conn.scalar(
                select(users.c.id).where(users.c.id == actor.id).with_for_update()
            )
            if locked is None:
                raise NotFound("this account was deleted already")
            gone = (
                await tx.conn.execute(
                    delete(follows)
                    .where(
                        (follows.c.follower_id == actor.id) | (follows.c.followee_id == actor.id)
                    )
                    .returning(follows.c.follower_id, follows.c.followee_id)
                )
            ).all()
            followees = [r.followee_id for r in gone if r.follower_id == actor.id]
            followers = [r.follower_id for r in gone if r.followee_id == actor.id]
            others: dict[int, str] = {}
            for ids, column in (
                (followees, users.c.follower_count),
                (followers, users.c.following_count),
            ):
                for chunk in _chunks(ids):
                    rows = await tx.conn.execute(
                        update(users)
                        .where(users.c.id.in_(chunk))
                        .values({column: column - 1})
                        .returning(users.c.id, users.c.username)
                    )
                    others.update((r.id, r.username) for r in rows)
            # versions go with their photos (ON DELETE CASCADE)
            photo_ids = list(
                await tx.conn.scalars(
                    delete(photos).where(photos.c.owner_id == actor.id).returning(photos.c.id)
                )
            )
            await tx.conn.execute(delete(users).where(users.c.id == actor.id))
            stale = [
                profile_key(actor.username),
                *self._first_pages(actor.id),
                *(photo_key(p) for p in photo_ids),
                *(profile_key(name) for name in others.values()),
                # followers' feeds showed this user's photos
                *(key for f in followers for key in self._first_pages(f)),
            ]
            await self._cache.invalidate(tx, stale)

            async def remove_media() -> None:
                # the edge first: the owner's keys tag all their media and their profile
                try:
                    keys = [f"user-{actor.id}", f"profile-{actor.id}"]
                    await self.purge_edge(keys, shard_of(actor.id))
                finally:
                    for photo_id in photo_ids:
                        await self._storage.delete_prefix(f"photos/{photo_id}")

            tx.after_commit(remove_media)
        return len(photo_ids)

    async def purge_edge(self, keys: list[str], shard: int) -> None:
        """Drop the edge's copies tagged with ``keys`` before the caller answers; if the
        edge does not confirm, a job retries the purge until it does."""
        try:
            await self._edge.purge(keys)
        except Exception as exc:  # whatever went wrong, the purge must not be forgotten
            log.warning("edge_purge_queued", keys=" ".join(keys), error=str(exc)[:200])
            async with self._db.write() as tx:
                await self._queue.enqueue(
                    tx,
                    NewJob(
                        id=self._ids.next_id(shard),
                        kind=PURGE_JOB,
                        payload={"keys": keys},
                        max_attempts=PURGE_ATTEMPTS,
                    ),
                )

    async def run_purge(self, job: ClaimedJob) -> dict[str, Any]:
        """The ``purge_edge`` job: raises (and so is retried) until the edge confirms."""
        keys = [str(k) for k in job.payload["keys"]]
        await self._edge.purge(keys)
        result = {"purged": keys}
        async with self._db.write() as tx:
            await self._queue.complete(tx, job, result)
        return result

    async def request_edit(
        self, actor: UserRecord, photo_id: int, operations: Sequence[Operation]
    ) -> JobRecord:
        photo = await self._owned(actor, photo_id)
        if photo.status != "ready":
            raise Conflict(
                f"photo {photo_id} is {photo.status}: edits can start once its status is ready"
            )
        try:
            validate_operations(operations, photo.width, photo.height)
        except InvalidEdit as exc:
            raise Invalid(str(exc)) from None
        job_id = self._ids.next_id(shard_of(photo_id))
        async with self._db.write() as tx:
            base = (
                await tx.conn.execute(
                    select(photo_versions.c.operations).where(
                        photo_versions.c.photo_id == photo_id,
                        photo_versions.c.version == photo.version,
                    )
                )
            ).first()
            reserved = await tx.conn.scalar(
                update(photos)
                .where(photos.c.id == photo_id)
                .values(next_version=photos.c.next_version + 1)
                .returning(photos.c.next_version - 1)
            )
            if base is None or reserved is None:
                raise NotFound(f"photo {photo_id} does not exist (or was deleted)")
            # a version is rendered from the source with the whole chain of edits: no
            # generation loss from re-encoding an already encoded version
            chain = list(base.operations or []) + [msgspec.to_builtins(op) for op in operations]
            if len(chain) > MAX_CHAIN:
                raise Invalid(
                    f"this photo already carries {len(chain) - len(operations)} edits and a "
                    f"version is rendered from the upload with all of them (at most "
                    f"{MAX_CHAIN}): download the current version and upload it as a new photo"
                )
            payload = {"photo_id": photo_id, "version": int(reserved), "operations": chain}
            await self._queue.enqueue(
                tx,
                NewJob(
                    id=job_id,
                    kind=RENDER_JOB,
                    payload=payload,
                    photo_id=photo_id,
                    owner_id=actor.id,
                ),
            )
        return JobRecord(
            id=job_id,
            kind=RENDER_JOB,
            status="queued",
            photo_id=photo_id,
            owner_id=actor.id,
            version=int(reserved),
            error=None,
            attempts=0,
        )

    # -- the job -----------------------------------------------------------------------

    async def render_version(self, job: ClaimedJob, render: Renderer) -> dict[str, Any]:
        """Make one version's variants. Idempotent: a second run makes no second version."""
        photo_id = int(job.payload["photo_id"])
        version = int(job.payload["version"])
        operations = _ops_decoder.decode(msgspec.json.encode(job.payload["operations"]))
        async with self._db.write() as tx:  # the primary: the job must see its own request
            row = (await tx.conn.execute(_photo_select().where(photos.c.id == photo_id))).first()
            done = await tx.conn.scalar(
                select(func.count())
                .select_from(photo_versions)
                .where(photo_versions.c.photo_id == photo_id, photo_versions.c.version == version)
            )
            if row is None or done:
                await self._queue.complete(tx, job, {"version": version, "skipped": True})
                return {"version": version, "skipped": True}
        source = await self._storage.get(source_key(photo_id))
        rendered = await render(source, operations, self.max_pixels)
        extension = rendered.format.extension
        for variant in VARIANTS:
            await self._storage.put(
                variant_key(photo_id, version, variant, extension),
                rendered.variants[variant],
                rendered.format.content_type,
            )
        result = {"version": version, "width": rendered.width, "height": rendered.height}
        try:
            async with self._db.write() as tx:
                exists = await tx.conn.scalar(
                    select(photos.c.version).where(photos.c.id == photo_id)
                )
                if exists is None:  # deleted while we rendered: leave nothing behind
                    tx.after_commit(lambda: self._drop_media(photo_id))
                    await self._queue.complete(tx, job, {**result, "skipped": True})
                    return result
                await tx.conn.execute(
                    insert(photo_versions).values(
                        photo_id=photo_id,
                        version=version,
                        width=rendered.width,
                        height=rendered.height,
                        job_id=job.id,
                        operations=job.payload["operations"],
                        created_at=utcnow(),
                    )
                )
                if version > exists:
                    await tx.conn.execute(
                        update(photos)
                        .where(photos.c.id == photo_id)
                        .values(
                            version=version,
                            status="ready",
                            width=rendered.width,
                            height=rendered.height,
                        )
                    )
                await self._queue.complete(tx, job, result)
                await self._invalidate(tx, photo_id, row.owner_id, row.owner_username)
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            # another run of this job stored the version first: that is our result
            async with self._db.write() as tx:
                await self._queue.complete(tx, job, {**result, "duplicate": True})
        return result

    async def _drop_media(self, photo_id: int) -> None:
        await self._storage.delete_prefix(f"photos/{photo_id}")

    async def mark_failed(self, job: ClaimedJob) -> None:
        """A job that will not be retried: a photo whose first version failed says so."""
        photo_id = int(job.payload["photo_id"])
        async with self._db.write() as tx:
            await tx.conn.execute(
                update(photos)
                .where(photos.c.id == photo_id, photos.c.status == "processing")
                .values(status="failed")
            )
            row = (await tx.conn.execute(_photo_select().where(photos.c.id == photo_id))).first()
            if row is not None:
                await self._invalidate(tx, photo_id, row.owner_id, row.owner_username)
