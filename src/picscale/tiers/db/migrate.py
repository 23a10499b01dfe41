"""Alembic, driven from code: ``picscale migrate`` and the pre-start step of ``serve``."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from importlib import resources

from alembic import command
from alembic.config import Config

from picscale.settings import Settings


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("picscale") / "migrations"))
    # ConfigParser interpolation: a literal % in a password must be doubled
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


class MigrationRefused(RuntimeError):
    """A shard move is under way: DDL is not replicated, so schemas must not change."""


class DatabaseMissing(RuntimeError):
    """A command that works on the database found none (or one never migrated)."""


def require_database(settings: Settings) -> None:
    """Every SQLite file of the layout exists and was migrated: a command other than
    ``serve`` and ``migrate`` must not create an empty database where it was pointed by
    mistake (SQLite creates the file on first connect), then fail on missing tables."""
    from picscale.tiers.db.engines import sqlite_file

    embedded = not settings.database.url
    for url in settings.database_layout().values():
        path = sqlite_file(url)
        if path is None:
            continue
        where = f"in {settings.data_dir}" if embedded else f"at {path}"
        fix = (
            "give the data directory of `picscale serve` (--data-dir or PICSCALE_DATA_DIR), "
            f"or create one with `picscale migrate --data-dir {settings.data_dir}`"
            if embedded
            else "check PICSCALE_DATABASE_URL, or create it with `picscale migrate`"
        )
        if not path.is_file():
            raise DatabaseMissing(f"no database {where} (no {path.name}): {fix}")
        try:
            with contextlib.closing(
                sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            ) as conn:
                migrated = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
                ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise DatabaseMissing(
                f"{path} is not a usable SQLite database ({exc}): {fix}"
            ) from None
        if not migrated:
            raise DatabaseMissing(f"the database {where} has no tables yet: {fix}")


def _move_under_way(url: str) -> str | None:
    """The move under way on the layout's first cluster (which keeps the moves), if any."""
    from sqlalchemy import inspect, text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from picscale.tiers.db.engines import async_url

    async def check() -> str | None:
        engine = create_async_engine(async_url(url), poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                if not await conn.run_sync(lambda c: inspect(c).has_table("shard_moves")):
                    return None
                row = (
                    await conn.execute(
                        text(
                            "SELECT id, first, last, source, target, step FROM shard_moves "
                            "WHERE state IN ('running', 'failed') ORDER BY id LIMIT 1"
                        )
                    )
                ).first()
        finally:
            await engine.dispose()
        if row is None:
            return None
        return (
            f"move {row.id} of shards {row.first}-{row.last} from {row.source} to "
            f"{row.target} (step {row.step})"
        )

    return asyncio.run(check())


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Every cluster of the shard layout, one after the other (each holds every table;
    the global ones are used on the first only). Refused while a shard move is under
    way: schema changes are not replicated to the move's target."""
    from picscale.tiers.db.engines import create_sqlite_file

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    layout = settings.database_layout()
    for url in layout.values():
        create_sqlite_file(url)  # before anything connects: readable by its owner alone
    moving = _move_under_way(next(iter(layout.values())))
    if moving is not None:
        raise MigrationRefused(
            f"a shard move is under way ({moving}): finish it with `picscale shards move "
            "--resume` or roll it back with `--abort`, then migrate"
        )
    for url in layout.values():
        command.upgrade(alembic_config(url), revision)


def downgrade(settings: Settings, revision: str) -> None:
    for url in settings.database_layout().values():
        command.downgrade(alembic_config(url), revision)
