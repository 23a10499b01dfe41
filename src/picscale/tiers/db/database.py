"""The database port and its engines (SQLite in WAL mode embedded, PostgreSQL scaled out)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import structlog
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from picscale.settings import Settings, SettingsError
from picscale.tiers.db.read_your_writes import current_scope, mark_stale_read, wants_fresh
from picscale.tiers.db.replicas import (
    PRIMARY_POSITION,
    PrimaryUnreachable,
    Replica,
    ReplicaSet,
    is_retryable_read_error,
    node_name,
)

log = structlog.get_logger(__name__)

AfterCommit = Callable[[], Awaitable[None]]


class DatabaseObserver(Protocol):
    def count_query(self, intent: str, role: str, host: str) -> None: ...

    def replica_event(self, event: str, host: str) -> None: ...

    def replica_lag(self, host: str, seconds: float, lag_bytes: float) -> None: ...


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
                if replicas is None or not is_retryable_read_error(exc):
                    raise
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.invalidate()
                self._conn = None
                if self.replica is None:  # the primary is gone: a failover
                    if not isinstance(exc, PrimaryUnreachable):
                        replicas.breaker.failed()
                    if not self._fall_back:
                        raise
                    self.replica = await replicas.choose(None, exclude=self._tried)
                    if self.replica is None:
                        if isinstance(exc, PrimaryUnreachable):  # no replica either: the
                            self._skip = False  # primary may be back (promoted) already
                            continue
                        raise
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
                    scope.must_see if scope else None, exclude=self._tried
                )

    async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._run("execute", statement, *args, **kwargs)

    async def scalar(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._run("scalar", statement, *args, **kwargs)

    async def scalars(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._run("scalars", statement, *args, **kwargs)


class DatabaseUnavailable(Exception):
    """The primary cannot be reached (a failover, say): the client should try again."""


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
    ) -> None:
        self._failover_wait = failover_wait
        self._primary = primary
        self._reader = reader
        self.dialect = dialect
        self.replicas = replicas

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
        if self.replicas is not None and not (scope and scope.has_written):
            required = scope.must_see if scope else None
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
                scope.wrote_at(position)
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


def is_unique_violation(exc: BaseException) -> bool:
    if not isinstance(exc, IntegrityError):
        return False
    message = str(exc.orig).lower()
    return "unique" in message or "duplicate key" in message


_MULTI_HOST = re.compile(r"^(?P<head>[\w+]+://(?:[^@/]*@)?)(?P<hosts>[^/?]*,[^/?]*)(?P<tail>/.*)?$")


def _multi_host(url: str) -> str:
    """``postgresql://u@h1:5432,h2:5432/db?…`` (libpq's form) as SQLAlchemy wants it:
    ``postgresql://u@/db?host=h1:5432&host=h2:5432&…``."""
    match = _MULTI_HOST.match(url)
    if match is None:
        return url
    tail = match["tail"] or "/"
    path, _, query = tail.partition("?")
    hosts = "&".join(f"host={h.strip()}" for h in match["hosts"].split(",") if h.strip())
    return f"{match['head']}{path}?{hosts}" + (f"&{query}" if query else "")


def async_url(url: str) -> str:
    """Map the user-facing scheme to the async driver SQLAlchemy should use."""
    parsed = make_url(_multi_host(url))
    driver = {
        "sqlite": "sqlite+aiosqlite",
        "sqlite+aiosqlite": "sqlite+aiosqlite",
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
        "postgresql+asyncpg": "postgresql+asyncpg",
    }.get(parsed.drivername)
    if driver is None:
        raise SettingsError(
            f"PICSCALE_DATABASE_URL scheme {parsed.drivername!r} is not supported: "
            "use sqlite:///path/to/file.db or postgresql://user@host/db"
        )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _sqlite_engine(url: str, settings: Settings, *, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=settings.database.pool_size,
        max_overflow=0,
        pool_timeout=settings.database.pool_timeout_seconds,
    )
    busy_ms = int(settings.database.statement_timeout_seconds * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # take over transaction control so that writers can BEGIN IMMEDIATE: a deferred
        # transaction that later writes can fail with SQLITE_BUSY instead of waiting
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


def _postgres_engine(url: str | URL, settings: Settings) -> AsyncEngine:
    timeout_ms = int(settings.database.statement_timeout_seconds * 1000)
    return create_async_engine(
        url,
        pool_size=settings.database.pool_size,
        max_overflow=settings.database.pool_size,
        pool_timeout=settings.database.pool_timeout_seconds,
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.database.pool_timeout_seconds,
            "server_settings": {"statement_timeout": str(timeout_ms)},
        },
    )


