"""``drop_followee``: a deleted account's followers follow it no more. Their side of the
follow (the truth, on each follower's shard) goes, with their following counts; one job
per batch of followers, queued in the deletion's transaction. Idempotent: a follow
already gone is not counted twice."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, update

from picscale.data.schema import follows, users
from picscale.domain.cache_keys import profile_key
from picscale.jobs.handler import Completion
from picscale.tiers.cache import Cache
from picscale.tiers.db import Database
from picscale.tiers.db.shards import Shards
from picscale.tiers.queue import ClaimedJob, NewJob

KIND = "drop_followee"
BATCH = 1000


def new_jobs(job_ids: list[int], *, followee: int, followers: list[int]) -> list[NewJob]:
    """One job per ``BATCH`` followers (``job_ids``: minted on the followee's shard)."""
    batches = [followers[i : i + BATCH] for i in range(0, len(followers), BATCH)]
    return [
        NewJob(id=job_id, kind=KIND, payload={"followee": followee, "followers": batch})
        for job_id, batch in zip(job_ids, batches, strict=False)
    ]


def batches(followers: list[int]) -> int:
    return -(-len(followers) // BATCH)


class DropFollowee:
    kind: str = KIND
    time_limit: float | None = None

    def __init__(self, shards: Shards, cache: Cache) -> None:
        self._shards = shards
        self._cache = cache

    async def run(self, job: ClaimedJob, completion: Completion) -> dict[str, Any]:
        followee = int(job.payload["followee"])
        followers = [int(f) for f in job.payload["followers"]]
        return {"dropped": await drop_follows(self._shards, self._cache, followee, followers)}

    async def dead(self, job: ClaimedJob) -> None:
        return None


async def drop_follows(shards: Shards, cache: Cache, followee: int, followers: list[int]) -> int:
    """The follows of ``followers`` to the (gone) ``followee`` removed on each follower's
    shard, with their following counts; returns how many there were."""
    groups = shards.grouped(followers)

    async def on(db: Database) -> int:
        async with db.write() as tx:
            gone = list(
                await tx.conn.scalars(
                    delete(follows)
                    .where(
                        follows.c.followee_id == followee,
                        follows.c.follower_id.in_(groups[db]),
                    )
                    .returning(follows.c.follower_id)
                )
            )
            if gone:
                names = await tx.conn.scalars(
                    update(users)
                    .where(users.c.id.in_(gone))
                    .values(following_count=users.c.following_count - 1)
                    .returning(users.c.username)
                )
                await cache.invalidate(tx, [profile_key(n) for n in names])
        return len(gone)

    return sum(await shards.across(on, list(groups)))
