"""The job queue port.

Jobs are delivered at least once: a handler must be idempotent by job id, and store its
result in the same transaction that marks the job done (``complete``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
from sqlalchemy import case, insert

from picscale.settings import Settings, SettingsError
from picscale.tiers.db import Database, WriteTx
from picscale.tiers.db.read_your_writes import stamp_job
from picscale.tiers.db.schema import jobs, utcnow


@dataclass(frozen=True, slots=True)
class NewJob:
    id: int
    kind: str
    payload: dict[str, Any]
    photo_id: int | None = None
    owner_id: int | None = None
    max_attempts: int | None = None  # this job's own limit, over the queue's default


@dataclass(frozen=True, slots=True)
class DeadJob:
    id: int
    kind: str
    attempts: int
    error: str | None
    failed_at: datetime


@dataclass(slots=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    photo_id: int | None
    owner_id: int | None
    attempts: int
    max_attempts: int
    lease_owner: str
    crashes: int = 0  # worker deaths it has seen (a claim after one is not a new attempt)
    queued_at: datetime | None = None  # when it was queued or last became due
    extra: dict[str, Any] = field(default_factory=dict)


# what a claim reads back of the job it takes (``claimed``), on every backend
CLAIMED_COLUMNS = (
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


def claim_counts() -> dict[str, Any]:
    """The ``attempts`` and ``crashes`` of a job as a claim updates them: a job taken while
    its row still says ``running`` lost its last worker (a lease ran out, a message came
    back), which counts as a crash; any other claim is a new attempt. (Both expressions
    read the row as it was before the update.)"""
    crashed = jobs.c.status == "running"
    return {
        "attempts": case((crashed, jobs.c.attempts), else_=jobs.c.attempts + 1),
        "crashes": case((crashed, jobs.c.crashes + 1), else_=jobs.c.crashes),
    }


def claimed(row: Any, owner: str, **extra: Any) -> ClaimedJob:
    """The job a claim took, from a row of ``CLAIMED_COLUMNS``."""
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
        extra=extra,
    )


async def insert_job(
    tx: WriteTx, job: NewJob, payload: dict[str, Any], *, max_attempts: int, published: bool
) -> None:
    """The ``jobs`` row of a newly queued job, in the transaction that needs it;
    ``published`` False leaves it in the outbox for a broker backend."""
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


def traced(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with the current request's id (the job's log lines carry it too) and
    WAL position (the job reads what the request saw, whichever replica serves it)."""
    out = stamp_job(payload)
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id:
        out["request_id"] = request_id
    return out


class JobQueue(Protocol):
    async def enqueue(self, tx: WriteTx, job: NewJob) -> None:
        """Queue ``job`` in the same transaction as the rows that need it."""
        ...

    async def claim(self, owner: str) -> ClaimedJob | None:
        """Take the next due job under a lease, or None when nothing is due."""
        ...

    async def extend(self, job: ClaimedJob) -> bool:
        """Renew the lease of a running job; False if the job is no longer ours."""
        ...

    async def complete(self, tx: WriteTx, job: ClaimedJob, result: dict[str, Any]) -> None:
        """Mark done inside the transaction that stores the job's result."""
        ...

    async def fail(self, job: ClaimedJob, error: str, *, permanent: bool = False) -> str:
        """Record a failed attempt: back off and retry, or give up; returns the new status."""
        ...

    async def depth(self) -> int:
        """Jobs waiting to run."""
        ...

    async def wait_for_work(self, seconds: float) -> None:
        """Return after ``seconds`` seconds, or sooner when a job may have been queued."""
        ...

    async def maintain(self) -> None:
        """Housekeeping that workers run about once a second (the outbox relay, say)."""
        ...

    async def stop_consuming(self) -> None:
        """Take no new jobs (a stopping worker); jobs already started may complete."""
        ...

    async def dead(self, limit: int = 100) -> list[DeadJob]:
        """Jobs that ran out of attempts (or failed for good), most recent first."""
        ...

    async def dead_count(self) -> int: ...

    async def retry_dead(self, job_id: int | None = None) -> int:
        """Queue dead jobs again with fresh attempts (one, or all when None)."""
        ...

    async def purge_dead(self) -> int:
        """Forget every dead job."""
        ...

    async def close(self) -> None: ...


def create_job_queue(settings: Settings, db: Database) -> JobQueue:
    scheme = urlsplit(settings.queue.url).scheme
    if scheme == "lease":
        from picscale.tiers.epoch import EpochFile
        from picscale.tiers.queue.lease import LeaseQueue

        return LeaseQueue(
            db,
            lease_seconds=settings.queue.lease_seconds,
            max_attempts=settings.queue.max_attempts,
            max_crashes=settings.queue.max_crashes,
            # processes sharing a SQLite file share a host: a queued job wakes workers
            wakeup=EpochFile(settings.data_dir / "queue-epoch") if db.dialect == "sqlite" else None,
        )
    if scheme in ("amqp", "amqps"):
        from picscale.tiers.queue.amqp import AmqpQueue

        return AmqpQueue(
            db,
            settings.queue.url,
            max_attempts=settings.queue.max_attempts,
            max_crashes=settings.queue.max_crashes,
            prefetch=settings.worker.concurrency,
        )
    raise SettingsError(
        f"PICSCALE_QUEUE_URL scheme {scheme!r} is not supported: "
        "use lease:// or amqp://user:password@host:5672/vhost"
    )
