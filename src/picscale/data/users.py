"""Users: accounts, their profile counters, and their credentials."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from picscale.data.schema import users
from picscale.data.statements import insert_new
from picscale.domain.records import ProfileRecord, UserRecord
from picscale.tiers.db import Database, WriteTx

# a database takes at most some tens of thousands of parameters: bounded IN lists
IN_LIST_MAX = 1000


def _user(row: Any) -> UserRecord:
    return UserRecord(
        id=row.id, username=row.username, display_name=row.display_name, created_at=row.created_at
    )


class UserRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(
        self,
        tx: WriteTx,
        *,
        user_id: int,
        username: str,
        display_name: str,
        password_hash: str,
        created_at: datetime,
    ) -> bool:
        """False when the username is taken (nothing is written)."""
        result = await tx.conn.execute(
            insert_new(self._db.dialect, users).values(
                id=user_id,
                username=username,
                display_name=display_name,
                password_hash=password_hash,
                created_at=created_at,
            )
        )
        return bool(result.rowcount)

    async def get(self, user_id: int) -> UserRecord | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        return _user(row) if row is not None else None

    async def credentials(self, username: str) -> tuple[UserRecord, str] | None:
        """The user and their password hash, on the primary: a log-in right after
        sign-up must find the new account."""
        async with self._db.read_on_primary("auth") as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).first()
        return (_user(row), row.password_hash) if row is not None else None

    async def profile(self, username: str) -> ProfileRecord | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).first()
        if row is None:
            return None
        return ProfileRecord(
            id=row.id,
            username=row.username,
            display_name=row.display_name,
            photo_count=row.photo_count,
            follower_count=row.follower_count,
            following_count=row.following_count,
        )

    async def named(self, username: str) -> tuple[int, str] | None:
        """(id, username) of the user called ``username``."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(users.c.id, users.c.username).where(users.c.username == username)
                )
            ).first()
        return (row.id, row.username) if row is not None else None

    async def lock(self, tx: WriteTx, user_id: int) -> bool:
        """Hold the user's row for the rest of ``tx`` (one account deletion at a time on
        PostgreSQL; SQLite's write transactions are serial anyway). False if it is gone."""
        found = await tx.conn.scalar(
            select(users.c.id).where(users.c.id == user_id).with_for_update()
        )
        return found is not None

    async def set_display_name(self, tx: WriteTx, user_id: int, display_name: str) -> None:
        await tx.conn.execute(
            update(users).where(users.c.id == user_id).values(display_name=display_name)
        )

    async def count_photos(self, tx: WriteTx, user_id: int, delta: int) -> None:
        await tx.conn.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(photo_count=users.c.photo_count + delta)
        )

    async def count_follow(self, tx: WriteTx, follower: int, followee: int, delta: int) -> None:
        """A follow (+1) or unfollow (-1): both users' counters."""
        await tx.conn.execute(
            update(users)
            .where(users.c.id == follower)
            .values(following_count=users.c.following_count + delta)
        )
        await tx.conn.execute(
            update(users)
            .where(users.c.id == followee)
            .values(follower_count=users.c.follower_count + delta)
        )

    async def uncount_follows(
        self, tx: WriteTx, followees: Sequence[int], followers: Sequence[int]
    ) -> dict[int, str]:
        """A departing user's follows gone: their followees lose a follower, their
        followers follow one fewer. Returns the usernames of everyone changed, by id."""
        changed: dict[int, str] = {}
        for ids, column in (
            (followees, users.c.follower_count),
            (followers, users.c.following_count),
        ):
            for start in range(0, len(ids), IN_LIST_MAX):
                rows = await tx.conn.execute(
                    update(users)
                    .where(users.c.id.in_(ids[start : start + IN_LIST_MAX]))
                    .values({column: column - 1})
                    .returning(users.c.id, users.c.username)
                )
                changed.update((r.id, r.username) for r in rows)
        return changed

    async def delete(self, tx: WriteTx, user_id: int) -> None:
        await tx.conn.execute(delete(users).where(users.c.id == user_id))
