"""Accounts: sign-up, password checks with argon2id, profiles, and login throttling."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from picscale.clock import utcnow
from picscale.data.login_failures import LoginFailureRepository
from picscale.data.users import UserRepository
from picscale.domain.cache_keys import profile_key
from picscale.domain.errors import Conflict, Invalid, TooManyRequests, Unauthorized
from picscale.domain.records import ProfileRecord, UserRecord
from picscale.domain.text import refuse_nul
from picscale.ids import IdGenerator
from picscale.tiers.cache import Cache
from picscale.tiers.db.shards import Shards

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
        self, shards: Shards, *, per_account: int, per_address: int, window: timedelta
    ) -> None:
        self._db = shards.home  # a global table
        self._failures = LoginFailureRepository(self._db)
        self._limits = {"account": per_account, "address": per_address}
        self._window = window

    @staticmethod
    def _keys(username: str, address: str) -> list[str]:
        return [f"account:{username}", f"address:{address}"]

    async def check(self, username: str, address: str) -> None:
        now = utcnow()
        for key, window_start, count in await self._failures.counts(self._keys(username, address)):
            kind = key.split(":", 1)[0]
            ends = window_start + self._window
            if ends > now and count >= self._limits[kind]:
                retry_after = max(1, math.ceil((ends - now).total_seconds()))
                raise TooManyRequests(
                    f"too many failed log-ins for this {kind}; try again in {retry_after} s",
                    retry_after,
                )

    async def record_failure(self, username: str, address: str) -> None:
        now = utcnow()
        async with self._db.write() as tx:
            for key in self._keys(username, address):
                await self._failures.count(tx, key, now, self._window)

    async def clear_account(self, username: str) -> None:
        async with self._db.write() as tx:
            await self._failures.clear(tx, f"account:{username}")


class Users:
    def __init__(
        self, shards: Shards, cache: Cache, ids: IdGenerator, throttle: LoginThrottle
    ) -> None:
        self._shards = shards
        self._users = UserRepository(shards)
        self._cache = cache
        self._ids = ids
        self._throttle = throttle
        self._hasher = PasswordHasher()  # argon2id with the library's recommended costs
        self._dummy_hash: str | None = None

    async def sign_up(self, username: str, password: str, display_name: str | None) -> UserRecord:
        refuse_nul(username=username, password=password, display_name=display_name)
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
        # the global index decides who gets the name (its primary key, whatever shard
        # each contender lands on); the account follows on the user's own shard
        if not await self._users.reserve_name(name, user_id, now):
            raise Conflict(f"the username {name!r} is taken; choose another")
        try:
            async with self._shards.write(user_id) as tx:
                created = await self._users.insert(
                    tx,
                    user_id=user_id,
                    username=name,
                    display_name=display,
                    password_hash=password_hash,
                    created_at=now,
                )
                if not created:
                    raise Conflict(f"the username {name!r} is taken; choose another")
                await self._cache.invalidate(tx, [profile_key(name)])  # a cached "not found"
        except BaseException:
            await self._users.release_name(name, user_id)
            raise
        return UserRecord(id=user_id, username=name, display_name=display, created_at=now)

    async def authenticate(self, username: str, password: str, address: str) -> UserRecord:
        refuse_nul(username=username, password=password)
        name = normalise_username(username)
        await self._throttle.check(name, address)
        found = await self._users.credentials(name)
        ok = await asyncio.to_thread(
            self._verify, found[1] if found is not None else None, password[:PASSWORD_MAX]
        )
        if found is None or not ok:
            await self._throttle.record_failure(name, address)
            raise Unauthorized("wrong username or password")
        await self._throttle.clear_account(name)
        return found[0]

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
        return await self._users.get(user_id)

    async def profile(self, username: str) -> ProfileRecord | None:
        name = normalise_username(username)
        if not USERNAME.match(name):
            return None

        async def load() -> ProfileRecord | None:
            return await self._users.profile(name)

        return await self._cache.get_or_load(profile_key(name), load)

    async def update_profile(self, user: UserRecord, display_name: str) -> ProfileRecord:
        refuse_nul(display_name=display_name)
        display = display_name.strip()
        if not display or len(display) > DISPLAY_NAME_MAX:
            raise Invalid(f"display name must be 1 to {DISPLAY_NAME_MAX} characters")
        async with self._shards.write(user.id) as tx:
            await self._users.set_display_name(tx, user.id, display)
            await self._cache.invalidate(tx, [profile_key(user.username)])
        profile = await self.profile(user.username)
        assert profile is not None
        return profile
