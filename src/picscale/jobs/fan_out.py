"""``fan_out``: a new photo's id pushed into its author's followers' timelines, about a
thousand followers a job (the next batch is queued in the transaction that marks this
one done). Only warm timelines take it; an author with more followers than the
threshold is a celebrity: nothing is pushed, readers merge their photos in instead."""

from __future__ import annotations

from typing import Any

from picscale.data.celebrities import CelebrityRepository
from picscale.data.follows import FollowRepository
from picscale.data.users import UserRepository
from picscale.ids import IdGenerator, shard_of
from picscale.jobs.handler import Completion
from picscale.tiers.db.shards import Shards
from picscale.tiers.queue import ClaimedJob, JobQueue, NewJob
from picscale.tiers.timelines import TimelineStore

KIND = "fan_out"


def new_job(job_id: int, *, author: int, photo_id: int, after: int | None = None) -> NewJob:
    """``job_id`` minted on the author's shard."""
    return NewJob(
        id=job_id,
        kind=KIND,
        payload={"author": author, "photo_id": photo_id, "after": after},
        photo_id=photo_id,
        owner_id=author,
    )


class FanOut:
    kind: str = KIND
    time_limit: float | None = None

    def __init__(
        self,
        shards: Shards,
        timelines: TimelineStore,
        queue: JobQueue,
        ids: IdGenerator,
        *,
        batch: int,
        max_followers: int,
    ) -> None:
        self._follows = FollowRepository(shards)
        self._users = UserRepository(shards)
        self._celebrities = CelebrityRepository(shards.home)
        self._timelines = timelines
        self._queue = queue
        self._ids = ids
        self._batch = batch
        self._max_followers = max_followers

    async def run(self, job: ClaimedJob, completion: Completion) -> dict[str, Any]:
        author = int(job.payload["author"])
        photo_id = int(job.payload["photo_id"])
        after = job.payload.get("after")
        if after is None:  # the first batch decides: fan out, or merge at read time
            followers = await self._users.follower_count(author)
            if followers > self._max_followers:
                await self._celebrities.mark(author, followers)
                return {"celebrity": True, "followers": followers}
            await self._celebrities.unmark(author)
        page = await self._follows.followers_page(
            author, int(after) if after is not None else None, self._batch
        )
        pushed = await self._timelines.push(page, photo_id)
        result: dict[str, Any] = {"followers": len(page), "pushed": pushed}
        async with completion.storing(result) as tx:
            if len(page) == self._batch:
                result["next"] = True
                await self._queue.enqueue(
                    tx,
                    new_job(
                        self._ids.next_id(shard_of(author)),
                        author=author,
                        photo_id=photo_id,
                        after=page[-1],
                    ),
                )
        return result

    async def dead(self, job: ClaimedJob) -> None:
        return None  # warm timelines miss the photo until they are rebuilt
