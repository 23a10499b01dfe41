"""Wiring: the tiers chosen by settings, and the domain services on top of them.

Both the web app and the worker are built from here; nothing is created at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from picscale.domain.photos import Photos
from picscale.domain.social import Social
from picscale.domain.users import LoginThrottle, Users
from picscale.ids import IdGenerator
from picscale.observability.metrics import Metrics
from picscale.settings import Settings
from picscale.tiers.cache import Cache, create_cache
from picscale.tiers.db import Database, create_database
from picscale.tiers.db.read_your_writes import Sticking
from picscale.tiers.edge import Edge, create_edge
from picscale.tiers.events import JobEvents, create_job_events
from picscale.tiers.queue import JobQueue, create_job_queue
from picscale.tiers.sessions import SessionStore, create_session_store
from picscale.tiers.storage import MediaStore, create_media_store


@dataclass(slots=True)
class Services:
    settings: Settings
    metrics: Metrics
    db: Database
    cache: Cache
    sessions: SessionStore
    queue: JobQueue
    storage: MediaStore
    ids: IdGenerator
    users: Users
    photos: Photos
    social: Social
    events: JobEvents
    edge: Edge
    sticking: Sticking  # read-your-writes: a user's last write, kept in their session

    async def close(self) -> None:
        await self.edge.close()
        await self.events.close()
        await self.queue.close()
        await self.cache.close()
        await self.storage.close()
        await self.db.dispose()


def build_services(settings: Settings, metrics: Metrics | None = None) -> Services:
    metrics = metrics or Metrics()
    db = create_database(settings, metrics)
    cache = create_cache(settings, db, metrics)
    storage = create_media_store(settings)
    queue = create_job_queue(settings, db)
    ids = IdGenerator(settings.shards.logical)
    edge = create_edge(settings, metrics)
    throttle = LoginThrottle(
        db,
        per_account=settings.login.failures_per_account,
        per_address=settings.login.failures_per_address,
        window=timedelta(seconds=settings.login.window_seconds),
    )
    photos = Photos(
        db,
        cache,
        storage,
        queue,
        ids,
        edge,
        max_upload_bytes=settings.photos.max_upload_bytes,
        max_pixels=settings.photos.max_pixels,
    )
    sessions = create_session_store(settings, db)
    return Services(
        settings=settings,
        metrics=metrics,
        db=db,
        cache=cache,
        sessions=sessions,
        queue=queue,
        storage=storage,
        ids=ids,
        users=Users(db, cache, ids, throttle),
        photos=photos,
        social=Social(db, cache, photos, feed_ttl=settings.feed.cache_seconds),
        events=create_job_events(settings, same_host=db.dialect == "sqlite"),
        edge=edge,
        sticking=Sticking(
            db,
            sessions.update,
            seconds=settings.database.sticky_seconds,
            metrics=metrics,
        ),
    )
