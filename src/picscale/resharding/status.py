"""``picscale shards status``: where the logical shards are, how much each cluster holds
(rows and bytes of the sharded tables), the hottest logical shards by recent traffic, and
the move under way if any."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from picscale.data.schema import SHARDED
from picscale.data.traffic import WINDOW_MINUTES, recent_traffic
from picscale.ids import MAX_SHARD, SEQUENCE_BITS
from picscale.resharding.records import MoveRecord, move_under_way
from picscale.tiers.db.database import Database
from picscale.tiers.db.shard_map import ShardMap, ShardRange

if TYPE_CHECKING:
    from picscale.tiers.db.map_store import MapStore

HOTTEST = 10


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    shards: int  # logical shards the map gives it
    rows: int  # rows of the sharded tables it holds (a move's copy included)
    bytes: int  # their size on disk (tables and indexes; the file on SQLite)
    ranges: tuple[ShardRange, ...]


@dataclass(frozen=True)
class HotShard:
    shard: int
    cluster: str
    hits: int  # reads + writes over the window


@dataclass(frozen=True)
class ShardStats:
    """Load by logical shard: what a rebalance spreads."""

    rows: dict[int, int] = field(default_factory=dict)  # on the cluster the map names
    traffic: dict[int, int] = field(default_factory=dict)  # reads + writes, recent


@dataclass(frozen=True)
class Status:
    map: ShardMap | None
    clusters: tuple[ClusterStatus, ...]
    hottest: tuple[HotShard, ...]
    move: MoveRecord | None
    stats: ShardStats
    window_minutes: int = WINDOW_MINUTES


async def shard_rows(db: Database) -> dict[int, int]:
    """Rows of every sharded table on this cluster, by logical shard."""
    out: dict[int, int] = {}
    async with db.read_on_primary("shards") as conn:
        for table, column in SHARDED.items():
            shard = f"(({column} >> {SEQUENCE_BITS}) & {MAX_SHARD})"
            rows = await conn.execute(
                text(f"SELECT {shard} AS shard, count(*) AS n FROM {table} GROUP BY {shard}")
            )
            for row in rows:
                out[int(row.shard)] = out.get(int(row.shard), 0) + int(row.n)
    return out


async def cluster_bytes(db: Database) -> int:
    if db.dialect == "postgresql":
        async with db.read_on_primary("shards") as conn:
            size = await conn.scalar(
                text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "WHERE c.relname = ANY(:tables) AND c.relkind = 'r' "
                    "AND c.relnamespace = current_schema()::regnamespace"
                ),
                {"tables": list(SHARDED)},
            )
        return int(size or 0)
    path = db.engine.url.database
    if not path or path == ":memory:":
        return 0
    files = [Path(path), Path(f"{path}-wal")]
    return sum(f.stat().st_size for f in files if f.exists())


async def shard_status(
    clusters: Mapping[str, Database], global_db: Database, store: MapStore
) -> Status:
    current = await store.load()
    names = list(clusters)
    rows, sizes = await asyncio.gather(
        asyncio.gather(*(shard_rows(db) for db in clusters.values())),
        asyncio.gather(*(cluster_bytes(db) for db in clusters.values())),
    )
    traffic = await recent_traffic(global_db)
    move = await move_under_way(global_db)
    per_cluster = current.shards_per_cluster() if current else {}
    owned: dict[int, int] = {}
    for name, counts in zip(names, rows, strict=True):
        for shard, n in counts.items():
            if current is None or current.cluster_of(shard) == name:
                owned[shard] = owned.get(shard, 0) + n
    table = tuple(
        ClusterStatus(
            name=name,
            shards=per_cluster.get(name, 0),
            rows=sum(counts.values()),
            bytes=size,
            ranges=tuple(current.ranges_of(name)) if current else (),
        )
        for name, counts, size in zip(names, rows, sizes, strict=True)
    )
    hottest = tuple(
        HotShard(shard, current.cluster_of(shard) if current else "?", hits)
        for shard, hits in list(traffic.items())[:HOTTEST]
        if hits > 0
    )
    return Status(current, table, hottest, move, ShardStats(owned, dict(traffic)))


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _ranges(ranges: tuple[ShardRange, ...], most: int = 6) -> str:
    if not ranges:
        return "-"
    parts = [f"{r.first}-{r.last}" if r.first != r.last else str(r.first) for r in ranges]
    more = f" (+{len(parts) - most} more)" if len(parts) > most else ""
    return ",".join(parts[:most]) + more


def format_status(status: Status) -> str:
    lines = []
    if status.map is None:
        lines.append("shard map: none published yet (the service writes v1 when it starts)")
    else:
        lines.append(f"shard map v{status.map.version}: {status.map.logical} logical shards")
    lines.append(f"{'cluster':<10} {'shards':>6} {'rows':>12} {'bytes':>10}  ranges")
    for c in status.clusters:
        lines.append(
            f"{c.name:<10} {c.shards:>6} {c.rows:>12,} {human_bytes(c.bytes):>10}  "
            f"{_ranges(c.ranges)}"
        )
    total = sum(status.stats.traffic.values())
    if status.hottest:
        lines.append(f"hottest shards (reads+writes, last {status.window_minutes} minutes):")
        for hot in status.hottest:
            share = 100 * hot.hits / total if total else 0.0
            lines.append(
                f"  shard {hot.shard:>5} on {hot.cluster:<10} {hot.hits:>10,}  {share:5.1f}%"
            )
    else:
        lines.append(f"hottest shards: no traffic in the last {status.window_minutes} minutes")
    if status.move is None:
        lines.append("no move under way")
    else:
        m = status.move
        lines.append(
            f"{m.describe()} (started {m.started_at:%Y-%m-%d %H:%M:%S}Z)"
            + (f": {m.error}" if m.error else "")
        )
    return "\n".join(lines)
