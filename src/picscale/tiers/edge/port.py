"""The CDN edge port.

``PICSCALE_CDN_URL`` empty: no edge; URLs are origin-relative and purges do nothing.
``http(s)://host:port``: an HTTP cache in front of the origin (the Varnish
configuration Picscale ships in ``tiers/edge/varnish.vcl``, or any edge that takes
``PURGE`` with an ``xkey-purge`` header). Each process checks the edge's own health
endpoint every few seconds and hands out edge URLs only while it answers: when it is
down, pages and the API point at the origin, and switch back when it returns (a log line
and a metric on every switch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol


class EdgeUnavailable(RuntimeError):
    """A purge the edge did not confirm; the caller retries it through the job queue."""


class Edge(Protocol):
    def base_url(self) -> str:
        """What media and static URLs start with now: the edge's URL while it is healthy,
        '' (origin-relative URLs) otherwise."""
        ...

    async def purge(self, keys: Sequence[str]) -> None:
        """Drop every object tagged with any of ``keys``; raises EdgeUnavailable."""
        ...

    async def watch(self, stop: asyncio.Event) -> None:
        """Health-check the edge until ``stop`` is set (run in each serving process)."""
        ...

    async def close(self) -> None: ...
