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

from picscale.clock import utcnow
from picscale.data.jobs import JobRepository
from picscale.tiers.db import WriteTx
from picscale.tiers.db.shards import Shards
from picscale.tiers.epoch import EpochFile
from picscale.tiers.queue.port import ClaimedJob, DeadJob, JobState, NewJob
from picscale.tiers.queue.tracing import traced

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0
SWEEP_EVERY_SECONDS = 1.0
WAKEUP_CHECK_SECONDS = 0.005


class LeaseQueue:
    def __init__(
        self,
        shards: Shards,
        *,
        lease_seconds: float,
        max_attempts: int,
        max_crashes: int,
        wakeup: EpochFile | None = None,
    ) -> None:
        self._jobs = JobRepository(shards)
        self._wakeup = wakeup
        self._seen_wakeup = wakeup.read() if wakeup is not None else 0
        self._lease = timedelta(seconds=lease_seconds)
        self._max_attempts = max_attempts
        self._max_crashes = max_crashes
        self._last_sweep = 0.0

    async def enqueue(self, tx: WriteTx, job: NewJob) -> None:
        # the table is the queue: nothing to relay
        payload = traced(job.payload)
        await self._jobs.insert(tx, job, payload, max_attempts=self._max_attempts, published=True)
        if self._wakeup is not None:
            wakeup = self._wakeup

            async def nudge() -> None:
                wakeup.bump()

            tx.after_commit(nudge)

    async def claim(self, owner: str) -> ClaimedJob | None:
        if time.monotonic() - self._last_sweep > SWEEP_EVERY_SECONDS:
            self._last_sweep = time.monotonic()
            await self._jobs.bury_expired(self._max_crashes)
        return await self._jobs.claim_due(owner, self._lease, self._max_crashes)

    async def extend(self, job: ClaimedJob) -> bool:
        return await self._jobs.extend(job, self._lease)

    async def complete(self, tx: WriteTx, job: ClaimedJob, result: dict[str, Any]) -> None:
        await self._jobs.complete(tx, job.id, result)

    async def fail(self, job: ClaimedJob, error: str, *, permanent: bool = False) -> str:
        give_up = permanent or job.attempts >= job.max_attempts
        delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (job.attempts - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: retries of a burst spread out
        retry_at = utcnow() + timedelta(seconds=delay)
        await self._jobs.fail(job, error, dead=give_up, retry_at=retry_at, owned=True)
        return "dead" if give_up else "failed"

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
        return await self._jobs.due_count()

    async def status(self, job_id: int) -> JobState | None:
        return await self._jobs.state(job_id)

    async def unfinished(self, photo_id: int, kind: str) -> int | None:
        return await self._jobs.unfinished(photo_id, kind)

    async def maintain(self) -> None:
        return None  # claims sweep expired leases themselves

    async def stop_consuming(self) -> None:
        return None  # nothing is handed to us before we claim it

    async def dead(self, limit: int = 100) -> list[DeadJob]:
        return await self._jobs.dead(limit)

    async def dead_count(self) -> int:
        return await self._jobs.dead_count()

    async def retry_dead(self, job_id: int | None = None) -> int:
        ids = await self._jobs.requeue_dead(job_id, unpublished=False)
        if ids and self._wakeup is not None:
            self._wakeup.bump()
        return len(ids)

    async def purge_dead(self) -> int:
        return await self._jobs.delete_dead()

    async def close(self) -> None:
        return None
