"""Choose the queue backend by the scheme of ``PICSCALE_QUEUE_URL``."""

from __future__ import annotations

from urllib.parse import urlsplit

from picscale.settings import Settings, SettingsError
from picscale.tiers.db.shards import Shards
from picscale.tiers.queue.port import JobQueue


def create_job_queue(settings: Settings, shards: Shards) -> JobQueue:
    scheme = urlsplit(settings.queue.url).scheme
    if scheme == "lease":
        from picscale.tiers.epoch import EpochFile
        from picscale.tiers.queue.lease import LeaseQueue

        return LeaseQueue(
            shards,
            lease_seconds=settings.queue.lease_seconds,
            max_attempts=settings.queue.max_attempts,
            max_crashes=settings.queue.max_crashes,
            # processes sharing a SQLite file share a host: a queued job wakes workers
            wakeup=EpochFile(settings.data_dir / "queue-epoch")
            if shards.dialect == "sqlite"
            else None,
        )
    if scheme in ("amqp", "amqps"):
        from picscale.tiers.queue.amqp import AmqpQueue

        return AmqpQueue(
            shards,
            settings.queue.url,
            max_attempts=settings.queue.max_attempts,
            max_crashes=settings.queue.max_crashes,
            prefetch=settings.worker.concurrency,
        )
    raise SettingsError(
        f"PICSCALE_QUEUE_URL scheme {scheme!r} is not supported: "
        "use lease:// or amqp://user:password@host:5672/vhost"
    )
