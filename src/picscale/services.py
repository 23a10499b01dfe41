"""Wiring: the tiers chosen by settings, and the domain services on top of them.

Both the web app and the worker are built from here; nothing is created at import time.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from picscale.domain.photos import Photos
from picscale.domain.social import Social
from picscale.domain.users import LoginThrottle, Users
from picscale.ids import IdGenerator
from picscale.observability.metrics import Metrics
from picscale.settings import Settings
from picscale.tiers.cache import Cache, create_cache
from picscale.tiers.cache.factory import check_cache_url
from picscale.tiers.db.factory import check_database_urls, create_shards
from picscale.tiers.db.map_store import check_map_url
from picscale.tiers.db.read_your_writes import Sticking
from picscale.tiers.db.shards import Shards
from picscale.tiers.edge import Edge, create_edge
from picscale.tiers.edge.factory import check_edge_urls
from picscale.tiers.events import JobEvents, create_job_events
from picscale.tiers.queue import JobQueue, create_job_queue
from picscale.tiers.queue.factory import check_queue_url
from picscale.tiers.sessions import SessionStore, create_session_store
from picscale.tiers.sessions.factory import check_session_url
from picscale.tiers.storage import MediaStore, create_media_store
from picscale.tiers.storage.factory import check_storage_url
from picscale.tiers.timelines import TimelineStore, create_timelines


@dataclass(slots=True)
class Services:
    settings: Settings
    metrics: Metrics
    shards: Shards  # the clusters of the shard layout, and the map routing to them
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
    timelines: TimelineStore  # the home feed's, filled by fan-out

    _started: bool = False
    _node_lease: Any = None

    async def start(self, *, mint_ids: bool = True) -> None:
        """Load the shard map (and follow it), and hold an id node number: what every
        process does before it serves or works. ``mint_ids`` False for tools that
        only read."""
        if self._started:
            return
        from picscale.data.id_nodes import NodeLease
        from picscale.tiers.db.map_store import create_map_store

        store = create_map_store(self.settings.shards.map_url, self.shards.home)
        await self.shards.start(store)
        if mint_ids:
            holder = f"{socket.gethostname()}:{os.getpid()}"
            self._node_lease = NodeLease(self.shards.home, self.ids, holder)
            await self._node_lease.start()
        self._started = True

    async def close(self) -> None:
        if self._node_lease is not None:
            await self._node_lease.stop()
        await self.edge.close()
        await self.events.close()
        await self.queue.close()
        await self.cache.close()
        await self.storage.close()
        await self.timelines.close()
        await self.shards.dispose()


def check_tier_urls(settings: Settings) -> None:
    """Every tier's URL read as its factory will read it, opening nothing: a command
    checks them before it starts anything, so that a malformed one stops it with one
    line (a SettingsError naming the variable and the forms it takes)."""
    check_database_urls(settings)
    check_map_url(settings.shards.map_url)
    check_cache_url(settings.cache.url)
    check_session_url(settings.sessions.url)
    check_queue_url(settings.queue.url)
    check_storage_url(settings.resolved_storage_url)
    check_edge_urls(settings)


def build_services(settings: Settings, metrics: Metrics | None = None) -> Services:
    check_tier_urls(settings)
    metrics = metrics or Metrics()
    shards = create_shards(settings, metrics)
    cache = create_cache(settings, shards, metrics)
    storage = create_media_store(settings)
    queue = create_job_queue(settings, shards)
    ids = IdGenerator(settings.shards.logical)
    edge = create_edge(settings, metrics)
    timelines = create_timelines(settings, shards)
    throttle = LoginThrottle(
        shards,
        per_account=settings.login.failures_per_account,
        per_address=settings.login.failures_per_address,
        window=timedelta(seconds=settings.login.window_seconds),
    )
    photos = Photos(
        shards,
        cache,
        storage,
        queue,
        ids,
        edge,
        max_upload_bytes=settings.photos.max_upload_bytes,
        max_pixels=settings.photos.max_pixels,
    )
    sessions = create_session_store(settings, shards)
    return Services(
        settings=settings,
        metrics=metrics,
        shards=shards,
        cache=cache,
        sessions=sessions,
        queue=queue,
        storage=storage,
        ids=ids,
        users=Users(shards, cache, ids, throttle),
        photos=photos,
        social=Social(
            shards, cache, photos, queue, ids, timelines, timeline_max=settings.feed.timeline_max
        ),
        timelines=timelines,
        events=create_job_events(settings, same_host=shards.dialect == "sqlite"),
        edge=edge,
        sticking=Sticking(
            shards,
            sessions.update,
            seconds=settings.database.sticky_seconds,
            metrics=metrics,
        ),
    )
