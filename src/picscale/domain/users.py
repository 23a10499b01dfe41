"""Accounts: sign-up, password checks with argon2id, profiles, and login throttling."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from picscale.domain.errors import Conflict, Invalid, TooManyRequests, Unauthorized
from picscale.domain.records import ProfileRecord, UserRecord
from picscale.ids import IdGenerator
from picscale.tiers.cache import Cache
from picscale.tiers.cache.port import profile_key
from picscale.tiers.db import Database, is_unique_violation
from picscale.tiers.db.schema import login_failures, users, utcnow

USERNAME = re.compile(r"^[a-z0-9_]{3,32}$")
PASSWORD_MIN, PASSWORD_MAX = 8, 256
DISPLAY_NAME_MAX = 64


def normalise_username(username: str) -> str:
    return username.strip().lower()


class LoginThrottle:
    """Failed logins counted per account and per client address in fixed windows.

    Kept in the database so that every web process sees the same counts.
    """

    def __init__(
        self, db: Database, *, per_account: int, per_address: int, window: timedelta
    ) -> None:
        self._db = db
        self._limits = {"account": per_account, "address": per_address}
        self._window = window

    def _keys(self, username: str, address: str) -> dict[str, str]:
        return {"account": f"account:{username}"[:200], "address": f"address:{address}"[:200]}

    async def check(self, username: str, address: str) -> None:
        keys = self._keys(username, address)
        now = utcnow()
        async with self._db.read_on_primary("auth") as conn:
            rows = (
                await conn.execute(
                    select(login_failures).where(login_failures.c.key.in_(keys.values()))
                )
            ).all()
        for row in rows:
            kind = row.key.split(":", 1)[0]
            ends = row.window_start + self._window
            if ends > now and row._mapping["count"] >= self._limits[kind]:
                retry_after = max(1, math.ceil((ends - now).total_seconds()))
                raise TooManyRequests(
                    f"too many failed log-ins for this {kind}; try again in {retry_after} s",
                    retry_after,
                )

    async def record_failure(self, username: str, address: str) -> None:
        now = utcnow()
        async with self._db.write() as tx:
            for key in self._keys(username, address).values():
                row = (
                    await tx.conn.execute(
                        select(login_failures.c.window_start).where(login_failures.c.key == key)
                    )
                ).first()
                if row is None:
                    await tx.conn.execute(
                        insert(login_failures).values(key=key, window_start=now, count=1)
                    )
                elif row.window_start + self._window <= now:
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

    async def clear_account(self, username: str) -> None:
        async with self._db.write() as tx:
            await tx.conn.execute(
                delete(login_failures).where(login_failures.c.key == f"account:{username}"[:200])
            )


def _user(row: object) -> UserRecord:
    return UserRecord(
        id=row.id,  # type: ignore[attr-defined]
        username=row.username,  # type: ignore[attr-defined]
        display_name=row.display_name,  # type: ignore[attr-defined]
        created_at=row.created_at,  # type: ignore[attr-defined]
    )


class Users:
    def __init__(
        self, db: Database, cache: Cache, ids: IdGenerator, throttle: LoginThrottle
    ) -> None:
        self._db = db
        self._cache = cache
        self._ids = ids
        self._throttle = throttle
        self._hasher = PasswordHasher()  # argon2id with the library's recommended costs
        self._dummy_hash: str | None = None

    async def sign_up(self, username: str, password: str, display_name: str | None) -> UserRecord:
        name = normalise_username(username)
        if not USERNAME.match(name):
            raise Invalid("username must be 3 to 32 characters: letters, digits or underscore")
        if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
            raise Invalid(f"password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long")
        display = (display_name or name).strip()
        if not display or len(display) > DISPLAY_NAME_MAX:
            raise Invalid(f"display name must be 1 to {DISPLAY_NAME_MAX} characters")
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        user_id = self._ids.next_id(self._ids.random_shard())
        now = utcnow()
        try:
            async with self._db.write() as tx:
                await tx.conn.execute(
                    insert(users).values(
                        id=user_id,
                        username=name,
                        display_name=display,
                        password_hash=password_hash,
                        created_at=now,
                    )
                )
                await self._cache.invalidate(tx, [profile_key(name)])  # a cached "not found"
        except IntegrityError as exc:
            if is_unique_violation(exc):
                raise Conflict(f"the username {name!r} is taken; choose another") from None
            raise
        return UserRecord(id=user_id, username=name, display_name=display, created_at=now)

    async def authenticate(self, username: str, password: str, address: str) -> UserRecord:
        name = normalise_username(username)
        await self._throttle.check(name, address)
        # on the primary: a log-in right after sign-up must find the new account
        async with self._db.read_on_primary("auth") as conn:
            row = (await conn.execute(select(users).where(users.c.username == name))).first()
        ok = await asyncio.to_thread(
            self._verify, row.password_hash if row is not None else None, password[:PASSWORD_MAX]
        )
        if row is None or not ok:
            await self._throttle.record_failure(name, address)
            raise Unauthorized("wrong username or password")
        await self._throttle.clear_account(name)
        return _user(row)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        if password_hash is None:
            # spend the same time on unknown names: response time tells no usernames apart
            if self._dummy_hash is None:
                self._dummy_hash = self._hasher.hash("not-a-real-password")
            password_hash = self._dummy_hash
            with contextlib.suppress(VerificationError, InvalidHashError):
                self._hasher.verify(password_hash, password)
            return False
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def get(self, user_id: int) -> UserRecord | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.id == user_id))).first()
        return _user(row) if row is not None else None

    async def profile(self, username: str) -> ProfileRecord | None:
        name = normalise_username(username)
        if not USERNAME.match(name):
            return None

        async def load() -> ProfileRecord | None:
            async with self._db.read() as conn:
                row = (await conn.execute(select(users).where(users.c.username == name))).first()
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

        return await self._cache.get_or_load(profile_key(name), load)

    async def update_profile(self, user: UserRecord, display_name: str) -> ProfileRecord:
        display = display_name.strip()
        if not display or len(display) > DISPLAY_NAME_MAX:
            raise Invalid(f"display name must be 1 to {DISPLAY_NAME_MAX} characters")
        async with self._db.write() as tx:
            await tx.conn.execute(
                update(users).where(users.c.id == user.id).values(display_name=display)
            )
            await self._cache.invalidate(tx, [profile_key(user.username)])
        profile = await self.profile(user.username)
        assert profile is not None
        return profile
