"""Recent traffic by logical shard (global): what ``shards status`` calls hot."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from picscale.data.schema import shard_traffic
from picscale.tiers.db import Database

WINDOW_MINUTES = 5


async def record_traffic(home: Database, counts: Counter[tuple[int, bool]]) -> None:
    """Add a process's counts (``(shard, is_write) -> n``) to this minute's rows."""
    minute = int(time.time() // 60)
    per_shard: dict[int, list[int]] = {}
    for (shard, is_write), n in counts.items():
        per_shard.setdefault(shard, [0, 0])[1 if is_write else 0] += n
    module: Any = postgresql if home.dialect == "postgresql" else sqlite
    async with home.write() as tx:
        for shard in sorted(per_shard):
            reads, writes = per_shard[shard]
            stmt = module.insert(shard_traffic).values(
                shard=shard, minute=minute, reads=reads, writes=writes
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["shard", "minute"],
                set_={
                    "reads": shard_traffic.c.reads + reads,
                    "writes": shard_traffic.c.writes + writes,
                },
            )
            await tx.conn.execute(stmt)
        # the window is all that is ever read: older minutes go
        await tx.conn.execute(shard_traffic.delete().where(shard_traffic.c.minute < minute - 60))


async def recent_traffic(home: Database, minutes: int = WINDOW_MINUTES) -> dict[int, int]:
    """Reads and writes by logical shard over the last ``minutes``, busiest first."""
    since = int(time.time() // 60) - minutes + 1
    async with home.read_on_primary("shards") as conn:
        rows = (
            await conn.execute(
                select(
                    shard_traffic.c.shard,
                    func.sum(shard_traffic.c.reads + shard_traffic.c.writes).label("hits"),
                )
                .where(shard_traffic.c.minute >= since)
                .group_by(shard_traffic.c.shard)
            )
        ).all()
    return dict(sorted(((r.shard, int(r.hits)) for r in rows), key=lambda x: -x[1]))
