"""Job kinds, one module each (``render_version``, ``purge_edge``), and the registry the
worker runs them from: a new kind is a new module and one line in ``handlers``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from picscale.jobs import purge_edge, render_version
from picscale.jobs.handler import JobHandler

if TYPE_CHECKING:
    from picscale.services import Services


def handlers(services: Services, render: render_version.Renderer) -> dict[str, JobHandler]:
    """Every job kind's handler, wired to the tiers it needs; ``render`` runs an image
    pipeline (in the worker's process pool)."""
    kinds: list[JobHandler] = [
        render_version.RenderVersion(
            services.db,
            services.cache,
            services.storage,
            render,
            max_pixels=services.settings.photos.max_pixels,
        ),
        purge_edge.PurgeEdge(services.edge),
    ]
    return {handler.kind: handler for handler in kinds}
