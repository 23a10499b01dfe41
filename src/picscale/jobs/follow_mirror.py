"""``follow_mirror``: the followee's side of a follow (or unfollow), made to match the
truth on the follower's shard, with the followee's follower count.

Queued from the outbox of the follow's own transaction (on the follower's shard).
Idempotent and order-free: each run reads the truth *now* under a lock on the pair, and
makes the mirror match it (a row added or removed, the count moved only when the mirror
changed). Follow-then-unfollow, run in any order or twice, ends in the right state: the
last run to take the pair's lock was queued after the last change, and reads it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError

from picscale.data.counters import FollowerCounter
from picscale.data.follows import FollowRepository
from picscale.domain.cache_keys import profile_key
from picscale.jobs.drop_followee import drop_follows
from picscale.jobs.handler import Completion
from picscale.tiers.cache import Cache
from picscale.tiers.db.shards import Shards
from picscale.tiers.queue import ClaimedJob, NewJob

KIND = "follow_mirror"


def new_job(job_id: int, *, follower: int, followee: int, followee_name: str) -> NewJob:
    """``job_id`` minted on the follower's shard (queued in the follower's transaction)."""
    return NewJob(
        id=job_id,
        kind=KIND,
        payload={"follower": follower, "followee": followee, "followee_name": followee_name},
        owner_id=follower,
    )


class FollowMirror:
    kind: str = KIND
    time_limit: float | None = None

    def __init__(self, shards: Shards, cache: Cache, counter_slots: int) -> None:
        self._shards = shards
        self._follows = FollowRepository(shards)
        self._counter = FollowerCounter(shards.dialect, counter_slots)
        self._cache = cache

    async def run(self, job: ClaimedJob, completion: Completion) -> dict[str, Any]:
        follower = int(job.payload["follower"])
        followee = int(job.payload["followee"])
        name = str(job.payload.get("followee_name", ""))
        try:
            async with self._shards.write(followee) as tx:
                await self._follows.lock_pair(tx, followee, follower)
                following = await self._follows.exists(follower, followee, on_primary=True)
                if following:
                    changed = await self._follows.mirror_add(tx, followee, follower)
                else:
                    changed = await self._follows.mirror_remove(tx, followee, follower)
                if changed:
                    await self._counter.add(tx, followee, +1 if following else -1)
                    if name:
                        await self._cache.invalidate(tx, [profile_key(name)])
        except IntegrityError:
            # the followee's account is gone (deleted before this job ran, so its
            # deletion did not know of this follow): the follower's side goes too
            dropped = await drop_follows(self._shards, self._cache, followee, [follower])
            return {"followee_gone": True, "dropped": dropped}
        return {"following": following, "changed": changed}

    async def dead(self, job: ClaimedJob) -> None:
        return None  # counts converge with the next follow or unfollow of the pair
