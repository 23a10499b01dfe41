"""Choose the edge by ``PICSCALE_CDN_URL``: none, or an HTTP edge."""

from __future__ import annotations

from picscale.observability.metrics import Metrics
from picscale.settings import Settings, checked_url
from picscale.tiers.edge.http import HttpEdge
from picscale.tiers.edge.none import NoEdge
from picscale.tiers.edge.port import Edge


def check_edge_urls(settings: Settings) -> None:
    for variable, url in (
        ("PICSCALE_CDN_URL", settings.cdn.url),
        ("PICSCALE_CDN_PURGE_URL", settings.cdn.purge_url),
    ):
        if url:
            checked_url(variable, url, ("http", "https"), "http(s)://edge-host:port, or nothing")


def create_edge(settings: Settings, metrics: Metrics) -> Edge:
    check_edge_urls(settings)
    if not settings.cdn.url:
        return NoEdge()
    return HttpEdge(
        settings.cdn.url,
        settings.cdn.purge_url or settings.cdn.url,
        metrics=metrics,
        interval=settings.cdn.health_seconds,
    )
