"""Prometheus metrics as a scraper reads them: a server's ``/metrics``, or the exposition
of a ``Metrics`` made in the test's own process."""

from __future__ import annotations

import re
from collections import Counter

import httpx
from prometheus_client.parser import text_string_to_metric_families

from picscale.observability.metrics import Metrics
from tests.support.picscale_server import Server


def cache_events(server: Server) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        match = re.match(r'picscale_cache_events_total\{event="(\w+)"\} ([0-9.e+]+)', line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def metric_values(server: Server, name: str) -> dict[str, float]:
    """``name``'s samples by their label text (``""`` when it has none)."""
    out: dict[str, float] = {}
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        match = re.match(re.escape(name) + r"(?:\{(.*)\})? ([0-9.e+-]+)$", line)
        if match:
            out[match.group(1) or ""] = float(match.group(2))
    return out


def cache_events_of(metrics: Metrics) -> Counter[str]:
    """The cache events one process's ``Metrics`` has counted (what its /metrics says)."""
    body, _ = metrics.exposition()
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "picscale_cache_events_total":
                out[sample.labels["event"]] += int(sample.value)
    return out
