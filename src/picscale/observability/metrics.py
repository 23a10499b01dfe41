"""Prometheus metrics, safe with several processes.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (``picscale serve`` sets it for its children
before they start), prometheus-client keeps each process's values in files there and
``/metrics`` adds them up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "picscale_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "picscale_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.jobs = Counter(
            "picscale_jobs_total", "Jobs by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.job_duration = Histogram(
            "picscale_job_duration_seconds",
            "Job run time by kind",
            ["kind"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.cache = Counter(
            "picscale_cache_events_total",
            "Cache hits, misses, loads and invalidations",
            ["event"],
            registry=r,
        )
        self.db_queries = Counter(
            "picscale_db_queries_total", "Database statements by intent", ["intent"], registry=r
        )
        self.queue_depth = Gauge(
            "picscale_queue_depth",
            "Jobs waiting to run (sampled by the worker)",
            multiprocess_mode="max",
            registry=r,
        )

    def count_query(self, intent: str) -> None:
        self.db_queries.labels(intent).inc()

    def cache_event(self, event: str, count: int = 1) -> None:
        self.cache.labels(event).inc(count)

    def exposition(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
