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
    # no foreign key: the followee lives on their own shard, often another cluster
    Column("followee_id", BigInteger, primary_key=True),
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
    # on the user's shard: the token is "<user id>.<secret>", so it routes by its user
    Column(
        "user_id",
        BigInteger,
        ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("id", String(64), primary_key=True),  # sha256 of the token, never the token
    Column("data", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_sessions_expires_at", "expires_at"),
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


# -- stage 9: sharding ---------------------------------------------------------------------
#
# Sharded tables (a user's and everything the user owns) have a primary key that begins
# with a sharded id, so that a shard move can stream them with a row filter on the key.
# Global tables live on the map's home cluster (the first of the layout) and never move.

# the followee's side of a follow, on the followee's shard: written by a job from the
# outbox of the follow's own transaction (the truth is ``follows``, on the follower's)
followers = Table(
    "followers",
    metadata,
    Column(
        "followee_id",
        BigInteger,
        ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("follower_id", BigInteger, primary_key=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

# hot counters (a celebrity's follower count), split over slots: an increment changes
# one random slot, so concurrent increments rarely wait for each other's row lock
user_counters = Table(
    "user_counters",
    metadata,
    Column(
        "user_id",
        BigInteger,
        ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("slot", Integer, primary_key=True),
    Column("followers", BigInteger, nullable=False, server_default="0"),
)

# the home feed's timelines when there is no Redis: photo ids, capped per user
timelines = Table(
    "timelines",
    metadata,
    Column("user_id", BigInteger, primary_key=True),
    Column("photo_id", BigInteger, primary_key=True),
)

timeline_state = Table(
    "timeline_state",
    metadata,
    Column("user_id", BigInteger, primary_key=True),  # a row: the timeline is warm
    Column("built_at", UtcDateTime(), nullable=False),
)

# global: a username's owner, whatever the owner's shard (unique across every cluster)
usernames = Table(
    "usernames",
    metadata,
    Column("username", String(32), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# global: authors with more followers than the fan-out threshold: their photos are not
# pushed into timelines but merged into their followers' feeds when read
celebrities = Table(
    "celebrities",
    metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("followers", BigInteger, nullable=False),
    Column("since", UtcDateTime(), nullable=False),
)

# global: the shard map's versions (the embedded map store; etcd in the lab)
shard_map = Table(
    "shard_map",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("body", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# global: the node numbers processes hold while they mint ids (no two at once)
id_nodes = Table(
    "id_nodes",
    metadata,
    Column("node", Integer, primary_key=True, autoincrement=False),
    Column("holder", String(128), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
)

# global: shard moves, one row per move, its step and what it needs to resume
shard_moves = Table(
    "shard_moves",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("first", Integer, nullable=False),
    Column("last", Integer, nullable=False),
    Column("source", String(32), nullable=False),
    Column("target", String(32), nullable=False),
    Column("step", String(32), nullable=False),
    Column("state", String(16), nullable=False),  # running | done | aborted | failed
    Column("detail", JSON, nullable=False),
    Column("error", Text, nullable=True),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# on every cluster: logical shards whose writes wait (a move's last moment)
shard_fences = Table(
    "shard_fences",
    metadata,
    Column("first", Integer, primary_key=True, autoincrement=False),
    Column("last", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# on every cluster: a row written under a move's fence, with an id on a moving shard:
# once it has arrived at the target, everything written before the fence has too
shard_move_markers = Table(
    "shard_move_markers",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

# global: recent traffic by logical shard (each process adds its counts every few
# seconds), for ``shards status`` and ``shards rebalance`` to find hot shards
shard_traffic = Table(
    "shard_traffic",
    metadata,
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("minute", BigInteger, primary_key=True, autoincrement=False),  # unix time // 60
    Column("reads", BigInteger, nullable=False, server_default="0"),
    Column("writes", BigInteger, nullable=False, server_default="0"),
)

# the sharded tables and the column whose id carries the shard (first in the key)
SHARDED = {
    "users": "id",
    "photos": "id",
    "photo_versions": "photo_id",
    "follows": "follower_id",
    "followers": "followee_id",
    "user_counters": "user_id",
    "jobs": "id",
    "sessions": "user_id",
    "timelines": "user_id",
    "timeline_state": "user_id",
    "shard_move_markers": "id",
}
