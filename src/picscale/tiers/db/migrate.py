"""Alembic, driven from code: ``picscale migrate`` and the pre-start step of ``serve``."""

from __future__ import annotations

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


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Every cluster of the shard layout, one after the other (each holds every table;
    the global ones are used on the first only)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for url in settings.database_layout().values():
        command.upgrade(alembic_config(url), revision)


def downgrade(settings: Settings, revision: str) -> None:
    for url in settings.database_layout().values():
        command.downgrade(alembic_config(url), revision)
