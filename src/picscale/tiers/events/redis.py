"""Job events on Redis: the worker publishes on ``picscale:job:{id}``; each web process
holds one pattern subscription and wakes the streams of that job. Works across hosts."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

CHANNEL = "picscale:job:"
RESUBSCRIBE_MAX_SECONDS = 2.0


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
