"""Prometheus metrics, safe with several processes.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (``picscale serve`` sets it for its children
before they start), prometheus-client keeps each process's values in files there and
``/metrics`` adds them up.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections import defaultdict
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
            buckets=LATENCY_BUCKETS,
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
            "picscale_db_queries_total",
            "Database statements by intent (read, write, check), role and host",
            ["intent", "role", "host"],
            registry=r,
        )
        self.db_replica_events = Counter(
            "picscale_db_replica_events_total",
            "Replica routing: primary_for_lag (no caught-up replica), sticky (a request "
            "bound to its user's last write)",
            ["event", "host"],
            registry=r,
        )
        self.replica_lag_seconds = Gauge(
            "picscale_db_replica_lag_seconds",
            "Replay lag per replica, as last checked",
            ["replica"],
            multiprocess_mode="max",
            registry=r,
        )
        self.replica_lag_bytes = Gauge(
            "picscale_db_replica_lag_bytes",
            "WAL bytes a replica has yet to replay, as last checked",
            ["replica"],
            multiprocess_mode="max",
            registry=r,
        )
        self.queue_depth = Gauge(
            "picscale_queue_depth",
            "Jobs waiting to run (sampled by the worker)",
            multiprocess_mode="max",
            registry=r,
        )

        # Hot-path events are added up in plain dicts and written to the metrics above
        # by ``flush`` (about once a second, and before every scrape): in multiprocess
        # mode each prometheus-client increment is a locked write to a shared file,
        # which would otherwise cost a third of a cached read.
        self._counts: defaultdict[tuple[Any, tuple[str, ...]], float] = defaultdict(float)
        self._latency: dict[tuple[str, str], list[float]] = {}
        self._bounds = LATENCY_BUCKETS
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._counts[(self.requests, (method, route, str(status)))] += 1
        sums = self._latency.get((method, route))
        if sums is None:  # per bucket counts (not cumulative), then the sum
            sums = self._latency[(method, route)] = [0.0] * (len(self._bounds) + 2)
        sums[bisect_left(self._bounds, seconds)] += 1
        sums[-1] += seconds

    def count_query(self, intent: str, role: str = "primary", host: str = "") -> None:
        self._counts[(self.db_queries, (intent, role, host))] += 1

    def replica_event(self, event: str, host: str) -> None:
        self._counts[(self.db_replica_events, (event, host))] += 1

    def replica_lag(self, host: str, seconds: float, lag_bytes: float) -> None:
        self._child(self.replica_lag_seconds, (host,)).set(seconds)
        self._child(self.replica_lag_bytes, (host,)).set(lag_bytes)

    def cache_event(self, event: str, count: int = 1) -> None:
        self._counts[(self.cache, (event,))] += count

    def flush(self) -> None:
        """Write what was added up since the last flush into the exported metrics."""
        counts, self._counts = self._counts, defaultdict(float)
        for (metric, labels), amount in counts.items():
            self._child(metric, labels).inc(amount)
        latency, self._latency = self._latency, {}
        for labels, sums in latency.items():
            child = self._child(self.latency, labels)
            # prometheus-client keeps a histogram as per-bucket counters and a sum
            for index, count in enumerate(sums[:-1]):
                if count:
                    child._buckets[index].inc(count)
            child._sum.inc(sums[-1])

    async def flush_every(self, seconds: float = 1.0) -> None:
        """Run in the background of each process; cancel it to stop (it flushes last)."""
        try:
            while True:
                await asyncio.sleep(seconds)
                self.flush()
        finally:
            self.flush()

    def exposition(self) -> tuple[bytes, str]:
        self.flush()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
