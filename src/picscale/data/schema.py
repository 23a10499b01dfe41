"""Tables, as SQLAlchemy Core metadata, for the data-access modules beside this one (the
only code that builds SQL). Alembic migrations are the source of truth for the database
itself; this module mirrors them (a test checks they agree)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the engine keeps (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = Table(
    "users",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("username", String(32), nullable=False, unique=True),
    Column("display_name", String(64), nullable=False),
    Column("password_hash", String(256), nullable=False),
    # denormalised counters, changed in the same transaction as the rows they count
    Column("photo_count", Integer, nullable=False, server_default="0"),
    Column("follower_count", Integer, nullable=False, server_default="0"),
    Column("following_count", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime(), nullable=False),
)

photos = Table(
    "photos",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("owner_id", BigInteger, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("caption", String(2200), nullable=False, server_default=""),
    Column("format", String(8), nullable=False),
    Column("status", String(16), nullable=False),  # processing | ready | failed
    # the newest version whose variants exist (0 while the first is processing)
    Column("version", Integer, nullable=False, server_default="0"),
    # the number the next edit will get: reserved when the edit is queued so that a
    # job run twice writes the same keys and makes one version
    Column("next_version", Integer, nullable=False, server_default="2"),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_photos_owner_id_id", "owner_id", "id"),
)

photo_versions = Table(
    "photo_versions",
    metadata,
    Column(
        "photo_id",
        BigInteger,
        ForeignKey("photos.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("version", Integer, primary_key=True),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("job_id", BigInteger, nullable=True, unique=True),
    # the whole chain of edits from the source that this version renders
    Column("operations", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

follows = Table(
    "follows",
    metadata,
    Column(
        "follower_id",
        BigInteger,
        ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "followee_id",
        BigInteger,
        ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_follows_followee_id", "followee_id"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("photo_id", BigInteger, nullable=True),
    Column("owner_id", BigInteger, nullable=True),
    Column("payload", JSON, nullable=False),
    # queued | running | done | failed | dead; failed waits for a retry, dead does not
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    # times its worker died under it (a lost lease, a redelivery): not held against the
    # job's attempts, which count the failures it reported, but limited on their own
    Column("crashes", Integer, nullable=False, server_default="0"),
    Column("available_at", UtcDateTime(), nullable=False),
    Column("lease_until", UtcDateTime(), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("result", JSON, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # the outbox of the broker backend: empty until the broker confirmed the job
    Column("published_at", UtcDateTime(), nullable=True),
    Index("ix_jobs_status_available_at", "status", "available_at"),
    Index("ix_jobs_photo_id", "photo_id"),
    Index(
        "ix_jobs_unpublished",
        "created_at",
        postgresql_where=text("published_at IS NULL"),
        sqlite_where=text("published_at IS NULL"),
    ),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the token, never the token
    Column("user_id", BigInteger, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_sessions_expires_at", "expires_at"),
    Index("ix_sessions_user_id", "user_id"),
)

login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(200), primary_key=True),  # "account:<name>" | "address:<ip>"
    Column("window_start", UtcDateTime(), nullable=False),
    Column("count", Integer, nullable=False),
)

# The in-process cache's shared invalidation log: every write appends the keys it
# invalidates in its own transaction; each process replays entries it has not seen.
cache_invalidations = Table(
    "cache_invalidations",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("key", String(300), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # AUTOINCREMENT: SQLite must never reuse a sequence number after a prune
    sqlite_autoincrement=True,
)
