"""The lease queue against a real SQLite database: claim, extend, retry, dead, expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from picscale.clock import utcnow
from picscale.data.schema import jobs
from picscale.observability.metrics import Metrics
from picscale.settings import load_settings
from picscale.tiers.db import Database, create_database
from picscale.tiers.db.migrate import upgrade
from picscale.tiers.db.shard_map import ShardMap
from picscale.tiers.db.shards import Shards
from picscale.tiers.epoch import EpochFile
from picscale.tiers.queue import NewJob
from picscale.tiers.queue.lease import LeaseQueue


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    settings = load_settings({}, data_dir=tmp_path)
    await asyncio.to_thread(upgrade, settings)
    database = create_database(settings, Metrics())
    yield database
    await database.dispose()


def one_cluster(db: Database) -> Shards:
    """A layout of this one cluster, holding every logical shard."""
    shards = Shards({db.name: db})
    shards.set_map(ShardMap.even([db.name]))
    return shards


async def enqueue(db: Database, queue: LeaseQueue, job_id: int) -> None:
    async with db.write() as tx:
        await queue.enqueue(tx, NewJob(id=job_id, kind="k", payload={"n": job_id}))


async def row(db: Database, job_id: int) -> dict:
    async with db.read() as conn:
        r = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
    assert r is not None
    return dict(r._mapping)


async def make_due(db: Database, job_id: int) -> None:
    async with db.write() as tx:
        await tx.conn.execute(update(jobs).where(jobs.c.id == job_id).values(available_at=utcnow()))


async def test_claim_is_exclusive_and_complete_is_transactional(db: Database) -> None:
    queue = LeaseQueue(one_cluster(db), lease_seconds=30, max_attempts=3, max_crashes=3)
    await enqueue(db, queue, 1)
    assert await queue.depth() == 1
    job = await queue.claim("w1")
    assert job is not None and job.id == 1 and job.attempts == 1
    assert await queue.claim("w2") is None  # leased: nobody else gets it
    assert await queue.extend(job)
    async with db.write() as tx:
        await queue.complete(tx, job, {"ok": True})
    assert (await row(db, 1))["status"] == "done"
    assert await queue.depth() == 0


async def test_rollback_leaves_no_job(db: Database) -> None:
    queue = LeaseQueue(one_cluster(db), lease_seconds=30, max_attempts=3, max_crashes=3)

    async def failing_write() -> None:
        async with db.write() as tx:
            await queue.enqueue(tx, NewJob(id=7, kind="k", payload={}))
            raise RuntimeError("the row that needed the job failed")

    with pytest.raises(RuntimeError):
        await failing_write()
    assert await queue.claim("w") is None


async def test_failures_back_off_then_go_dead(db: Database) -> None:
    queue = LeaseQueue(one_cluster(db), lease_seconds=30, max_attempts=2, max_crashes=3)
    await enqueue(db, queue, 2)
    job = await queue.claim("w")
    assert job is not None
    assert await queue.fail(job, "boom") == "failed"
    state = await row(db, 2)
    assert state["last_error"] == "boom"
    assert state["available_at"] > utcnow()  # backing off
    assert await queue.claim("w") is None
    await make_due(db, 2)
    again = await queue.claim("w")
    assert again is not None and again.attempts == 2
    assert await queue.fail(again, "boom again") == "dead"
    await make_due(db, 2)
    assert await queue.claim("w") is None
    assert (await row(db, 2))["status"] == "dead"


async def test_expired_lease_returns_the_job(db: Database) -> None:
    queue = LeaseQueue(one_cluster(db), lease_seconds=30, max_attempts=3, max_crashes=3)
    await enqueue(db, queue, 3)
    lost = await queue.claim("dead-worker")
    assert lost is not None
    async with db.write() as tx:  # the worker died: its lease runs out
        await tx.conn.execute(
            update(jobs).where(jobs.c.id == 3).values(lease_until=utcnow() - timedelta(seconds=1))
        )
    taken = await queue.claim("w2")
    # the same attempt, resumed: a worker's death is counted as a crash, not a failure
    assert taken is not None and taken.id == 3 and (taken.attempts, taken.crashes) == (1, 1)
    assert not await queue.extend(lost)  # the old owner can no longer renew or finish it
    assert await queue.fail(lost, "late") == "failed"
    assert (await row(db, 3))["lease_owner"] == "w2"


async def expire(db: Database, job_id: int) -> None:
    async with db.write() as tx:
        await tx.conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )


async def test_crashes_have_their_own_limit(db: Database) -> None:
    """A job whose workers keep dying (killed by a deploy, say) keeps its attempts for
    real failures; a job that kills every worker is dead after ``max_crashes``."""
    queue = LeaseQueue(one_cluster(db), lease_seconds=30, max_attempts=2, max_crashes=3)
    await enqueue(db, queue, 4)
    first = await queue.claim("w0")
    assert first is not None
    for n in range(1, 4):  # three workers die under it; each death is one crash
        await expire(db, 4)
        job = await queue.claim(f"w{n}")
        assert job is not None and (job.attempts, job.crashes) == (1, n)
    # after a crash the job can still fail and retry as usual
    assert await queue.fail(job, "boom") == "failed"
    await make_due(db, 4)
    again = await queue.claim("w4")
    assert again is not None and (again.attempts, again.crashes) == (2, 3)
    # a fourth death is one too many: not claimed again, buried by the next sweep
    await expire(db, 4)
    queue._last_sweep = 0.0  # the sweep runs at most once a second
    assert await queue.claim("w5") is None
    state = await row(db, 4)
    assert state["status"] == "dead" and "died or hung 3 times" in state["last_error"]
    assert await queue.retry_dead(4) == 1  # a retry starts both counts afresh
    state = await row(db, 4)
    assert (state["status"], state["attempts"], state["crashes"]) == ("queued", 0, 0)


async def test_a_queued_job_wakes_waiting_workers(db: Database, tmp_path: Path) -> None:
    worker_side = LeaseQueue(
        one_cluster(db),
        lease_seconds=30,
        max_attempts=3,
        max_crashes=3,
        wakeup=EpochFile(tmp_path / "queue-epoch"),
    )
    web_side = LeaseQueue(
        one_cluster(db),
        lease_seconds=30,
        max_attempts=3,
        max_crashes=3,
        wakeup=EpochFile(tmp_path / "queue-epoch"),
    )
    waiting = asyncio.create_task(worker_side.wait_for_work(120))
    await enqueue(db, web_side, 9)
    # returns long before its 120 s: the commit bumped the shared counter
    await asyncio.wait_for(waiting, timeout=10)
    job = await worker_side.claim("w")
    assert job is not None and job.id == 9
