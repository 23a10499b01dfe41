"""Photos with their versions, and the queries that list them (a gallery, a home feed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from picscale.clock import utcnow
from picscale.data.schema import photo_versions, photos, users
from picscale.data.statements import insert_new
from picscale.domain.records import PhotoRecord
from picscale.tiers.db import Database, ReadConnection, WriteTx
from picscale.tiers.db.shards import Shards

IN_LIST_MAX = 1000  # bounded IN lists

_columns = (
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


def _select() -> Any:
    return select(*_columns).join(users, users.c.id == photos.c.owner_id)


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


class PhotoRepository:
    """A photo lives on its owner's shard (its id was minted there): every query routes
    by the photo's id or the owner's."""

    def __init__(self, shards: Shards) -> None:
        self._shards = shards

    # -- reads ---------------------------------------------------------------------------

    async def get(self, photo_id: int) -> PhotoRecord | None:
        async with self._shards.read(photo_id) as conn:
            return await self._get(conn, photo_id)

    async def get_on_primary(self, photo_id: int) -> PhotoRecord | None:
        """For a job that must see the request that queued it, whatever the replicas."""
        async with self._shards.read_on_primary(photo_id, "jobs") as conn:
            return await self._get(conn, photo_id)

    @staticmethod
    async def _get(conn: ReadConnection, photo_id: int) -> PhotoRecord | None:
        row = (await conn.execute(_select().where(photos.c.id == photo_id))).first()
        return _photo(row) if row is not None else None

    async def get_many(self, photo_ids: Sequence[int]) -> dict[int, PhotoRecord]:
        """Photos by id, from every cluster that holds some, in parallel."""
        groups = self._shards.grouped(photo_ids)

        async def on(db: Database) -> dict[int, PhotoRecord]:
            async with self._shards.read_for(db, groups[db]) as conn:
                rows = await conn.execute(_select().where(photos.c.id.in_(groups[db])))
                return {row.id: _photo(row) for row in rows}

        found: dict[int, PhotoRecord] = {}
        for part in await self._shards.across(on, list(groups)):
            found.update(part)
        return found

    async def by_owner(self, owner_id: int, before: int | None, count: int) -> list[PhotoRecord]:
        """Up to ``count`` of the owner's photos older than ``before``, newest first."""
        query = _select().where(photos.c.owner_id == owner_id)
        if before is not None:
            query = query.where(photos.c.id < before)
        async with self._shards.read(owner_id) as conn:
            rows = await conn.execute(query.order_by(photos.c.id.desc()).limit(count))
            return [_photo(r) for r in rows]

    async def recent_ids_across_shards(
        self, owner_ids: Sequence[int], before: int | None, count: int
    ) -> list[int]:
        """Ids of ready photos by any of ``owner_ids``, newest first: a pull query on
        every cluster that holds one of the owners, in parallel, merged."""
        groups = self._shards.grouped(owner_ids)

        async def on(db: Database) -> list[int]:
            owners = groups[db]
            out: list[int] = []
            async with self._shards.read_for(db, owners) as conn:
                for start in range(0, len(owners), IN_LIST_MAX):
                    query = select(photos.c.id).where(
                        photos.c.owner_id.in_(owners[start : start + IN_LIST_MAX]),
                        photos.c.status == "ready",
                    )
                    if before is not None:
                        query = query.where(photos.c.id < before)
                    out.extend(await conn.scalars(query.order_by(photos.c.id.desc()).limit(count)))
            return out

        merged = [i for part in await self._shards.across(on, list(groups)) for i in part]
        return sorted(merged, reverse=True)[:count]

    async def versions(self, photo_id: int) -> list[int]:
        async with self._shards.read(photo_id) as conn:
            rows = await conn.scalars(
                select(photo_versions.c.version)
                .where(photo_versions.c.photo_id == photo_id)
                .order_by(photo_versions.c.version)
            )
            return list(rows)

    async def has_version(self, photo_id: int, version: int) -> bool:
        """On the primary: a job checks whether an earlier run stored its version."""
        async with self._shards.read_on_primary(photo_id, "jobs") as conn:
            count = await conn.scalar(
                select(func.count())
                .select_from(photo_versions)
                .where(photo_versions.c.photo_id == photo_id, photo_versions.c.version == version)
            )
        return bool(count)

    # -- writes --------------------------------------------------------------------------

    async def insert(self, tx: WriteTx, photo: PhotoRecord) -> None:
        await tx.conn.execute(
            insert(photos).values(
                id=photo.id,
                owner_id=photo.owner_id,
                caption=photo.caption,
                format=photo.format,
                status=photo.status,
                version=photo.version,
                next_version=2,
                width=photo.width,
                height=photo.height,
                created_at=photo.created_at,
            )
        )

    async def lock(self, tx: WriteTx, photo_id: int) -> PhotoRecord | None:
        """The photo, held for the rest of ``tx`` (a check that guards a write)."""
        row = (
            await tx.conn.execute(
                _select().where(photos.c.id == photo_id).with_for_update(of=photos)
            )
        ).first()
        return _photo(row) if row is not None else None

    async def delete(self, tx: WriteTx, photo_id: int) -> None:
        await tx.conn.execute(delete(photo_versions).where(photo_versions.c.photo_id == photo_id))
        await tx.conn.execute(delete(photos).where(photos.c.id == photo_id))

    async def delete_owned_by(self, tx: WriteTx, owner_id: int) -> list[int]:
        """Every photo of ``owner_id`` (their versions go with them); returns their ids."""
        return list(
            await tx.conn.scalars(
                delete(photos).where(photos.c.owner_id == owner_id).returning(photos.c.id)
            )
        )

    async def reserve_version(
        self, tx: WriteTx, photo_id: int, current: int
    ) -> tuple[list[Any], int] | None:
        """The next version number of the photo, taken for an edit, and the operations of
        version ``current`` (the chain the new one extends); None if the photo is gone."""
        base = (
            await tx.conn.execute(
                select(photo_versions.c.operations).where(
                    photo_versions.c.photo_id == photo_id, photo_versions.c.version == current
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
            return None
        return list(base.operations or []), int(reserved)

    async def current_version(self, tx: WriteTx, photo_id: int) -> int | None:
        """The photo's version now; None if it was deleted."""
        found = await tx.conn.scalar(select(photos.c.version).where(photos.c.id == photo_id))
        return int(found) if found is not None else None

    async def add_version(
        self,
        tx: WriteTx,
        *,
        photo_id: int,
        version: int,
        width: int,
        height: int,
        job_id: int,
        operations: list[Any],
    ) -> bool:
        """False when this version (or this job's) is stored already: a job run twice."""
        result = await tx.conn.execute(
            insert_new(self._shards.dialect, photo_versions).values(
                photo_id=photo_id,
                version=version,
                width=width,
                height=height,
                job_id=job_id,
                operations=operations,
                created_at=utcnow(),
            )
        )
        return bool(result.rowcount)

    async def make_current(
        self, tx: WriteTx, photo_id: int, version: int, width: int, height: int
    ) -> None:
        await tx.conn.execute(
            update(photos)
            .where(photos.c.id == photo_id)
            .values(version=version, status="ready", width=width, height=height)
        )

    async def mark_failed(self, tx: WriteTx, photo_id: int) -> PhotoRecord | None:
        """A photo whose first version could not be made says so; returns the photo."""
        await tx.conn.execute(
            update(photos)
            .where(photos.c.id == photo_id, photos.c.status == "processing")
            .values(status="failed")
        )
        row = (await tx.conn.execute(_select().where(photos.c.id == photo_id))).first()
        return _photo(row) if row is not None else None
