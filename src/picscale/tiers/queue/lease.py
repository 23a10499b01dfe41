"""``lease://``: jobs are rows of the ``jobs`` table, claimed under a time-limited lease.

A worker claims a job with one ``UPDATE ... RETURNING`` (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), renews the lease while it works, and marks the job done in the transaction
that stores its result. A worker killed mid-job stops renewing; when its lease runs out
the job is due again. Such a claim counts a crash, not an attempt: attempts count the
failures a job reported (``max_attempts``), crashes the workers that died under it, which
is rarely the job's fault (a deploy, the autoscaler, a neighbour's OOM). A job that kills
every worker that takes it still ends, dead, after ``max_crashes``.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from picscale.tiers.db import Database, WriteTx
from picscale.tiers.db.schema import jobs, utcnow
from picscale.tiers.epoch import EpochFile
from picscale.tiers.queue.dead import count_dead, delete_dead, list_dead, requeue_dead
from picscale.tiers.queue.port import (
    CLAIMED_COLUMNS,
    ClaimedJob,
    DeadJob,
    NewJob,
    claim_counts,
    claimed,
    insert_job,
    traced,
)

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0
SWEEP_EVERY_SECONDS = 1.0
WAKEUP_CHECK_SECONDS = 0.005

# statuses: queued, failed (waiting for a retry), running, done, dead
DUE = ("queued", "failed")


class LeaseQueue:
    def __init__(
        self,
        db: Database,
        *,
        lease_seconds: float,
        max_attempts: int,
        max_crashes: int,
        wakeup: EpochFile | None = None,
    ) -> None:
        self._db = db
        self._wakeup = wakeup
        self._seen_wakeup = wakeup.read() if wakeup is not None else 0
        self._lease = timedelta(seconds=lease_seconds)
        self._max_attempts = max_attempts
        self._max_crashes = max_crashes
        self._last_sweep = 0.0

    async def enqueue(self, tx: WriteTx, job: NewJob) -> None:
        # the table is the queue: nothing to relay
        payload = traced(job.payload)
        await insert_job(tx, job, payload, max_attempts=self._max_attempts, published=True)
        if self._wakeup is not None:
            wakeup = self._wakeup

            async def nudge() -> None:
                wakeup.bump()

            tx.after_commit(nudge)

    async def claim(self, owner: str) -> ClaimedJob | None:
        now = utcnow()
        if time.monotonic() - self._last_sweep > SWEEP_EVERY_SECONDS:
            await self._bury_expired(now)
        due = or_(
            and_(
                jobs.c.status.in_(DUE),
                jobs.c.available_at <= now,
                jobs.c.attempts < jobs.c.max_attempts,
            ),
            and_(
                jobs.c.status == "running",
                jobs.c.lease_until < now,
                jobs.c.crashes < self._max_crashes,
            ),
        )
        candidate = select(jobs.c.id).where(due).order_by(jobs.c.available_at).limit(1)
        if self._db.dialect == "postgresql":
            candidate = candidate.with_for_update(skip_locked=True)
        stmt = (
            update(jobs)
            .where(jobs.c.id == candidate.scalar_subquery())
            .values(
                status="running",
                **claim_counts(),
                lease_until=now + self._lease,
                lease_owner=owner,
                updated_at=now,
            )
            .returning(*CLAIMED_COLUMNS)
        )
        async with self._db.write() as tx:
            row = (await tx.conn.execute(stmt)).first()
        if row is None:
            return None
        return claimed(row, owner)

    async def _bury_expired(self, now: Any) -> None:
        """Jobs that lost their lease once too often will never be claimed: end them."""
        self._last_sweep = time.monotonic()
        async with self._db.write() as tx:
            await tx.conn.execute(
                update(jobs)
                .where(
                    jobs.c.status == "running",
                    jobs.c.lease_until < now,
                    jobs.c.crashes >= self._max_crashes,
                )
                .values(
                    status="dead",
                    lease_until=None,
                    updated_at=now,
                    last_error=func.coalesce(jobs.c.last_error, "")
                    + f" [its worker died or hung {self._max_crashes} times: the lease expired]",
                )
            )

    def _ours(self, job: ClaimedJob) -> Any:
        return and_(jobs.c.id == job.id, jobs.c.lease_owner == job.lease_owner)

    async def extend(self, job: ClaimedJob) -> bool:
        now = utcnow()
        async with self._db.write() as tx:
            result = await tx.conn.execute(
                update(jobs)
                .where(self._ours(job), jobs.c.status == "running")
                .values(lease_until=now + self._lease, updated_at=now)
            )
        return bool(result.rowcount)

    async def complete(self, tx: WriteTx, job: ClaimedJob, result: dict[str, Any]) -> None:
        await tx.conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id)
            .values(
                status="done",
                result=result,
                lease_until=None,
                lease_owner=None,
                updated_at=utcnow(),
            )
        )

    async def fail(self, job: ClaimedJob, error: str, *, permanent: bool = False) -> str:
        now = utcnow()
        give_up = permanent or job.attempts >= job.max_attempts
        status = "dead" if give_up else "failed"
        delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (job.attempts - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: retries of a burst spread out
        async with self._db.write() as tx:
            await tx.conn.execute(
                update(jobs)
                .where(self._ours(job), jobs.c.status == "running")
                .values(
                    status=status,
                    last_error=error[:4000],
                    available_at=now + timedelta(seconds=delay),
                    lease_until=None,
                    lease_owner=None,
                    updated_at=now,
                )
            )
        return status

    async def wait_for_work(self, seconds: float) -> None:
        if self._wakeup is None:
            await asyncio.sleep(seconds)
            return
        # a memory read every few milliseconds: a queued job is picked up at once
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            current = self._wakeup.read()
            if current != self._seen_wakeup:
                self._seen_wakeup = current
                return
            await asyncio.sleep(WAKEUP_CHECK_SECONDS)

    async def depth(self) -> int:
        async with self._db.read() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(jobs).where(jobs.c.status.in_(DUE))
            )
        return int(count or 0)

    async def maintain(self) -> None:
        return None  # claims sweep expired leases themselves

    async def stop_consuming(self) -> None:
        return None  # nothing is handed to us before we claim it

    async def dead(self, limit: int = 100) -> list[DeadJob]:
        return await list_dead(self._db, limit)

    async def dead_count(self) -> int:
        return await count_dead(self._db)

    async def retry_dead(self, job_id: int | None = None) -> int:
        ids = await requeue_dead(self._db, job_id)
        if ids and self._wakeup is not None:
            self._wakeup.bump()
        return len(ids)

    async def purge_dead(self) -> int:
        return await delete_dead(self._db)

    async def close(self) -> None:
        return None
