"""The job queue port, and the values it hands out.

Jobs are delivered at least once: a handler must be idempotent by job id, and the
worker marks a job done (``complete``) in the transaction that stores its result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from picscale.tiers.db import WriteTx


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


@dataclass(frozen=True, slots=True)
class JobState:
    """A job as its owner may see it: a failed attempt waiting for a retry is ``queued``,
    a dead one ``failed``."""

    id: int
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    photo_id: int | None
    owner_id: int | None
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int


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
        """Mark done inside the transaction that stores the job's result (the worker's)."""
        ...

    async def fail(self, job: ClaimedJob, error: str, *, permanent: bool = False) -> str:
        """Record a failed attempt: back off and retry, or give up; returns the new status."""
        ...

    async def depth(self) -> int:
        """Jobs waiting to run."""
        ...

    async def status(self, job_id: int) -> JobState | None:
        """Where job ``job_id`` is (None if there is no such job)."""
        ...

    async def unfinished(self, photo_id: int, kind: str) -> int | None:
        """The oldest job of ``kind`` for ``photo_id`` still to run or running, if any."""
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
