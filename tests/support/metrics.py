"""A server's Prometheus metrics, read from its ``/metrics`` as a scraper would."""

from __future__ import annotations

import re

import httpx

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
