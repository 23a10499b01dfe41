"""``amqp://``: jobs travel through RabbitMQ; the ``jobs`` table keeps their state.

- **No job lost between the database and the broker** (transactional outbox): a job is
  a ``jobs`` row written in the transaction that needs it, with ``published_at`` empty.
  After the commit the web process publishes it at once (publisher confirms) and marks it
  published; if that fails (broker down, process killed just after the commit), the
  relay in every worker publishes rows left unpublished for a few seconds. A relay may
  publish a job twice (it died between the confirm and the mark); the consumer's
  idempotency by job id absorbs it.
- **Durable**: a quorum queue with an explicit ``x-delivery-limit`` and a dead-letter
  exchange, persistent messages, confirms on every publish, prefetch equal to the
  worker's concurrency, ack only after the job's result is committed.
- **Retries** go through per-attempt delay queues (message TTL, then dead-lettered back
  to the jobs queue), which survive a broker restart; a job past its attempts lands in
  the dead-letter queue with its last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import timedelta
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from picscale.clock import utcnow
from picscale.data.jobs import JobRepository
from picscale.tiers.db import Database, WriteTx
from picscale.tiers.db.shards import Shards
from picscale.tiers.queue.port import ClaimedJob, DeadJob, JobState, NewJob
from picscale.tiers.queue.tracing import traced

log = structlog.get_logger(__name__)

JOBS = "picscale.jobs"
DEAD_EXCHANGE = "picscale.dead"
DEAD = "picscale.jobs.dead"
RETRY = "picscale.jobs.retry.{seconds}s"
PAYLOAD_VERSION = 1
PUBLISH_TIMEOUT_SECONDS = 5.0
PUBLISH_BUDGET_SECONDS = 1.0  # what a request waits for its job's publish
PUBLISH_PAUSE_SECONDS = 3.0
CONNECT_TIMEOUT_SECONDS = 5.0
RELAY_AFTER_SECONDS = 3.0  # a row unpublished this long is the relay's
RELAY_BATCH = 200
BACKOFF_BASE_SECONDS = 1
BACKOFF_MAX_SECONDS = 300


def retry_delay(attempt: int) -> int:
    """Seconds before attempt ``attempt + 1``: 1, 2, 4, ... up to five minutes."""
    return int(min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1)))


def encode(job_id: int, kind: str, payload: dict[str, Any], photo_id: Any, owner_id: Any) -> bytes:
    body = {
        "v": PAYLOAD_VERSION,
        "id": str(job_id),
        "kind": kind,
        "payload": payload,  # carries request_id and the read-your-writes WAL position
        "photo_id": None if photo_id is None else str(photo_id),
        "owner_id": None if owner_id is None else str(owner_id),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_id(body: bytes) -> int | None:
    """The job id of a message body, or None for something that is not our job."""
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or int(data.get("v", 0)) > PAYLOAD_VERSION:
            return None
        return int(data["id"])
    except (ValueError, KeyError, TypeError):
        return None


class Broker:
    """One robust connection (it reconnects and re-declares by itself) and the topology."""

    def __init__(self, url: str, *, delivery_limit: int) -> None:
        self.url = url
        self.delivery_limit = delivery_limit
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._retry_queues: set[int] = set()

    async def connection(self) -> AbstractRobustConnection:
        async with self._lock:
            if self._connection is None or self._connection.is_closed:
                self._connection = await aio_pika.connect_robust(
                    self.url, timeout=CONNECT_TIMEOUT_SECONDS
                )
            return self._connection

    async def declare(self, channel: AbstractChannel) -> AbstractQueue:
        dead = await channel.declare_exchange(
            DEAD_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(
            DEAD, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead)
        return await channel.declare_queue(
            JOBS,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                # a message that kills every consumer it reaches stops after this many
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": DEAD_EXCHANGE,
            },
        )

    async def publisher(self) -> AbstractChannel:
        connection = await self.connection()
        async with self._lock:
            if self._publisher is None or self._publisher.is_closed:
                self._publisher = await connection.channel(publisher_confirms=True)
                await self.declare(self._publisher)
            return self._publisher

    async def publish(
        self, body: bytes, *, routing_key: str, message_id: str, headers: dict[str, Any]
    ) -> None:
        """Returns once the broker has confirmed it (persisted); raises otherwise."""
        channel = await self.publisher()
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            content_type="application/json",
            headers=headers,
        )
        await channel.default_exchange.publish(
            message, routing_key=routing_key, timeout=PUBLISH_TIMEOUT_SECONDS
        )

    async def count(self, name: str) -> int:
        """Messages ready in queue ``name``, as the broker counts them now (a robust
        channel would answer a passive declare from its cache)."""
        channel = await (await self.publisher()).get_underlay_channel()
        declared = await channel.queue_declare(name, passive=True)
        return int(declared.message_count or 0)

    async def retry_queue(self, seconds: int) -> str:
        name = RETRY.format(seconds=seconds)
        if seconds not in self._retry_queues:
            channel = await self.publisher()
            await channel.declare_queue(
                name,
                durable=True,
                arguments={
                    "x-message-ttl": seconds * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": JOBS,
                },
            )
            self._retry_queues.add(seconds)
        return name

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


class AmqpQueue:
    def __init__(
        self, shards: Shards, url: str, *, max_attempts: int, max_crashes: int, prefetch: int
    ) -> None:
        self._shards = shards
        self._jobs = JobRepository(shards)
        self._max_attempts = max_attempts
        self._max_crashes = max_crashes
        self._prefetch = max(1, prefetch)
        # the broker's delivery limit backs up our own count of crashes (redeliveries of a
        # running job), with room for messages a stopping worker handed back unstarted
        self.broker = Broker(url, delivery_limit=2 * max_crashes + 1)
        self._deliveries: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._consumer: AbstractChannel | None = None
        self._consuming: tuple[AbstractQueue, str] | None = None
        self._publish_paused_until = 0.0
        self._consumer_lock = asyncio.Lock()
        self._last_relay = 0.0
        self._stopping = False

    # -- producing ---------------------------------------------------------------------

    async def enqueue(self, tx: WriteTx, job: NewJob) -> None:
        payload = traced(job.payload)
        # the outbox: published after the commit
        await self._jobs.insert(tx, job, payload, max_attempts=self._max_attempts, published=False)
        body = encode(job.id, job.kind, payload, job.photo_id, job.owner_id)

        async def publish() -> None:
            # the request waits at most a moment: a broker that is down or slow leaves
            # the job to the relay (and is left alone for a few seconds)
            if time.monotonic() < self._publish_paused_until:
                return
            try:
                await asyncio.wait_for(self._publish_new(job.id, body), PUBLISH_BUDGET_SECONDS)
            except Exception as exc:
                self._publish_paused_until = time.monotonic() + PUBLISH_PAUSE_SECONDS
                log.warning("job_publish_deferred", job_id=str(job.id), error=repr(exc)[:200])

        tx.after_commit(publish)

    async def _publish_new(self, job_id: int, body: bytes) -> None:
        await self.broker.publish(
            body, routing_key=JOBS, message_id=str(job_id), headers={"x-attempt": 0}
        )
        await self._jobs.mark_published(job_id)

    async def relay(self, min_age: float = RELAY_AFTER_SECONDS) -> int:
        """Publish jobs whose rows committed but whose publish did not happen (each
        cluster's outbox in turn)."""
        published = 0
        for db in self._shards.clusters.values():
            published += await self._relay(db, min_age)
        if published:
            log.info("jobs_relayed", count=published)
        return published

    async def _relay(self, db: Database, min_age: float) -> int:
        published = 0
        async with db.write() as tx:
            rows = await self._jobs.unpublished(tx, timedelta(seconds=min_age), RELAY_BATCH)
            for row in rows:
                body = encode(row.id, row.kind, dict(row.payload), row.photo_id, row.owner_id)
                await self.broker.publish(
                    body, routing_key=JOBS, message_id=str(row.id), headers={"x-attempt": 0}
                )
                await self._jobs.published_in(tx, row.id)
                published += 1
        return published

    # -- consuming ---------------------------------------------------------------------

    async def _ensure_consumer(self) -> None:
        async with self._consumer_lock:
            if self._consumer is not None and not self._consumer.is_closed:
                return
            connection = await self.broker.connection()
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self._prefetch)
            queue = await self.broker.declare(channel)
            tag = await queue.consume(self._on_message, no_ack=False)
            self._consumer = channel
            self._consuming = (queue, tag)
            log.info("consuming", queue=JOBS, prefetch=self._prefetch)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._deliveries.put_nowait(message)
        self._arrived.set()

    async def claim(self, owner: str) -> ClaimedJob | None:
        if self._stopping:
            return None
        await self._ensure_consumer()
        while True:
            try:
                message = self._deliveries.get_nowait()
            except asyncio.QueueEmpty:
                return None
            try:
                job = await self._start(message, owner)
            except BaseException:
                # the database did not answer: the message goes back for another try
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
                raise
            if job is not None:
                return job

    async def _start(self, message: AbstractIncomingMessage, owner: str) -> ClaimedJob | None:
        job_id = decode_id(message.body)
        if job_id is None:
            log.error("job_message_unreadable", message_id=message.message_id)
            await message.reject(requeue=False)  # to the dead-letter queue
            return None
        job = await self._jobs.claim_delivered(job_id, owner)
        if job is None:  # done or dead already (a duplicate delivery), or never committed
            log.info("job_duplicate_skipped", job_id=str(job_id))
            await message.ack()
            return None
        job.extra["message"] = message
        if job.crashes > self._max_crashes:
            # redelivered after too many crashes: it never got to fail properly
            error = f"its worker died {job.crashes - 1} times running it"
            await self.fail(job, error, permanent=True)
            return None
        return job

    async def extend(self, job: ClaimedJob) -> bool:
        return True  # the broker holds an unacked message for as long as our channel lives

    async def complete(self, tx: WriteTx, job: ClaimedJob, result: dict[str, Any]) -> None:
        await self._jobs.complete(tx, job.id, result)
        message: AbstractIncomingMessage = job.extra["message"]

        async def ack() -> None:
            # if this ack is lost the job is delivered again and skipped as done
            await message.ack()

        tx.after_commit(ack)

    async def fail(self, job: ClaimedJob, error: str, *, permanent: bool = False) -> str:
        give_up = permanent or job.attempts >= job.max_attempts
        status = "dead" if give_up else "failed"
        message: AbstractIncomingMessage = job.extra["message"]
        body = encode(job.id, job.kind, job.payload, job.photo_id, job.owner_id)
        headers = {"x-attempt": job.attempts, "x-last-error": error[:1000]}
        retry_at = utcnow() + timedelta(seconds=retry_delay(job.attempts))
        await self._jobs.fail(job, error, dead=give_up, retry_at=retry_at, owned=False)
        if give_up:
            await self.broker.publish(
                body, routing_key=DEAD, message_id=str(job.id), headers=headers
            )
        else:
            queue = await self.broker.retry_queue(retry_delay(job.attempts))
            await self.broker.publish(
                body, routing_key=queue, message_id=str(job.id), headers=headers
            )
        await message.ack()  # only once its next home has confirmed it
        return status

    async def dead(self, limit: int = 100) -> list[DeadJob]:
        return await self._jobs.dead(limit)

    async def dead_count(self) -> int:
        return await self._jobs.dead_count()

    async def status(self, job_id: int) -> JobState | None:
        return await self._jobs.state(job_id)

    async def unfinished(self, photo_id: int, kind: str) -> int | None:
        return await self._jobs.unfinished(photo_id, kind)

    async def retry_dead(self, job_id: int | None = None) -> int:
        """The rows go back to the outbox (the relay publishes them); their messages
        leave the dead-letter queue."""
        ids = await self._jobs.requeue_dead(job_id, unpublished=True)
        await self.relay(min_age=0.0)
        channel = await self.broker.publisher()
        dead = await channel.declare_queue(DEAD, passive=True)
        if job_id is None:
            await dead.purge()
            return len(ids)
        wanted = {str(i) for i in ids}
        seen = 0
        limit = await self.broker.count(DEAD)
        while seen < limit:  # look through the queue once; put the others back
            message = await dead.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            seen += 1
            if message.message_id in wanted:
                await message.ack()
            else:
                await message.nack(requeue=True)
        return len(ids)

    async def purge_dead(self) -> int:
        count = await self._jobs.delete_dead()
        channel = await self.broker.publisher()
        dead = await channel.declare_queue(DEAD, passive=True)
        await dead.purge()
        return count

    async def depth(self) -> int:
        return await self.broker.count(JOBS)

    async def wait_for_work(self, seconds: float) -> None:
        if not self._deliveries.empty():
            return
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), seconds)

    async def maintain(self) -> None:
        if time.monotonic() - self._last_relay >= 1.0:
            self._last_relay = time.monotonic()
            await self.relay()

    async def stop_consuming(self) -> None:
        """No new deliveries; those received but not started go back to the queue at
        once. Started jobs keep the channel to ack on."""
        self._stopping = True
        async with self._consumer_lock:
            if self._consuming is not None:
                queue, tag = self._consuming
                self._consuming = None
                try:
                    await queue.cancel(tag)
                except Exception as exc:
                    log.warning("consumer_cancel_failed", error=repr(exc)[:200])
        while not self._deliveries.empty():
            message = self._deliveries.get_nowait()
            try:
                await message.nack(requeue=True)
            except Exception as exc:  # its channel is gone: the broker requeued it
                log.debug("nack_failed", error=repr(exc)[:200])

    async def close(self) -> None:
        await self.stop_consuming()
        async with self._consumer_lock:
            if self._consumer is not None and not self._consumer.is_closed:
                await self._consumer.close()
            self._consumer = None
        await self.broker.close()
