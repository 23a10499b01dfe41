"""The ``jobs`` table: every job's state, for every queue backend.

The lease queue claims from it directly; the broker queue keeps its state here and uses
``published_at`` as a transactional outbox. Row statuses: queued, running, failed
(waiting for a retry), done, dead (out of attempts, or failed for good).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, or_, select, update

from picscale.clock import utcnow
from picscale.data.schema import jobs
from picscale.tiers.db import Database, WriteTx
from picscale.tiers.db.database import ShardMoving
from picscale.tiers.db.shards import Shards
from picscale.tiers.queue.port import ClaimedJob, DeadJob, JobState, NewJob

DUE = ("queued", "failed")
# what a job's owner sees: a failed attempt waiting for its retry is still queued
_PUBLIC_STATUS = {"queued": "queued", "failed": "queued", "running": "running", "done": "done"}

# what a claim reads back of the job it takes
_CLAIMED = (
    jobs.c.id,
    jobs.c.kind,
    jobs.c.payload,
    jobs.c.photo_id,
    jobs.c.owner_id,
    jobs.c.attempts,
    jobs.c.max_attempts,
    jobs.c.crashes,
    jobs.c.available_at,
)


def _claim_counts() -> dict[str, Any]:
    """The ``attempts`` and ``crashes`` of a job as a claim updates them: a job taken while
    its row still says ``running`` lost its last worker (a lease ran out, a message came
    back), which counts as a crash; any other claim is a new attempt. (Both expressions
    read the row as it was before the update.)"""
    crashed = jobs.c.status == "running"
    return {
        "attempts": case((crashed, jobs.c.attempts), else_=jobs.c.attempts + 1),
        "crashes": case((crashed, jobs.c.crashes + 1), else_=jobs.c.crashes),
    }


def _claimed(row: Any, owner: str) -> ClaimedJob:
    return ClaimedJob(
        id=row.id,
        kind=row.kind,
        payload=dict(row.payload),
        photo_id=row.photo_id,
        owner_id=row.owner_id,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        lease_owner=owner,
        crashes=row.crashes,
        queued_at=row.available_at,
    )


class JobRepository:
    """A job lives on the shard of its id (minted on the shard of what it works on, so
    it is queued in the transaction of the write that needs it). Claims and the dead
    letters span every cluster; the rest routes by the job's id."""

    def __init__(self, shards: Shards) -> None:
        self._shards = shards
        self._turn = 0  # claims start at the next cluster each time: no cluster starves

    def _clusters(self) -> list[Database]:
        return list(self._shards.clusters.values())

    # -- queuing ---------------------------------------------------------------------

    async def insert(
        self,
        tx: WriteTx,
        job: NewJob,
        payload: dict[str, Any],
        *,
        max_attempts: int,
        published: bool,
    ) -> None:
        """A newly queued job, in the transaction that needs it; ``published`` False
        leaves it in the outbox for a broker to be told."""
        now = utcnow()
        await tx.conn.execute(
            insert(jobs).values(
                id=job.id,
                kind=job.kind,
                payload=payload,
                photo_id=job.photo_id,
                owner_id=job.owner_id,
                status="queued",
                attempts=0,
                max_attempts=job.max_attempts or max_attempts,
                available_at=now,
                created_at=now,
                updated_at=now,
                published_at=now if published else None,
            )
        )

    async def mark_published(self, job_id: int) -> None:
        async with self._shards.write(job_id) as tx:
            await tx.conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.published_at.is_(None))
                .values(published_at=utcnow())
            )

    async def unpublished(self, tx: WriteTx, older_than: timedelta, limit: int) -> list[Any]:
        """Rows committed but never published, held by ``tx`` (others skip them)."""
        query = (
            select(jobs.c.id, jobs.c.kind, jobs.c.payload, jobs.c.photo_id, jobs.c.owner_id)
            .where(jobs.c.published_at.is_(None), jobs.c.created_at < utcnow() - older_than)
            .order_by(jobs.c.created_at)
            .limit(limit)
        )
        if self._shards.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return list((await tx.conn.execute(query)).all())

    async def published_in(self, tx: WriteTx, job_id: int) -> None:
        await tx.conn.execute(update(jobs).where(jobs.c.id == job_id).values(published_at=utcnow()))

    # -- running ---------------------------------------------------------------------

    async def claim_due(self, owner: str, lease: timedelta, max_crashes: int) -> ClaimedJob | None:
        """Take the job due longest under a lease: one queued or waiting for its retry, or
        one whose worker's lease ran out (a crash) and may crash again."""
        now = utcnow()
        due = or_(
            and_(
                jobs.c.status.in_(DUE),
                jobs.c.available_at <= now,
                jobs.c.attempts < jobs.c.max_attempts,
            ),
            and_(
                jobs.c.status == "running",
                jobs.c.lease_until < now,
                jobs.c.crashes < max_crashes,
            ),
        )
        candidate = select(jobs.c.id).where(due).order_by(jobs.c.available_at).limit(1)
        if self._shards.dialect == "postgresql":
            candidate = candidate.with_for_update(skip_locked=True)
        statement = (
            update(jobs)
            .where(jobs.c.id == candidate.scalar_subquery())
            .values(
                status="running",
                **_claim_counts(),
                lease_until=now + lease,
                lease_owner=owner,
                updated_at=now,
            )
            .returning(*_CLAIMED)
        )
        clusters = self._clusters()
        self._turn = (self._turn + 1) % len(clusters)
        for db in clusters[self._turn :] + clusters[: self._turn]:
            try:
                async with db.write() as tx:
                    row = (await tx.conn.execute(statement)).first()
            except ShardMoving:
                # the oldest due job here is on a shard in a move's last moment: it is
                # claimed (where the map sends it) a moment later; other clusters go on
                continue
            if row is not None:
                return _claimed(row, owner)
        return None

    async def claim_delivered(self, job_id: int, owner: str) -> ClaimedJob | None:
        """Take a job a broker delivered; None if it is done or dead already (a
        duplicate delivery), or was never committed."""
        async with self._shards.write(job_id) as tx:
            row = (
                await tx.conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status.in_((*DUE, "running")))
                    .values(
                        status="running", **_claim_counts(), lease_owner=owner, updated_at=utcnow()
                    )
                    .returning(*_CLAIMED)
                )
            ).first()
        return _claimed(row, owner) if row is not None else None

    async def bury_expired(self, max_crashes: int) -> None:
        """Jobs whose lease ran out once too often will never be claimed: end them."""
        now = utcnow()
        for db in self._clusters():
            async with db.write() as tx:
                await self._bury(tx, now, max_crashes)

    @staticmethod
    async def _bury(tx: WriteTx, now: datetime, max_crashes: int) -> None:
        await tx.conn.execute(
            update(jobs)
            .where(
                jobs.c.status == "running",
                jobs.c.lease_until < now,
                jobs.c.crashes >= max_crashes,
            )
            .values(
                status="dead",
                lease_until=None,
                updated_at=now,
                last_error=func.coalesce(jobs.c.last_error, "")
                + f" [its worker died or hung {max_crashes} times: the lease expired]",
            )
        )

    async def extend(self, job: ClaimedJob, lease: timedelta) -> bool:
        """Renew a running job's lease; False if it is no longer ``job``'s worker's."""
        now = utcnow()
        async with self._shards.write(job.id) as tx:
            result = await tx.conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job.id,
                    jobs.c.lease_owner == job.lease_owner,
                    jobs.c.status == "running",
                )
                .values(lease_until=now + lease, updated_at=now)
            )
        return bool(result.rowcount)

    async def complete(self, tx: WriteTx, job_id: int, result: dict[str, Any]) -> None:
        await tx.conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                status="done",
                result=result,
                lease_until=None,
                lease_owner=None,
                updated_at=utcnow(),
            )
        )

    async def fail(
        self,
        job: ClaimedJob,
        error: str,
        *,
        dead: bool,
        retry_at: datetime,
        owned: bool,
    ) -> None:
        """Record a failed attempt: ``dead``, or due again at ``retry_at``. ``owned``: only
        while ``job``'s worker still holds it (a lease)."""
        where = [jobs.c.id == job.id, jobs.c.status == "running"]
        if owned:
            where.append(jobs.c.lease_owner == job.lease_owner)
        async with self._shards.write(job.id) as tx:
            await tx.conn.execute(
                update(jobs)
                .where(*where)
                .values(
                    status="dead" if dead else "failed",
                    last_error=error[:4000],
                    available_at=retry_at,
                    lease_until=None,
                    lease_owner=None,
                    updated_at=utcnow(),
                )
            )

    # -- what is there ---------------------------------------------------------------

    async def state(self, job_id: int) -> JobState | None:
        async with self._shards.read(job_id) as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        if row is None:
            return None
        status = _PUBLIC_STATUS.get(row.status, "failed")
        return JobState(
            id=row.id,
            kind=row.kind,
            status=status,  # type: ignore[arg-type]
            photo_id=row.photo_id,
            owner_id=row.owner_id,
            payload=dict(row.payload or {}),
            result=dict(row.result) if isinstance(row.result, dict) else None,
            error=row.last_error if status == "failed" else None,
            attempts=row.attempts,
        )

    async def unfinished(self, photo_id: int, kind: str) -> int | None:
        """The oldest job of ``kind`` for a photo that is still to run or running, read on
        the primary (the request that queued it may have just committed)."""
        async with self._shards.read_on_primary(photo_id, "queue") as conn:
            found = await conn.scalar(
                select(jobs.c.id)
                .where(
                    jobs.c.photo_id == photo_id,
                    jobs.c.kind == kind,
                    jobs.c.status.in_((*DUE, "running")),
                )
                .order_by(jobs.c.id)
                .limit(1)
            )
        return int(found) if found is not None else None

    async def due_count(self) -> int:
        """Jobs waiting to run, summed across shards."""

        async def on(db: Database) -> int:
            async with db.read() as conn:
                count = await conn.scalar(
                    select(func.count()).select_from(jobs).where(jobs.c.status.in_(DUE))
                )
            return int(count or 0)

        return sum(await self._shards.across(on))

    # -- dead jobs -------------------------------------------------------------------

    async def dead(self, limit: int) -> list[DeadJob]:
        """The newest dead jobs, across shards."""

        async def on(db: Database) -> list[DeadJob]:
            async with db.read_on_primary("queue") as conn:
                rows = await conn.execute(
                    select(
                        jobs.c.id,
                        jobs.c.kind,
                        jobs.c.attempts,
                        jobs.c.last_error,
                        jobs.c.updated_at,
                    )
                    .where(jobs.c.status == "dead")
                    .order_by(jobs.c.updated_at.desc())
                    .limit(limit)
                )
                return [
                    DeadJob(r.id, r.kind, r.attempts, r.last_error, r.updated_at)
                    for r in rows.all()
                ]

        found = [j for part in await self._shards.across(on) for j in part]
        return sorted(found, key=lambda j: j.failed_at, reverse=True)[:limit]

    async def dead_count(self) -> int:
        """Dead jobs, summed across shards."""

        async def on(db: Database) -> int:
            async with db.read_on_primary("queue") as conn:
                count = await conn.scalar(
                    select(func.count()).select_from(jobs).where(jobs.c.status == "dead")
                )
            return int(count or 0)

        return sum(await self._shards.across(on))

    async def requeue_dead(self, job_id: int | None, *, unpublished: bool) -> list[int]:
        """Dead jobs (one, or all when None) due again with fresh attempts; returns their
        ids. ``unpublished``: back into the outbox, for a broker to be told again."""
        now = utcnow()
        where = [jobs.c.status == "dead"]
        if job_id is not None:
            where.append(jobs.c.id == job_id)
        extra = {"published_at": None} if unpublished else {}
        clusters = [self._shards.cluster_for(job_id)] if job_id is not None else self._clusters()
        out: list[int] = []
        for db in clusters:
            out.extend(await self._requeue(db, where, now, extra))
        return out

    @staticmethod
    async def _requeue(
        db: Database, where: list[Any], now: datetime, extra: dict[str, Any]
    ) -> list[int]:
        async with db.write() as tx:
            ids = list(await tx.conn.scalars(select(jobs.c.id).where(*where)))
            if ids:
                await tx.conn.execute(
                    update(jobs)
                    .where(jobs.c.id.in_(ids))
                    .values(
                        status="queued",
                        attempts=0,
                        crashes=0,
                        available_at=now,
                        lease_until=None,
                        lease_owner=None,
                        updated_at=now,
                        **extra,
                    )
                )
        return ids

    async def delete_dead(self) -> int:
        """Dead jobs deleted, across shards; returns how many."""

        async def on(db: Database) -> int:
            async with db.write() as tx:
                result = await tx.conn.execute(delete(jobs).where(jobs.c.status == "dead"))
            return int(result.rowcount or 0)

        return sum(await self._shards.across(on))
