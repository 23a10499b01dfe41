"""The data tier: reads and writes through separate calls, so replicas plug in later.

``Database.read()`` may be answered by a replica; ``Database.write()`` always runs on the
primary, in one transaction, and runs its after-commit actions only once it committed.
What each request or job must read is decided in ``read_your_writes``.
"""

from picscale.tiers.db.database import Database, DatabaseUnavailable, ReadConnection, WriteTx
from picscale.tiers.db.factory import create_database

__all__ = [
    "Database",
    "DatabaseUnavailable",
    "ReadConnection",
    "WriteTx",
    "create_database",
]
