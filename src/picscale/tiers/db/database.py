"""The database: reads that a replica may serve, and write transactions on the primary.

One ``Database`` is one cluster (a primary and its replicas). Driver errors that mean
"the database is out of reach for now" leave this module as DatabaseUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from picscale.tiers.db.read_your_writes import current_scope, mark_stale_read, wants_fresh
from picscale.tiers.db.replicas import (
    PRIMARY_POSITION,
    PrimaryUnreachable,
    Replica,
    ReplicaSet,
    is_retryable_read_error,
)

log = structlog.get_logger(__name__)

AfterCommit = Callable[[], Awaitable[None]]


class DatabaseUnavailable(Exception):
    """The database cannot be reached for now (a failover, say): the client should try
    again shortly."""


class ShardMoving(DatabaseUnavailable):
    """A write touched a logical shard that is fenced for a move's last moment: it was
    rolled back; it succeeds once the map names the shard's new cluster (retry)."""

    map_version: int | None = None  # the map the write was routed by


# raised by the fence trigger (resharding) on a write to a fenced logical shard
FENCE_SQLSTATE = "PS001"


class WriteTx:
    """One write transaction on the primary, with actions to run once it has committed."""

    __slots__ = ("_after_commit", "conn")

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._after_commit: list[AfterCommit] = []

    def after_commit(self, action: AfterCommit) -> None:
        self._after_commit.append(action)


