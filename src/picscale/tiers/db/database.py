"""The database port and its engines (SQLite in WAL mode embedded, PostgreSQL scaled out)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import structlog
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from picscale.settings import Settings, SettingsError

log = structlog.get_logger(__name__)

AfterCommit = Callable[[], Awaitable[None]]


class QueryCounter(Protocol):
    def __call__(self, intent: str) -> None: ...


class WriteTx:
    """One write transaction on the primary, with actions to run once it has committed."""

    __slots__ = ("_after_commit", "conn")

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._after_commit: list[AfterCommit] = []

    def after_commit(self, action: AfterCommit) -> None:
        self._after_commit.append(action)


class Database:
    def __init__(self, primary: AsyncEngine, reader: AsyncEngine, dialect: str) -> None:
        self._primary = primary
        self._reader = reader
        self.dialect = dialect

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only unit of work. May be served by a replica: never write inside it."""
        async with self._reader.connect() as conn:
            conn.info["intent"] = "read"
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[WriteTx]:
        """A transaction on the primary; after-commit actions run once it committed."""
        async with self._primary.connect() as conn:
            conn.info["intent"] = "write"
            tx = WriteTx(conn)
            async with conn.begin():
                yield tx
        for action in tx._after_commit:
            try:
                await action()
            except Exception:
                # the write is durable; a failed follow-up (a cache delete, say) is
                # reported by the action's own tier, and must not turn success into error
                log.exception("after_commit_failed", action=getattr(action, "__qualname__", ""))

    async def ping(self) -> None:
        async with self._primary.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self._primary.dispose()
        if self._reader is not self._primary:
            await self._reader.dispose()


def is_unique_violation(exc: BaseException) -> bool:
    if not isinstance(exc, IntegrityError):
        return False
    message = str(exc.orig).lower()
    return "unique" in message or "duplicate key" in message


def async_url(url: str) -> str:
    """Map the user-facing scheme to the async driver SQLAlchemy should use."""
    parsed = make_url(url)
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
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    busy_ms = int(settings.db_statement_timeout_seconds * 1000)

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


def _postgres_engine(url: str, settings: Settings) -> AsyncEngine:
    timeout_ms = int(settings.db_statement_timeout_seconds * 1000)
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.db_pool_timeout_seconds,
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


def create_database(settings: Settings, count_query: QueryCounter | None = None) -> Database:
    primary, reader, dialect = create_engines(settings)
    if count_query is not None:
        counter = count_query

        def _count(conn: Any, *_args: Any, **_kw: Any) -> None:
            counter(conn.info.get("intent", "other"))

        for engine in {primary, reader}:
            event.listen(engine.sync_engine, "before_cursor_execute", _count)
    return Database(primary, reader, dialect)
