"""Counters of hot rows, split over slots (a celebrity's follower count).

One row per event would make every follow of a celebrity wait for the one before it to
commit (a row lock held for a whole transaction). Instead an increment goes to one of
``slots`` rows, picked at random, and a read sums them: concurrent increments meet on
the same row only one time in ``slots``. ``slots=1`` is the single-row counter (the
benchmark's baseline).
"""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from picscale.data.schema import user_counters, users
from picscale.tiers.db import WriteTx


class FollowerCounter:
    def __init__(self, dialect: str, slots: int) -> None:
        self._module: Any = postgresql if dialect == "postgresql" else sqlite
        self._slots = max(1, slots)

    async def add(self, tx: WriteTx, user_id: int, delta: int) -> None:
        slot = random.randrange(self._slots)
        stmt = self._module.insert(user_counters).values(
            user_id=user_id, slot=slot, followers=delta
        )
        await tx.conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["user_id", "slot"],
                set_={"followers": user_counters.c.followers + delta},
            )
        )


def followers_total(user_id: int) -> Any:
    """A user's follower count as a scalar subquery: the row's own count (from before
    the slots) plus every slot."""
    slots = (
        select(func.coalesce(func.sum(user_counters.c.followers), 0))
        .where(user_counters.c.user_id == user_id)
        .scalar_subquery()
    )
    base = select(users.c.follower_count).where(users.c.id == user_id).scalar_subquery()
    return func.coalesce(base, 0) + slots
