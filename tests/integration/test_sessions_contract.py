"""The session store's contract, the same tests over every backend: the ``sessions`` table
(``database://``) on SQLite and on PostgreSQL, a real Redis, and Redis behind Sentinel
(where logins and logouts wait for a replica).

Every ``open_sessions()`` is a store with connections of its own, as another process of
the service (or another web server) would have: a session made through one must be seen
through every other, which is what lets the web tier drop sticky routing.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as redis_sync
from sqlalchemy import insert, select

from picscale.data.schema import sessions, users
from picscale.settings import Settings, load_settings
from picscale.tiers.db import Database
from picscale.tiers.db.migrate import upgrade
from picscale.tiers.sessions import SessionStore, create_session_store
from tests.support.pg import PostgresServer
from tests.support.redis_sentinel import start_sentinel_group
from tests.support.redis_server import start_redis
from tests.support.shards import local_shards
from tests.support.waiting import async_wait_until

SAME_INSTANT = timedelta(milliseconds=1)  # what a backend's timestamps may round away
_user_ids = itertools.count(1)


@dataclass
class SessionBackend:
    name: str
    settings: Settings
    dump: Callable[
        [Database], Awaitable[str]
    ]  # everything the store holds, as text: what a leak would give away


@pytest.fixture(
    scope="module",
    params=["database-sqlite", "database-postgresql", "redis", "redis-sentinel"],
)
def session_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SessionBackend]:
    """What each backend needs (a server, the database), started once per backend."""
    overrides: dict[str, Any] = {"data_dir": tmp_path_factory.mktemp("sessions")}
    with contextlib.ExitStack() as servers:
        redis_port: int | None = None
        if request.param == "database-sqlite":
            overrides["session_url"] = "database://"
        elif request.param == "database-postgresql":
            pg: PostgresServer = request.getfixturevalue("postgres_server")
            overrides["database_url"] = pg.new_database().url
            overrides["session_url"] = "database://"
        elif request.param == "redis":
            server = start_redis()
            servers.callback(server.close)
            overrides["session_url"], redis_port = server.url, server.port
        else:
            group = start_sentinel_group()
            servers.callback(group.close)
            overrides["session_url"], redis_port = group.url, group.master.port
        settings = load_settings({}, **overrides)
        upgrade(settings)  # the users the sessions belong to live in the database

        async def dump(db: Database) -> str:
            if redis_port is None:
                async with db.read_on_primary() as conn:
                    return repr((await conn.execute(select(sessions))).all())
            client = redis_sync.Redis(port=redis_port)
            try:
                held = []
                for name in client.keys("*"):
                    kind = client.type(name)
                    value = client.smembers(name) if kind == b"set" else client.get(name)
                    held.append((name, value))
                return repr(held)
            finally:
                client.close()

        yield SessionBackend(request.param, settings, dump)


@dataclass
class Process:
    sessions: SessionStore
    db: Database

    async def new_user(self) -> int:
        """A user's row (the ``sessions`` table refers to it)."""
        user_id = next(_user_ids)
        async with self.db.write() as tx:
            await tx.conn.execute(
                insert(users).values(
                    id=user_id,
                    username=f"s{user_id}",
                    display_name="s",
                    password_hash="!",
                    created_at=datetime.now(UTC),
                )
            )
        return user_id


OpenSessions = Callable[..., Awaitable[Process]]


@pytest.fixture
async def open_sessions(session_backend: SessionBackend) -> AsyncIterator[OpenSessions]:
    """Opens processes on the store: the one place a session store is built."""
    opened: list[Process] = []

    async def open_process(ttl_seconds: int | None = None) -> Process:
        settings = session_backend.settings.with_overrides(session_ttl_seconds=ttl_seconds)
        shards = local_shards(settings)
        db = shards.home
        process = Process(create_session_store(settings, shards), db)
        opened.append(process)
        return process

    yield open_process
    for process in opened:
        # the port has no close(); a Redis store's client is released here
        client = getattr(process.sessions, "_redis", None)
        if client is not None:
            await client.aclose()
        await process.db.dispose()


def now() -> datetime:
    return datetime.now(UTC)


async def test_a_new_session_is_found_by_its_token_in_every_process(
    open_sessions: OpenSessions,
) -> None:
    one, other = await open_sessions(ttl_seconds=3600), await open_sessions(ttl_seconds=3600)
    user = await one.new_user()
    before = now()
    session = await one.sessions.create(user, {"csrf": "c5rf", "n": 1})
    assert len(session.token) >= 32  # random and long: not guessable
    assert (session.user_id, session.data) == (user, {"csrf": "c5rf", "n": 1})
    assert before + timedelta(hours=1) <= session.expires_at <= now() + timedelta(hours=1)
    found = await other.sessions.get(session.token)
    assert found is not None
    assert (found.token, found.user_id, found.data) == (session.token, user, session.data)
    assert abs(found.expires_at - session.expires_at) < SAME_INSTANT
    second = await one.sessions.create(user)
    assert second.token != session.token and second.data == {}
    assert (await other.sessions.get(second.token)) is not None


async def test_an_update_changes_the_data_every_process_sees(open_sessions: OpenSessions) -> None:
    one, other = await open_sessions(), await open_sessions()
    user = await one.new_user()
    session = await one.sessions.create(user, {"n": 1})
    session.data["n"] = 2
    session.data["wal"] = {"lsn": "0/16B3748", "until": 1.5}
    await one.sessions.update(session)
    found = await other.sessions.get(session.token)
    assert found is not None
    assert found.data == {"n": 2, "wal": {"lsn": "0/16B3748", "until": 1.5}}
    assert found.user_id == user
    assert abs(found.expires_at - session.expires_at) < SAME_INSTANT  # data only


