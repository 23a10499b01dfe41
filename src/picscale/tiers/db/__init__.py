"""The data tier: reads and writes through separate calls, so replicas plug in later.

``Database.read()`` may be answered by a replica; ``Database.write()`` always runs on the
primary, in one transaction, and runs its after-commit actions only once it committed.
"""

from picscale.tiers.db.database import (
    Database,
    DatabaseUnavailable,
    ReadConnection,
    WriteTx,
    create_database,
    is_unique_violation,
)
from picscale.tiers.db.replicas import (
    ReadContext,
    current_context,
    format_lsn,
    parse_lsn,
    primary_reads,
    read_context,
)

__all__ = [
    "Database",
    "DatabaseUnavailable",
    "ReadConnection",
    "ReadContext",
    "WriteTx",
    "create_database",
    "current_context",
    "format_lsn",
    "is_unique_violation",
    "parse_lsn",
    "primary_reads",
    "read_context",
]
