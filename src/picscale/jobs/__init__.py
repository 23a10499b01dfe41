"""Job kinds, one module each (``render_version``, ``purge_edge``, ``follow_mirror``,
``drop_followee``, ``fan_out``), and the registry the
worker runs them from: a new kind is a new module and one line in ``handlers``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from picscale.jobs import drop_followee, fan_out, follow_mirror, purge_edge, render_version
from picscale.jobs.handler import JobHandler

if TYPE_CHECKING:
    from picscale.services import Services


def handlers(services: Services, render: render_version.Renderer) -> dict[str, JobHandler]:
    """Every job kind's handler, wired to the tiers it needs; ``render`` runs an image
    pipeline (in the worker's process pool)."""
    kinds: list[JobHandler] = [
        render_version.RenderVersion(
            services.shards,
            services.cache,
            services.storage,
            render,
            max_pixels=services.settings.photos.max_pixels,
        ),
        purge_edge.PurgeEdge(services.edge),
        follow_mirror.FollowMirror(
            services.shards, services.cache, services.settings.shards.counter_slots
        ),
        drop_followee.DropFollowee(services.shards, services.cache),
        fan_out.FanOut(
            services.shards,
            services.timelines,
            services.queue,
            services.ids,
            batch=services.settings.feed.fanout_batch,
            max_followers=services.settings.feed.fanout_max_followers,
        ),
    ]
    return {handler.kind: handler for handler in kinds}
