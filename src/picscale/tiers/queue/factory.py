"""Choose the queue backend by the scheme of ``PICSCALE_QUEUE_URL``."""

from __future__ import annotations

from urllib.parse import urlsplit

from picscale.settings import Settings, checked_url
from picscale.tiers.db.shards import Shards
from picscale.tiers.queue.port import JobQueue


def check_queue_url(url: str) -> None:
    checked_url(
        "PICSCALE_QUEUE_URL",
        url,
        ("lease", "amqp", "amqps"),
        "lease:// or amqp://user:password@host:5672/vhost (amqps:// with TLS)",
    )


def create_job_queue(settings: Settings, shards: Shards) -> JobQueue:
    check_queue_url(settings.queue.url)
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
    from picscale.tiers.queue.amqp import AmqpQueue

    return AmqpQueue(
        shards,
        settings.queue.url,
        max_attempts=settings.queue.max_attempts,
        max_crashes=settings.queue.max_crashes,
        prefetch=settings.worker.concurrency,
    )
