"""The embedded cache's invalidation log: the keys each write made stale, in order.

Every write appends its keys in its own transaction, so the log cannot miss a committed
write; each process replays the entries it has not seen (``tiers/cache/local.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, select

from picscale.data.schema import cache_invalidations as log
from picscale.tiers.db import Database, WriteTx


class InvalidationLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, tx: WriteTx, keys: Sequence[str], now: datetime) -> None:
        await tx.conn.execute(insert(log), [{"key": k, "created_at": now} for k in keys])

    async def prune(self, tx: WriteTx, before: datetime) -> None:
        await tx.conn.execute(delete(log).where(log.c.created_at < before))

    async def read_after(self, seq: int | None) -> tuple[int, list[tuple[int, str]]]:
        """The last sequence number and the entries after ``seq`` (None: the last number
        only). On the primary, as the log must miss nothing; while the primary is gone (a
        failover) nothing new can commit, and a replica has the log up to a moment
        before: a consistent snapshot to move on from."""
        async with self._db.read_on_primary("cache", fall_back=True) as conn:
            if seq is None:
                return int((await conn.scalar(select(func.max(log.c.seq)))) or 0), []
            rows = (
                await conn.execute(
                    select(log.c.seq, log.c.key).where(log.c.seq > seq).order_by(log.c.seq)
                )
            ).all()
        entries = [(int(r.seq), str(r.key)) for r in rows]
        return (entries[-1][0] if entries else seq), entries
