"""Failed log-ins counted per key ("account:<name>", "address:<ip>") in fixed windows
(a global table, on the layout's first cluster: keys are names and addresses)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update

from picscale.data.schema import login_failures
from picscale.tiers.db import Database, WriteTx

KEY_MAX = 200


class LoginFailureRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def counts(self, keys: list[str]) -> list[tuple[str, datetime, int]]:
        """(key, window start, failures) of each key that has failures, on the primary:
        every web process must see the same counts."""
        async with self._db.read_on_primary("auth") as conn:
            rows = (
                await conn.execute(
                    select(login_failures).where(
                        login_failures.c.key.in_([k[:KEY_MAX] for k in keys])
                    )
                )
            ).all()
        return [(row.key, row.window_start, row._mapping["count"]) for row in rows]

    async def count(self, tx: WriteTx, key: str, now: datetime, window: timedelta) -> None:
        """One more failure for ``key``: a new window once the last one has ended."""
        key = key[:KEY_MAX]
        row = (
            await tx.conn.execute(
                select(login_failures.c.window_start).where(login_failures.c.key == key)
            )
        ).first()
        if row is None:
            await tx.conn.execute(insert(login_failures).values(key=key, window_start=now, count=1))
        elif row.window_start + window <= now:
            await tx.conn.execute(
                update(login_failures)
                .where(login_failures.c.key == key)
                .values(window_start=now, count=1)
            )
        else:
            await tx.conn.execute(
                update(login_failures)
                .where(login_failures.c.key == key)
                .values(count=login_failures.c.count + 1)
            )

    async def clear(self, tx: WriteTx, key: str) -> None:
        await tx.conn.execute(delete(login_failures).where(login_failures.c.key == key[:KEY_MAX]))
