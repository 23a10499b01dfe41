"""SQLAlchemy engines for the URLs a user writes: SQLite in WAL mode (embedded),
PostgreSQL with asyncpg (scaled out), every statement counted by intent, role and host."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from picscale.observability.metrics import Metrics
from picscale.settings import Settings, SettingsError
from picscale.tiers.db.replicas import node_name

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


def postgres_engine(url: str | URL, settings: Settings) -> AsyncEngine:
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


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL, or SQLite in memory)."""
    parsed = make_url(async_url(url))
    if not parsed.drivername.startswith("sqlite"):
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def create_sqlite_file(url: str) -> None:
    """The SQLite file of ``url``, created readable by its owner alone (it holds password
    hashes and session tokens) before SQLite would create it with the umask's mode; its
    -wal and -shm files get the database's mode from SQLite. An empty file is an empty
    database. One that exists is left as it is."""
    path = sqlite_file(url)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def create_engines(settings: Settings, url: str) -> tuple[AsyncEngine, AsyncEngine, str]:
    """The engines of one cluster's primary: (for writes, for reads, dialect)."""
    url = async_url(url)
    if url.startswith("sqlite"):
        create_sqlite_file(url)
        return (
            _sqlite_engine(url, settings, immediate=True),
            _sqlite_engine(url, settings, immediate=False),
            "sqlite",
        )
    engine = postgres_engine(url, settings)
    return engine, engine, "postgresql"


def observed(engine: AsyncEngine, role: str, dialect: str, metrics: Metrics) -> AsyncEngine:
    """Count the engine's statements by intent, role and host."""
    host = node_name(engine) if dialect == "postgresql" else "sqlite"
    count = metrics.count_query

    def _count(conn: Any, *_args: Any, **_kw: Any) -> None:
        info = conn.info
        count(info.get("intent", "other"), info.get("role", role), host)

    event.listen(engine.sync_engine, "before_cursor_execute", _count)
    return engine