class ReadConnection:
    """A connection for reads. On a replica, a statement that fails because the node went
    away (or recovery cancelled it) runs again on another replica or the primary. With
    ``fall_back``, a statement on the primary that cannot reach it runs on a replica."""

    def __init__(
        self,
        db: Database,
        stack: AsyncExitStack,
        replica: Replica | None,
        intent: str = "read",
        *,
        fall_back: bool = False,
    ) -> None:
        self._db = db
        self._intent = intent
        self._stack = stack
        self._fall_back = fall_back
        self.replica = replica
        self._conn: AsyncConnection | None = None
        self._tried: set[str] = set()
        self._skip = True  # the primary, while the breaker is open

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            breaker = self._db.replicas.breaker if self._db.replicas else None
            skip = self.replica is None and self._fall_back and self._skip
            if skip and breaker and breaker.skip():
                raise PrimaryUnreachable("the primary is out: a replica serves this read")
            engine = self.replica.engine if self.replica else self._db.reader_for_primary
            conn = await self._stack.enter_async_context(engine.connect())
            if self.replica is None and breaker:
                breaker.succeeded()
            conn.info["intent"] = self._intent
            conn.info["role"] = "replica" if self.replica else "primary"
            self._conn = conn
        return self._conn

    async def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                conn = await self._connection()
                return await getattr(conn, method)(*args, **kwargs)
            except Exception as exc:
                replicas = self._db.replicas
                if not is_retryable_read_error(exc):
                    raise
                if replicas is None:
                    raise DatabaseUnavailable("the database cannot be reached") from exc
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.invalidate()
                self._conn = None
                if self.replica is None:  # the primary is gone: a failover
                    if not isinstance(exc, PrimaryUnreachable):
                        replicas.breaker.failed()
                    if not self._fall_back:
                        raise DatabaseUnavailable("the database primary is out of reach") from exc
                    self.replica = await replicas.choose(None, exclude=self._tried)
                    if self.replica is None:
                        if isinstance(exc, PrimaryUnreachable):  # no replica either: the
                            self._skip = False  # primary may be back (promoted) already
                            continue
                        raise DatabaseUnavailable("no database node answers") from exc
                    if not isinstance(exc, PrimaryUnreachable):  # (the breaker said it once)
                        log.warning(
                            "primary_read_on_replica",
                            replica=self.replica.name,
                            error=repr(exc)[:200],
                        )
                    mark_stale_read()
                    self._fall_back = False  # once: a second failure is the replicas'
                    continue
                log.warning("replica_read_failed", replica=self.replica.name, error=repr(exc)[:200])
                replicas.mark_failed(self.replica, exc)
                self._tried.add(self.replica.name)
                scope = current_scope()
                self.replica = await replicas.choose(
                    scope.must_see_on(self._db.name) if scope else None, exclude=self._tried
                )

    async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._run("execute", statement, *args, **kwargs)

    async def scalar(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._run("scalar", statement, *args, **kwargs)

    async def scalars(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._run("scalars", statement, *args, **kwargs)


READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction: we are talking to a replica


def _sqlstate(exc: DBAPIError) -> str | None:
    for err in (exc.orig, getattr(exc.orig, "__cause__", None)):
        code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


class Database:
    def __init__(
        self,
        primary: AsyncEngine,
        reader: AsyncEngine,
        dialect: str,
        replicas: ReplicaSet | None = None,
        failover_wait: float = 0.0,
        *,
        name: str = "c1",
        dsn: str = "",
    ) -> None:
        self.name = name  # the cluster's name in the shard layout
        self.dsn = dsn  # libpq's form of the primary's URL (a shard move subscribes to it)
        self._failover_wait = failover_wait
        self._primary = primary
        self._reader = reader
        self.dialect = dialect
        self.replicas = replicas

    @property
    def engine(self) -> AsyncEngine:
        """The primary's engine (tier plumbing: shard moves, maintenance)."""
        return self._primary

    @property
    def reader_for_primary(self) -> AsyncEngine:
        return self._reader

    @asynccontextmanager
    async def read(self) -> AsyncIterator[ReadConnection]:
        """A read-only unit of work, on a replica when one may serve it: never write inside.

        Reads of a request that has written go to the primary; otherwise a replica that
        has replayed what the request must see (``read_your_writes``), else the primary.
        Fresh reads, while the primary cannot be reached (a failover), are served by a
        replica, marked stale.
        """
        replica = None
        scope = current_scope()
        if self.replicas is not None and not (scope and scope.has_written_on(self.name)):
            required = scope.must_see_on(self.name) if scope else None
            stale = False
            if wants_fresh():
                # a value for the cache: only a replica with every commit up to now will do
                # (the write behind the invalidation we saw is among them)
                try:
                    required = await self.replicas.primary_position(fresh=True)
                except Exception as exc:
                    if not is_retryable_read_error(exc):
                        raise
                    if not isinstance(exc, PrimaryUnreachable):  # (the breaker said it once)
                        log.warning("primary_position_failed", error=repr(exc)[:200])
                    stale = True  # the primary is gone: any replica, and nothing cached
            if required is not None or not wants_fresh() or stale:
                replica = await self.replicas.choose(required)
                if stale and replica is not None:
                    mark_stale_read()
        async with AsyncExitStack() as stack:
            yield ReadConnection(self, stack, replica, fall_back=True)

    @asynccontextmanager
    async def read_on_primary(
        self, intent: str = "read", *, fall_back: bool = False
    ) -> AsyncIterator[ReadConnection]:
        """Reads that must see every commit (sessions, log-in checks): on the primary.
        ``intent`` names tier plumbing ("session", "cache", "auth") apart from domain reads
        in the query metrics. With ``fall_back``, a replica answers while the primary
        cannot be reached (for reads that a moment's staleness does not make wrong)."""
        async with AsyncExitStack() as stack:
            yield ReadConnection(self, stack, None, intent, fall_back=fall_back)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[WriteTx]:
        """A transaction on the primary; after-commit actions run once it committed.

        While there is no primary (a failover), opening the transaction is retried with
        backoff for up to ``db_failover_wait_seconds``; a transaction that fails because
        the primary went away raises DatabaseUnavailable: it was not committed, or its
        commit could not be confirmed, and is never reported as a success.
        """
        conn = await self._writable_connection()
        try:
            conn.info["intent"] = "write"
            tx = WriteTx(conn)
            try:
                async with conn.begin():
                    yield tx
            except DBAPIError as exc:
                if _sqlstate(exc) == FENCE_SQLSTATE:
                    raise ShardMoving("this shard is moving to another cluster") from exc
                if _sqlstate(exc) == READ_ONLY_SQLSTATE:
                    # our pooled connections lead to a demoted primary: reconnect afresh
                    await self._primary.dispose()
                    raise DatabaseUnavailable("the database primary changed") from exc
                if is_retryable_read_error(exc):
                    raise DatabaseUnavailable("the database primary went away") from exc
                raise
            scope = current_scope()
            if scope is not None:
                position = None
                if self.replicas is not None:
                    # where the primary's WAL is now: this user's reads need a replica
                    # that has replayed at least this far
                    position = int(await conn.scalar(PRIMARY_POSITION) or 0)
                scope.wrote_at(self.name, position)
        finally:
            await conn.close()
        for action in tx._after_commit:
            try:
                await action()
            except Exception:
                # the write is durable; a failed follow-up (a cache delete, say) is
                # reported by the action's own tier, and must not turn success into error
                log.exception("after_commit_failed", action=getattr(action, "__qualname__", ""))

    async def _writable_connection(self) -> AsyncConnection:
        deadline = time.monotonic() + self._failover_wait
        delay = 0.05
        breaker = self.replicas.breaker if self.replicas else None
        while True:
            try:
                conn = await self._primary.connect()
            except (DBAPIError, OSError) as exc:
                if breaker and is_retryable_read_error(exc):
                    breaker.failed()
                if not is_retryable_read_error(exc) or time.monotonic() + delay > deadline:
                    raise DatabaseUnavailable("no database primary answers") from exc
                log.warning("primary_unavailable", retry_in=delay, error=repr(exc)[:200])
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            else:
                if breaker:
                    breaker.succeeded()
                return conn

    async def ping(self) -> None:
        async with self._primary.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self.replicas is not None:
            await self.replicas.dispose()
        await self._primary.dispose()
        if self._reader is not self._primary:
            await self._reader.dispose()
