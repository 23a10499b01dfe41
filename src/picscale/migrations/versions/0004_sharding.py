"""stage 9: sharding: the followee's side of follows, counter slots, timelines, the
global username index, the shard map, id nodes, shard moves, fences and markers;
sessions keyed by their user (their token carries the user's id: old tokens end)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _sessions(key: list[str]) -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint(*key, name=op.f("pk_sessions")),
    )
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"], unique=False)


def upgrade() -> None:
    # a follow's followee lives on their own shard, often another cluster: no foreign
    # key (and no cascade: deleting a user must not delete other users' follows)
    with op.batch_alter_table("follows", schema=None) as batch_op:
        batch_op.drop_constraint("fk_follows_followee_id_users", type_="foreignkey")
    op.drop_table("sessions")
    _sessions(["user_id", "id"])
    op.create_table(
        "followers",
        sa.Column("followee_id", sa.BigInteger(), nullable=False),
        sa.Column("follower_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["followee_id"],
            ["users.id"],
            name=op.f("fk_followers_followee_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("followee_id", "follower_id", name=op.f("pk_followers")),
    )
    # a database from before sharding is one cluster: its follows' other side is here
    op.execute(
        "INSERT INTO followers (followee_id, follower_id, created_at) "
        "SELECT followee_id, follower_id, created_at FROM follows"
    )
    op.create_table(
        "user_counters",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("followers", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_counters_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "slot", name=op.f("pk_user_counters")),
    )
    op.create_table(
        "timelines",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("photo_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "photo_id", name=op.f("pk_timelines")),
    )
    op.create_table(
        "timeline_state",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_timeline_state")),
    )
    op.create_table(
        "usernames",
        sa.Column("username", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_usernames")),
    )
    op.execute(
        "INSERT INTO usernames (username, user_id, created_at) "
        "SELECT username, id, created_at FROM users"
    )
    op.create_table(
        "celebrities",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("followers", sa.BigInteger(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_celebrities")),
    )
    op.create_table(
        "shard_map",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_shard_map")),
    )
    op.create_table(
        "id_nodes",
        sa.Column("node", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node", name=op.f("pk_id_nodes")),
    )
    op.create_table(
        "shard_moves",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("first", sa.Integer(), nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shard_moves")),
    )
    op.create_table(
        "shard_fences",
        sa.Column("first", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("first", name=op.f("pk_shard_fences")),
    )
    op.create_table(
        "shard_traffic",
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("minute", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("reads", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("writes", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("shard", "minute", name=op.f("pk_shard_traffic")),
    )
    op.create_table(
        "shard_move_markers",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shard_move_markers")),
    )


def downgrade() -> None:
    for table in (
        "shard_move_markers",
        "shard_traffic",
        "shard_fences",
        "shard_moves",
        "id_nodes",
        "shard_map",
        "celebrities",
        "usernames",
        "timeline_state",
        "timelines",
        "user_counters",
        "followers",
    ):
        op.drop_table(table)
    op.drop_table("sessions")
    _sessions(["id"])
    with op.batch_alter_table("follows", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_follows_followee_id_users", "users", ["followee_id"], ["id"], ondelete="CASCADE"
        )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"], unique=False)
