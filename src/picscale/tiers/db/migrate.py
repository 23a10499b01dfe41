"""Alembic, driven from code: ``picscale migrate`` and the pre-start step of ``serve``."""

from __future__ import annotations

import asyncio
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
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    layout = settings.database_layout()
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