async def test_a_deleted_session_is_gone_in_every_process(open_sessions: OpenSessions) -> None:
    one, other = await open_sessions(), await open_sessions()
    user = await one.new_user()
    ended, kept = await one.sessions.create(user), await one.sessions.create(user)
    await one.sessions.delete(ended.token)
    assert await other.sessions.get(ended.token) is None
    assert await one.sessions.get(ended.token) is None
    assert await other.sessions.get(kept.token) is not None  # only that one
    await one.sessions.delete(ended.token)  # again: nothing to do, no error


async def test_delete_for_user_ends_all_their_sessions_and_no_one_elses(
    open_sessions: OpenSessions,
) -> None:
    one, other = await open_sessions(), await open_sessions()
    user, someone = await one.new_user(), await one.new_user()
    theirs = [await one.sessions.create(user) for _ in range(3)]
    through_other = await other.sessions.create(user)
    not_theirs = await other.sessions.create(someone)
    await one.sessions.delete_for_user(user)
    for session in [*theirs, through_other]:
        assert await other.sessions.get(session.token) is None
        assert await one.sessions.get(session.token) is None
    assert await one.sessions.get(not_theirs.token) is not None
    await one.sessions.delete_for_user(user)  # again, and for a user with no session
    await one.sessions.delete_for_user(await one.new_user())
    after = await one.sessions.create(user)  # logging in again works
    assert await other.sessions.get(after.token) is not None


async def test_a_session_expires_after_its_ttl(open_sessions: OpenSessions) -> None:
    one, other = await open_sessions(ttl_seconds=1), await open_sessions(ttl_seconds=1)
    session = await one.sessions.create(await one.new_user())

    async def expired() -> bool:  # the clock, not the store: a read would slide it
        return now() > session.expires_at

    await async_wait_until(expired, within=10, what="the session's expiry")
    assert await other.sessions.get(session.token) is None
    assert await one.sessions.get(session.token) is None


async def test_using_a_session_slides_its_expiry_and_keeps_it_alive(
    open_sessions: OpenSessions,
) -> None:
    ttl = timedelta(seconds=3)
    one, other = await open_sessions(ttl_seconds=3), await open_sessions(ttl_seconds=3)
    session = await one.sessions.create(await one.new_user())
    created = session.expires_at - ttl

    at_once = await one.sessions.get(session.token)  # not one write per request:
    assert at_once is not None  # a fresh session's expiry stays where it is
    assert abs(at_once.expires_at - session.expires_at) < SAME_INSTANT

    async def at(moment: datetime) -> bool:
        return now() > moment

    await async_wait_until(lambda: at(created + timedelta(seconds=1)), within=10)
    slid = await one.sessions.get(session.token)
    assert slid is not None and slid.expires_at > session.expires_at + timedelta(seconds=0.5)
    seen = await other.sessions.get(session.token)  # kept: every process sees it
    assert seen is not None and abs(seen.expires_at - slid.expires_at) < SAME_INSTANT

    await async_wait_until(lambda: at(session.expires_at), within=10)
    assert await other.sessions.get(session.token) is not None  # it outlives its first expiry


GARBAGE_TOKENS = [
    "",
    " ",
    "x",
    "A" * 43,  # the shape of a real token, never issued
    "A" * 300,  # longer than any token
    "../../etc/passwd",
    "' OR '1'='1",
    "*",
    "picscale:session:*",
    "tok\x00en",
    "é 🙂",
]


async def test_an_ended_session_stays_ended_when_another_process_saves_it(
    open_sessions: OpenSessions,
) -> None:
    """A process that read a session before another ended it (a log-out, a password
    change) may still save it (its read-your-writes position, its sliding expiry): the
    save must not bring the session back."""
    one, other = await open_sessions(), await open_sessions()
    session = await one.sessions.create(await one.new_user(), {"n": 1})
    await other.sessions.delete(session.token)
    session.data["n"] = 2
    await one.sessions.update(session)
    assert await other.sessions.get(session.token) is None
    ended = await one.sessions.create(await one.new_user())
    await other.sessions.delete_for_user(ended.user_id)
    await one.sessions.update(ended)
    assert await one.sessions.get(ended.token) is None


async def test_unknown_and_garbage_tokens_find_nothing(open_sessions: OpenSessions) -> None:
    one = await open_sessions()
    real = await one.sessions.create(await one.new_user())
    for token in GARBAGE_TOKENS:
        assert await one.sessions.get(token) is None, token
        await one.sessions.delete(token)  # nothing to delete: no error
    assert await one.sessions.get(real.token) is not None  # and nothing else deleted


async def test_the_store_keeps_no_usable_token(
    session_backend: SessionBackend, open_sessions: OpenSessions
) -> None:
    """A leaked dump of the store holds the tokens' SHA-256, never a token."""
    one = await open_sessions()
    user = await one.new_user()
    tokens = [(await one.sessions.create(user, {"n": n})).token for n in range(3)]
    dump = await session_backend.dump(one.db)
    for token in tokens:
        assert hashlib.sha256(token.encode()).hexdigest() in dump  # the dump holds them...
        assert token not in dump  # ...by their digest only
