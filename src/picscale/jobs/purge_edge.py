"""``purge_edge``: a purge by surrogate key that the edge did not confirm at once,
retried until it does (the edge must never keep a deleted photo)."""

from __future__ import annotations

from typing import Any

import structlog

from picscale.ids import IdGenerator
from picscale.jobs.handler import Completion
from picscale.tiers.db.shards import Shards
from picscale.tiers.edge import Edge
from picscale.tiers.queue import ClaimedJob, JobQueue, NewJob

log = structlog.get_logger(__name__)

KIND = "purge_edge"
# backoff doubles up to 5 minutes: about 8 hours of retries before a purge is given up on
# (a dead purge_edge job is in `picscale jobs dead list`, to retry by hand)
ATTEMPTS = 100


def new_job(job_id: int, keys: list[str]) -> NewJob:
    return NewJob(id=job_id, kind=KIND, payload={"keys": keys}, max_attempts=ATTEMPTS)


async def purge_now_or_later(
    edge: Edge, shards: Shards, queue: JobQueue, ids: IdGenerator, keys: list[str], shard: int
) -> None:
    """Drop the edge's copies tagged with ``keys`` before the caller answers; if the edge
    does not confirm, a job retries the purge until it does."""
    try:
        await edge.purge(keys)
    except Exception as exc:  # whatever went wrong, the purge must not be forgotten
        log.warning("edge_purge_queued", keys=" ".join(keys), error=str(exc)[:200])
        job_id = ids.next_id(shard)
        async with shards.write(job_id) as tx:
            await queue.enqueue(tx, new_job(job_id, keys))


class PurgeEdge:
    kind: str = KIND
    time_limit: float | None = None

    def __init__(self, edge: Edge) -> None:
        self._edge = edge

    async def run(self, job: ClaimedJob, completion: Completion) -> dict[str, Any]:
        """Raises (and so is retried) until the edge confirms."""
        keys = [str(k) for k in job.payload["keys"]]
        await self._edge.purge(keys)
        return {"purged": keys}

    async def dead(self, job: ClaimedJob) -> None:
        log.error("edge_purge_given_up", keys=" ".join(map(str, job.payload["keys"])))
