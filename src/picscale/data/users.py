"""Users: accounts, their profile counters, and their credentials."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from picscale.data.counters import followers_total
from picscale.data.schema import usernames, users
from picscale.data.statements import insert_new
from picscale.domain.records import ProfileRecord, UserRecord
from picscale.tiers.db import WriteTx
from picscale.tiers.db.shards import Shards

# a database takes at most some tens of thousands of parameters: bounded IN lists
IN_LIST_MAX = 1000


def _user(row: Any) -> UserRecord:
    return UserRecord(
        id=row.id, username=row.username, display_name=row.display_name, created_at=row.created_at
    )


class UserRepository:
    """A user's row lives on the shard of the user's id; the username index is global
    (on the layout's first cluster), so a name is unique across every cluster."""

    def __init__(self, shards: Shards) -> None:
        self._shards = shards

    async def reserve_name(self, username: str, user_id: int, created_at: datetime) -> bool:
        """Take ``username`` for ``user_id`` in the global index; False if it is taken.
        The primary key decides a race between two sign-ups, whatever their shards."""
        async with self._shards.home.write() as tx:
            result = await tx.conn.execute(
                insert_new(self._shards.dialect, usernames).values(
                    username=username, user_id=user_id, created_at=created_at
                )
            )
        return bool(result.rowcount)

    async def release_name(self, username: str, user_id: int) -> None:
        async with self._shards.home.write() as tx:
            await tx.conn.execute(
                delete(usernames).where(
                    usernames.c.username == username, usernames.c.user_id == user_id
                )
            )

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
        """False when the id or name is in this cluster already (nothing is written)."""
        result = await tx.conn.execute(
            insert_new(self._shards.dialect, users).values(
                id=user_id,
                username=username,
                display_name=display_name,
                password_hash=password_hash,
                created_at=created_at,
            )
        )
        return bool(result.rowcount)

    async def id_of(self, username: str, *, on_primary: bool = False) -> int | None:
        """The id of the user called ``username`` (the global index)."""
        home = self._shards.home
        reading = home.read_on_primary("auth") if on_primary else home.read()
        async with reading as conn:
            found = await conn.scalar(
                select(usernames.c.user_id).where(usernames.c.username == username)
            )
        return int(found) if found is not None else None

    async def get(self, user_id: int) -> UserRecord | None:
        async with self._shards.read(user_id) as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        return _user(row) if row is not None else None

    async def credentials(self, username: str) -> tuple[UserRecord, str] | None:
        """The user and their password hash, on the primaries: a log-in right after
        sign-up must find the new account."""
        user_id = await self.id_of(username, on_primary=True)
        if user_id is None:
            return None
        async with self._shards.read_on_primary(user_id, "auth") as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        return (_user(row), row.password_hash) if row is not None else None

    async def profile(self, username: str) -> ProfileRecord | None:
        user_id = await self.id_of(username)
        if user_id is None:
            return None
        async with self._shards.read(user_id) as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
            if row is None:
                return None
            followers = await conn.scalar(select(followers_total(user_id)))
        return ProfileRecord(
            id=row.id,
            username=row.username,
            display_name=row.display_name,
            photo_count=row.photo_count,
            follower_count=int(followers or 0),
            following_count=row.following_count,
        )

    async def follower_count(self, user_id: int) -> int:
        """On the primary (a job deciding about fan-out): the row's count plus the slots."""
        async with self._shards.read_on_primary(user_id, "jobs") as conn:
            return int(await conn.scalar(select(followers_total(user_id))) or 0)

    async def named(self, username: str) -> tuple[int, str] | None:
        """(id, username) of the user called ``username``."""
        user_id = await self.id_of(username)
        return (user_id, username) if user_id is not None else None

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

    async def count_following(self, tx: WriteTx, follower: int, delta: int) -> None:
        """A follow (+1) or unfollow (-1) by ``follower`` (on the follower's shard)."""
        await tx.conn.execute(
            update(users)
            .where(users.c.id == follower)
            .values(following_count=users.c.following_count + delta)
        )

    async def delete(self, tx: WriteTx, user_id: int) -> None:
        await tx.conn.execute(delete(users).where(users.c.id == user_id))
