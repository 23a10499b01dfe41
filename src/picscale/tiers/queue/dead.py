"""Dead jobs, as the ``jobs`` table records them (the same for every queue backend)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update

from picscale.tiers.db import Database
from picscale.tiers.db.schema import jobs, utcnow
from picscale.tiers.queue.port import DeadJob


async def list_dead(db: Database, limit: int) -> list[DeadJob]:
    async with db.read_on_primary("queue") as conn:
        rows = await conn.execute(
            select(jobs.c.id, jobs.c.kind, jobs.c.attempts, jobs.c.last_error, jobs.c.updated_at)
            .where(jobs.c.status == "dead")
            .order_by(jobs.c.updated_at.desc())
            .limit(limit)
        )
        return [DeadJob(r.id, r.kind, r.attempts, r.last_error, r.updated_at) for r in rows.all()]


async def count_dead(db: Database) -> int:
    async with db.read_on_primary("queue") as conn:
        count = await conn.scalar(
            select(func.count()).select_from(jobs).where(jobs.c.status == "dead")
        )
    return int(count or 0)


async def requeue_dead(db: Database, job_id: int | None, **values: Any) -> list[int]:
    """Dead jobs made due again, with their attempts reset; returns their ids."""
    now = utcnow()
    where = [jobs.c.status == "dead"]
    if job_id is not None:
        where.append(jobs.c.id == job_id)
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
                    **values,
                )
            )
    return ids


async def delete_dead(db: Database) -> int:
    async with db.write() as tx:
        result = await tx.conn.execute(delete(jobs).where(jobs.c.status == "dead"))
    return int(result.rowcount or 0)
