"""The home feed's timelines: photo ids, newest first, kept per user (fan-out on write).

- ``port``: the ``TimelineStore`` protocol.
- ``redis``: sorted sets in Redis (when the cache is Redis).
- ``table``: rows on the user's own shard (the embedded default).
- ``factory``: ``create_timelines(settings, shards)``.
"""

from picscale.tiers.timelines.factory import create_timelines
from picscale.tiers.timelines.port import TimelineStore, TimelinesUnavailable

__all__ = ["TimelineStore", "TimelinesUnavailable", "create_timelines"]
