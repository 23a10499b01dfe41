"""Choose the edge by ``PICSCALE_CDN_URL``: none, or an HTTP edge."""

from __future__ import annotations

from urllib.parse import urlsplit

from picscale.observability.metrics import Metrics
from picscale.settings import Settings, SettingsError
from picscale.tiers.edge.http import HttpEdge
from picscale.tiers.edge.none import NoEdge
from picscale.tiers.edge.port import Edge


def create_edge(settings: Settings, metrics: Metrics) -> Edge:
    if not settings.cdn.url:
        return NoEdge()
    scheme = urlsplit(settings.cdn.url).scheme
    if scheme not in ("http", "https"):
        raise SettingsError(
            f"PICSCALE_CDN_URL scheme {scheme!r} is not supported: use http(s)://edge-host:port"
        )
    return HttpEdge(
        settings.cdn.url,
        settings.cdn.purge_url or settings.cdn.url,
        metrics=metrics,
        interval=settings.cdn.health_seconds,
    )
