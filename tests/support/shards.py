"""The routing layer over the clusters of some settings, with the even map version 1 set
directly (no map store, no watcher): for tests that build tiers by hand."""

from __future__ import annotations

from picscale.observability.metrics import Metrics
from picscale.settings import Settings
from picscale.tiers.db.factory import create_shards
from picscale.tiers.db.shard_map import ShardMap
from picscale.tiers.db.shards import Shards


def local_shards(settings: Settings, metrics: Metrics | None = None) -> Shards:
    shards = create_shards(settings, metrics or Metrics())
    shards.set_map(ShardMap.even(list(shards.clusters), settings.shards.logical))
    return shards
