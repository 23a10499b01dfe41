"""Job events: how a change a worker makes to a job reaches the web process streaming it.

An event carries no state, only "job N changed": the ``jobs`` row stays the truth and
the streaming side re-reads it, so a lost or duplicated event costs at most a moment's
delay (the stream also re-reads on a timer).

- Redis (``PICSCALE_CACHE_URL`` or ``PICSCALE_SESSION_URL`` on ``redis://``): the worker
  publishes on ``picscale:job:{id}``; each web process holds one pattern subscription
  and wakes the streams of that job. Works across hosts.
- Otherwise, in process: workers on this host bump ``<data>/job-epoch`` (a memory-mapped
  counter, as the cache does); streams notice within milliseconds. Without a shared
  data directory (PostgreSQL on several hosts) streams re-read every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol
from urllib.parse import urlsplit

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from picscale.settings import Settings
from picscale.tiers.epoch import EpochFile

log = structlog.get_logger(__name__)

CHANNEL = "picscale:job:"
EPOCH_CHECK_SECONDS = 0.02
RESUBSCRIBE_MAX_SECONDS = 2.0


class JobEvents(Protocol):
    async def notify(self, job_id: int) -> None:
        """Job ``job_id`` changed (never raises: an event is a hint)."""
        ...

    async def wait(self, job_id: int, seconds: float) -> None:
        """Until job ``job_id`` may have changed, or ``seconds`` have passed."""
        ...

    async def close(self) -> None: ...


class LocalJobEvents:
    def __init__(self, epoch: EpochFile | None) -> None:
        self._epoch = epoch

    async def notify(self, job_id: int) -> None:
        if self._epoch is not None:
            self._epoch.bump()

    async def wait(self, job_id: int, seconds: float) -> None:
        if self._epoch is None:
            await asyncio.sleep(min(seconds, 1.0))
            return
        seen = self._epoch.read()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._epoch.read() != seen:
                return
            await asyncio.sleep(EPOCH_CHECK_SECONDS)

    async def close(self) -> None:
        return None


class RedisJobEvents:
    def __init__(self, client: Redis) -> None:
        self._redis = client
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = False

    async def notify(self, job_id: int) -> None:
        try:
            await self._redis.publish(f"{CHANNEL}{job_id}", b"1")
        except (RedisError, OSError) as exc:
            log.warning("job_event_lost", job_id=str(job_id), error=repr(exc)[:200])

    async def wait(self, job_id: int, seconds: float) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
        if not self._subscribed:  # not listening (yet, or Redis is down): re-read soon
            seconds = min(seconds, 0.5)
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
        finally:
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[job_id]

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(CHANNEL + "*")
                self._subscribed = True
                delay = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message["type"] != "pmessage":
                        continue
                    channel = bytes(message["channel"]).decode()
                    with contextlib.suppress(ValueError):
                        for event in self._waiters.get(int(channel[len(CHANNEL) :]), ()):
                            event.set()
            except (RedisError, OSError) as exc:
                log.warning("job_events_unsubscribed", error=repr(exc)[:200])
                self._subscribed = False
                for waiting in self._waiters.values():  # whatever we missed: re-read
                    for event in waiting:
                        event.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESUBSCRIBE_MAX_SECONDS)
            finally:
                self._subscribed = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self._redis.aclose()


def create_job_events(settings: Settings, same_host: bool) -> JobEvents:
    """Redis when the cache or the sessions are on Redis; else the data directory."""
    for url in (settings.cache.url, settings.sessions.url):
        if urlsplit(url).scheme in ("redis", "rediss", "redis+sentinel"):
            from picscale.tiers.cache.redis import redis_client

            return RedisJobEvents(redis_client(url, timeout=settings.cache.timeout_seconds))
    epoch = EpochFile(settings.data_dir / "job-epoch") if same_host else None
    return LocalJobEvents(epoch)
