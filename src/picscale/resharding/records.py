"""The record of each shard move in the global ``shard_moves`` table: its step, its
state, and what a later process needs to resume or roll it back (``detail``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update

from picscale.data.schema import shard_moves
from picscale.tiers.db.database import Database

# a move is under way until it is done or aborted; a failed one waits for --resume/--abort
UNDER_WAY = ("running", "failed")


@dataclass
class MoveRecord:
    id: int
    first: int
    last: int
    source: str
    target: str
    step: str  # the step to run next (or running now)
    state: str  # running | failed | done | aborted
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def shards(self) -> str:
        return f"{self.first}-{self.last}" if self.first != self.last else str(self.first)

    @property
    def name(self) -> str:
        """The publication's, slot's and subscription's name."""
        return f"picscale_move_{self.id}"

    def describe(self) -> str:
        return (
            f"move {self.id}: shards {self.shards} {self.source} -> {self.target}, "
            f"step {self.step}, {self.state}"
        )


def _record(row: Any) -> MoveRecord:
    return MoveRecord(
        id=row.id,
        first=row.first,
        last=row.last,
        source=row.source,
        target=row.target,
        step=row.step,
        state=row.state,
        detail=dict(row.detail or {}),
        error=row.error,
        started_at=_utc(row.started_at),
        updated_at=_utc(row.updated_at),
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def create_move(
    db: Database, first: int, last: int, source: str, target: str, step: str
) -> MoveRecord:
    now = datetime.now(UTC)
    async with db.write() as tx:
        latest = await tx.conn.scalar(select(func.max(shard_moves.c.id)))
        record = MoveRecord(
            id=int(latest or 0) + 1,
            first=first,
            last=last,
            source=source,
            target=target,
            step=step,
            state="running",
            started_at=now,
            updated_at=now,
        )
        await tx.conn.execute(
            shard_moves.insert().values(
                id=record.id,
                first=first,
                last=last,
                source=source,
                target=target,
                step=step,
                state=record.state,
                detail={},
                error=None,
                started_at=now,
                updated_at=now,
            )
        )
    return record


async def save_move(db: Database, record: MoveRecord) -> None:
    record.updated_at = datetime.now(UTC)
    async with db.write() as tx:
        await tx.conn.execute(
            update(shard_moves)
            .where(shard_moves.c.id == record.id)
            .values(
                step=record.step,
                state=record.state,
                detail=record.detail,
                error=record.error,
                updated_at=record.updated_at,
            )
        )


async def move_under_way(db: Database) -> MoveRecord | None:
    """The move that is running, or failed and waits for --resume or --abort."""
    async with db.read_on_primary("shards") as conn:
        row = (
            await conn.execute(
                select(shard_moves)
                .where(shard_moves.c.state.in_(UNDER_WAY))
                .order_by(shard_moves.c.id.desc())
                .limit(1)
            )
        ).first()
    return _record(row) if row is not None else None
