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
from collections.abc import Iterator
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
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
            "Cache hits, misses, loads (stale_load: read on a replica while the primary was"
            " gone, not stored) and invalidations",
            ["event"],
            registry=r,
        )
        self.cache_load_seconds = Histogram(
            "picscale_cache_load_seconds",
            "Time to load what the cache missed from the database",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_store = Gauge(
            "picscale_cache_store",
            "Figures of the cache store itself, read when scraped: evictions, expirations, "
            "memory_bytes, max_memory_bytes, server_hits, server_misses (Redis INFO, shared "
            "by all processes), entries, near_entries (this process)",
            ["figure"],
            multiprocess_mode="mostrecent",
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
        self.dead_jobs = Gauge(
            "picscale_queue_dead_jobs",
            "Jobs that ran out of attempts (the dead-letter queue; sampled by the worker)",
            multiprocess_mode="max",
            registry=r,
        )
        self.jobs_in_flight = Gauge(
            "picscale_jobs_in_flight",
            "Jobs being run now",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.job_queueing_delay = Histogram(
            "picscale_job_queueing_delay_seconds",
            "From a job being queued (or due again) to a worker starting it",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.workers = Gauge(
            "picscale_autoscale_workers",
            "Worker processes the autoscaler runs",
            multiprocess_mode="max",
            registry=r,
        )
        self.autoscale_decisions = Counter(
            "picscale_autoscale_decisions_total",
            "Autoscaler decisions by direction (up, down) and reason",
            ["direction", "reason"],
            registry=r,
        )
        self.edge_up = Gauge(
            "picscale_edge_up",
            "1 while the CDN edge answers its health check and web processes hand out "
            "its URLs, else 0 (the highest of the live processes)",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.edge_switches = Counter(
            "picscale_edge_switches_total",
            "Switches of media and static URLs between the edge and the origin",
            ["to"],
            registry=r,
        )
        self.edge_purges = Counter(
            "picscale_edge_purges_total",
            "Purges by surrogate key sent to the edge, by outcome (ok, failed)",
            ["outcome"],
            registry=r,
        )

        # Hot-path events are added up in plain dicts and written to the metrics above
        # by ``flush`` (about once a second, and before every scrape): in multiprocess
        # mode each prometheus-client increment is a locked write to a shared file,
        # which would otherwise cost a third of a cached read.
        self._counts: defaultdict[tuple[Any, tuple[str, ...]], float] = defaultdict(float)
        self._histograms: dict[tuple[Any, tuple[str, ...]], list[float]] = {}
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
        self._observe(self.latency, (method, route), seconds)

    def _observe(self, histogram: Histogram, labels: tuple[str, ...], seconds: float) -> None:
        sums = self._histograms.get((histogram, labels))
        if sums is None:  # per bucket counts (not cumulative), then the sum
            sums = self._histograms[(histogram, labels)] = [0.0] * (len(self._bounds) + 2)
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

    def cache_load(self, seconds: float) -> None:
        self._observe(self.cache_load_seconds, (), seconds)

    def cache_store_figures(self, figures: dict[str, float]) -> None:
        for figure, value in figures.items():
            self._child(self.cache_store, (figure,)).set(value)

    def flush(self) -> None:
        """Write what was added up since the last flush into the exported metrics."""
        counts, self._counts = self._counts, defaultdict(float)
        for (metric, labels), amount in counts.items():
            self._child(metric, labels).inc(amount)
        histograms, self._histograms = self._histograms, {}
        for (histogram, labels), sums in histograms.items():
            child = self._child(histogram, labels) if labels else histogram
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
        source = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            source = CollectorRegistry()
            multiprocess.MultiProcessCollector(source)  # type: ignore[no-untyped-call]
        out = CollectorRegistry(auto_describe=False)
        out.register(_WithHitRatio(source))
        return generate_latest(out), CONTENT_TYPE_LATEST


class _WithHitRatio(Collector):
    """Every metric of ``source``, and the cache hit ratio worked out from its counters
    (over all processes, since they started)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        hits = misses = 0.0
        for family in self._source.collect():
            if family.name == "picscale_cache_events":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        event = sample.labels.get("event")
                        hits += sample.value if event == "hit" else 0.0
                        misses += sample.value if event == "miss" else 0.0
            yield family
        ratio = GaugeMetricFamily(
            "picscale_cache_hit_ratio",
            "Cache hits over hits and misses, all processes, since they started",
        )
        ratio.add_metric([], hits / (hits + misses) if hits + misses else 0.0)
        yield ratio
