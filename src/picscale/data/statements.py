"""Statements the two databases spell differently."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_new(dialect: str, table: Table) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING``: a row that would break a unique key is left
    out instead of failing the transaction (its result's rowcount says which)."""
    module: Any = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()