def create_engines(settings: Settings) -> tuple[AsyncEngine, AsyncEngine, str]:
    url = async_url(settings.resolved_database_url)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return (
            _sqlite_engine(url, settings, immediate=True),
            _sqlite_engine(url, settings, immediate=False),
            "sqlite",
        )
    engine = _postgres_engine(url, settings)
    return engine, engine, "postgresql"


def _observed(
    engine: AsyncEngine, role: str, dialect: str, observe: DatabaseObserver | None
) -> AsyncEngine:
    """Count the engine's statements by intent, role and host."""
    if observe is None:
        return engine
    host = node_name(engine) if dialect == "postgresql" else "sqlite"

    def _count(conn: Any, *_args: Any, **_kw: Any) -> None:
        info = conn.info
        observe.count_query(info.get("intent", "other"), info.get("role", role), host)

    event.listen(engine.sync_engine, "before_cursor_execute", _count)
    return engine


def create_database(settings: Settings, observe: DatabaseObserver | None = None) -> Database:
    primary, reader, dialect = create_engines(settings)
    replicas = None
    if settings.database.patroni_url:
        if dialect != "postgresql":
            raise SettingsError(
                "PICSCALE_DATABASE_PATRONI_URL needs PICSCALE_DATABASE_URL=postgresql://..."
            )
        from picscale.tiers.db.patroni import PatroniDiscovery

        template = make_url(async_url(settings.resolved_database_url))
        template = template.set(
            query={
                k: v for k, v in template.query.items() if k not in ("host", "target_session_attrs")
            }
        )
        replicas = ReplicaSet(
            [],
            primary,
            max_lag_seconds=settings.database.replica_max_lag_seconds,
            max_lag_bytes=settings.database.replica_max_lag_bytes,
            observe=observe.replica_event if observe else None,
            observe_lag=observe.replica_lag if observe else None,
        )
        discovery = PatroniDiscovery(
            [u.strip() for u in settings.database.patroni_url.split(",") if u.strip()],
            replicas,
            template,
            lambda url: _observed(_postgres_engine(url, settings), "replica", dialect, observe),
        )
        replicas.refresh = discovery.refresh_if_due
    elif settings.database.replica_urls:
        if dialect != "postgresql":
            raise SettingsError(
                "PICSCALE_DATABASE_REPLICA_URLS needs PICSCALE_DATABASE_URL=postgresql://..."
            )
        replicas = ReplicaSet(
            [
                Replica(node_name(engine), engine)
                for engine in (
                    _postgres_engine(async_url(url.strip()), settings)
                    for url in settings.database.replica_urls.split(",")
                    if url.strip()
                )
            ],
            primary,
            max_lag_seconds=settings.database.replica_max_lag_seconds,
            max_lag_bytes=settings.database.replica_max_lag_bytes,
            observe=observe.replica_event if observe else None,
            observe_lag=observe.replica_lag if observe else None,
        )
    for engine in {primary, reader}:
        _observed(engine, "primary", dialect, observe)
    for replica in replicas.replicas if replicas else []:
        _observed(replica.engine, "replica", dialect, observe)
    return Database(
        primary, reader, dialect, replicas, failover_wait=settings.database.failover_wait_seconds
    )
