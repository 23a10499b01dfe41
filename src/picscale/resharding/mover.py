"""The online shard move: logical shards ``first..last`` go from the cluster that holds
them to another while the service runs (Vitess MoveTables/SwitchTraffic, Citus shard
moves, on PostgreSQL 15's native logical replication).

Steps, each recorded in ``shard_moves`` so that a killed move can be resumed or rolled
back: check, publish (publication with a row filter on the key, slot, fence triggers),
copy (subscription on the target, initial copy, then streaming), fence (writes to the
range fail with PS001 and are retried by the router once the map changes; the writes in
flight finish), marker (a row written under the fence has arrived at the target, so
everything before it has), flip (the new map), lift (subscription, slot, publication
go), cleanup (the source rows go in batches, then the fence). Until the flip the map
names the source and nothing is lost; after it, only the cleanup of the source remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import text

from picscale.data.schema import SHARDED
from picscale.ids import EPOCH_MS, MAX_SEQUENCE, compose
from picscale.resharding import replication as pg
from picscale.resharding.records import MoveRecord, create_move, move_under_way, save_move
from picscale.tiers.db.database import Database
from picscale.tiers.db.shard_map import ShardMap

if TYPE_CHECKING:
    from picscale.tiers.db.map_store import MapStore

log = structlog.get_logger(__name__)

# every process follows the map within a second (MapWatcher polls 4 times a second):
# the source's rows stay readable this long after the flip, for a process that still
# routes by the old map; its writes meet the fence and are replayed on the new map
CLEANUP_GRACE_SECONDS = 2.0

STEPS = ("check", "publish", "copy", "fence", "marker", "flip", "lift", "cleanup")
BEFORE_FLIP = STEPS[: STEPS.index("flip") + 1]
MOVE_LOCK = 0x7073_6D6F_7665  # pg_advisory_lock key: one move process at a time
POSTGRES_ONLY = "shard moves need PostgreSQL clusters (logical replication)"
CATCH_UP_TIMEOUT = 600.0  # replication lag before the fence, at most
COPY_POLL = 0.2
MARKER_POLL = 0.005


class MoveError(Exception):
    """A move cannot go on; the message says what to do."""


class MoveRefused(MoveError):
    """A move that did not start: nothing was changed."""


class NoMoveUnderWay(MoveError):
    def __init__(self) -> None:
        super().__init__("no move is under way")


class MoveInterrupted(Exception):
    """Raised by the ``fail_after`` hook: the move stops as if its process were killed."""


@dataclass(frozen=True)
class MoveReport:
    move_id: int
    first: int
    last: int
    source: str
    target: str
    rows_copied: int
    copy_seconds: float
    write_pause_seconds: float | None  # fence to flip; None when resumed past the flip
    map_version: int

    @property
    def shards(self) -> str:
        return f"{self.first}-{self.last}" if self.first != self.last else str(self.first)

    @property
    def rows_per_second(self) -> float:
        return self.rows_copied / self.copy_seconds if self.copy_seconds > 0 else 0.0

    def describe(self) -> str:
        pause = (
            f"{self.write_pause_seconds * 1000:.0f} ms"
            if self.write_pause_seconds is not None
            else "not measured (resumed after the flip)"
        )
        return (
            f"moved shards {self.shards} from {self.source} to {self.target}: "
            f"{self.rows_copied} rows copied in {self.copy_seconds:.1f} s "
            f"({self.rows_per_second:.0f} rows/s), write pause {pause}, "
            f"map v{self.map_version}"
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ShardMover:
    def __init__(
        self,
        clusters: Mapping[str, Database],
        global_db: Database,
        store: MapStore,
        *,
        fence_timeout: float = 1.5,
        progress: Callable[[str], None] | None = None,
        cleanup_grace: float = CLEANUP_GRACE_SECONDS,
        marker_timeout: float = 5.0,
        fence_attempts: int = 5,
        fail_after: str | None = None,
    ) -> None:
        if fail_after is not None and fail_after not in STEPS:
            raise ValueError(f"fail_after must name a step: {', '.join(STEPS)}")
        self.clusters = clusters
        self.global_db = global_db
        self.store = store
        self.fence_timeout = fence_timeout
        self._cleanup_grace = cleanup_grace
        self.marker_timeout = marker_timeout
        self.fence_attempts = fence_attempts
        self.fail_after = fail_after
        self._progress = progress
        self._fence_at: float | None = None  # monotonic, this process's fence
        self._last_marker_ms = 0

    # -- the commands -------------------------------------------------------------------

    async def move(self, first: int, last: int, target: str) -> MoveReport:
        self._require_postgres()
        async with self._exclusive():
            source, current = await self._check(first, last, target)
            record = await create_move(self.global_db, first, last, source, target, "check")
            record.detail["map_version_before"] = current.version
            self._say(f"move {record.id}: shards {record.shards} from {source} to {target}")
            return await self._run(record)

    async def resume(self) -> MoveReport:
        self._require_postgres()
        async with self._exclusive():
            record = await move_under_way(self.global_db)
            if record is None:
                raise NoMoveUnderWay()
            self._say(f"resuming {record.describe()}")
            record.state, record.error = "running", None
            flipped = await self._flipped(record)
            if flipped and record.step in BEFORE_FLIP:
                record.step = "lift"  # the flip was published, not recorded: the fence stays
            elif not flipped and record.step in ("fence", "marker", "flip"):
                # a fence left by the dead process: lift it, and fence anew
                await pg.lower_fence(self._source(record), record.first)
                record.step = "fence"
            await save_move(self.global_db, record)
            return await self._run(record)

    async def abort(self) -> None:
        """Roll back a move that has not flipped the map: the target loses its copy."""
        self._require_postgres()
        async with self._exclusive():
            record = await move_under_way(self.global_db)
            if record is None:
                raise NoMoveUnderWay()
            if record.step in ("lift", "cleanup") or await self._flipped(record):
                raise MoveError(
                    f"move {record.id} has flipped the map to {record.target} already: it "
                    "cannot be rolled back, only finished: run `picscale shards move "
                    f"--resume` (only the cleanup of {record.source} remains)"
                )
            source, target = self._source(record), self.clusters[record.target]
            self._say(f"aborting {record.describe()}")
            oid = await self._subscription_oid(record)
            await pg.drop_subscription(target, record.name)
            await pg.drop_slots(source, record.name, oid)
            await pg.drop_publication(source, record.name)
            if await pg.lower_fence(source, record.first) == 0:
                await pg.drop_fence_triggers(source)
            deleted = await pg.delete_range(target, record.first, record.last)
            await pg.delete_markers(source, record.first, record.last)
            self._say(f"abort: {deleted} copied rows deleted from {record.target}")
            record.state = "aborted"
            record.detail.setdefault("steps", {})["abort"] = {"done": _now()}
            await save_move(self.global_db, record)
            self._say(f"move {record.id} aborted: shards {record.shards} stay on {record.source}")

    async def current(self) -> MoveRecord | None:
        return await move_under_way(self.global_db)

    # -- the run ------------------------------------------------------------------------

    async def _run(self, record: MoveRecord) -> MoveReport:
        steps: dict[str, Callable[[MoveRecord], Awaitable[str]]] = {
            "check": self._step_check,
            "publish": self._step_publish,
            "copy": self._step_copy,
            "fence": self._step_fence,
            "marker": self._step_marker,
            "flip": self._step_flip,
            "lift": self._step_lift,
            "cleanup": self._step_cleanup,
        }
        try:
            while record.step != "done":
                step = record.step
                started = _now()
                following = await steps[step](record)
                done = record.detail.setdefault("steps", {}).setdefault(step, {})
                done.update(started=done.get("started", started), done=_now())
                record.step = following
                if following == "done":
                    record.state = "done"
                await save_move(self.global_db, record)
                if self.fail_after == step:
                    raise MoveInterrupted(f"move {record.id}: stopped after step {step}")
        except MoveInterrupted:
            raise
        except (Exception, asyncio.CancelledError) as exc:
            await asyncio.shield(self._failed(record, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise MoveError(self._failure_message(record, exc)) from exc
        return self._report(record)

    async def _failed(self, record: MoveRecord, exc: BaseException) -> None:
        record.state = "failed"
        record.error = f"{record.step}: {exc}"[:2000]
        log.error("shard_move_failed", move=record.id, step=record.step, error=repr(exc)[:500])
        with contextlib.suppress(Exception):
            if record.step in BEFORE_FLIP and not await self._flipped(record):
                # never leave writes to the range refused behind a move that stopped
                await pg.lower_fence(self._source(record), record.first)
        with contextlib.suppress(Exception):
            await save_move(self.global_db, record)

    def _failure_message(self, record: MoveRecord, exc: BaseException) -> str:
        head = f"move {record.id} failed at step {record.step}: {exc}"
        if record.step in BEFORE_FLIP:
            return (
                f"{head}\nThe map still names {record.source} for shards {record.shards} and "
                "no data is lost: resume with `picscale shards move --resume`, or roll back "
                "with `picscale shards move --abort`."
            )
        return (
            f"{head}\nThe map names {record.target} already: finish with "
            "`picscale shards move --resume` (only the cleanup of the source remains)."
        )

    def _report(self, record: MoveRecord) -> MoveReport:
        d = record.detail
        report = MoveReport(
            move_id=record.id,
            first=record.first,
            last=record.last,
            source=record.source,
            target=record.target,
            rows_copied=int(d.get("rows_copied", 0)),
            copy_seconds=float(d.get("copy_seconds", 0.0)),
            write_pause_seconds=d.get("write_pause_seconds"),
            map_version=int(d.get("map_version_after", 0)),
        )
        self._say(report.describe())
        return report

    # -- the steps ----------------------------------------------------------------------

    async def _step_check(self, record: MoveRecord) -> str:
        target = self.clusters[record.target]
        leftovers = sum((await pg.count_range(target, record.first, record.last)).values())
        if leftovers:
            self._say(
                f"check: deleting {leftovers} rows of shards {record.shards} left on "
                f"{record.target} by an earlier move"
            )
            await pg.delete_range(target, record.first, record.last)
        return "publish"

    async def _step_publish(self, record: MoveRecord) -> str:
        source = self._source(record)
        await pg.create_publication(source, record.name, record.first, record.last)
        await pg.install_fence_triggers(source)
        await pg.create_slot(source, record.name)
        self._say(
            f"publish: publication {record.name} on {record.source} "
            f"({len(SHARDED)} tables, row filter on shards {record.shards}), fence triggers"
        )
        return "copy"

    async def _step_copy(self, record: MoveRecord) -> str:
        source, target = self._source(record), self.clusters[record.target]
        d = record.detail
        d.setdefault("copy_started", time.time())
        await pg.create_subscription(target, record.name, source.dsn)
        d["subscription_oid"] = await pg.subscription_oid(target, record.name)
        await save_move(self.global_db, record)  # abort needs the oid to find sync slots
        counted: dict[str, int] = d.setdefault("copied", {})
        baseline: int | None = None
        said = time.monotonic()
        while True:
            state = await pg.copy_state(target, record.name)
            if baseline is None:
                baseline = state.errors
            elif state.errors > baseline:
                raise MoveError(
                    f"replication into {record.target} fails ({state.errors - baseline} "
                    f"errors, see {record.target}'s server log)"
                )
            for table in state.ready:
                if table not in counted:
                    counted[table] = (
                        await pg.count_range(target, record.first, record.last, [table])
                    )[table]
            rows = sum(counted.values()) + sum(
                n for t, n in state.copying.items() if t not in counted
            )
            elapsed = max(time.time() - d["copy_started"], 1e-6)
            done = len(state.tables) == len(SHARDED) and len(state.ready) == len(state.tables)
            if done or time.monotonic() - said >= 1.0:
                said = time.monotonic()
                self._say(
                    f"copy: {len(state.ready)}/{len(SHARDED)} tables in sync, "
                    f"{rows} rows ({rows / elapsed:.0f} rows/s)"
                )
            if done:
                d["rows_copied"], d["copy_seconds"] = rows, round(elapsed, 3)
                return "fence"
            await asyncio.sleep(COPY_POLL)

    async def _step_fence(self, record: MoveRecord) -> str:
        source = self._source(record)
        d = record.detail
        while True:
            d["fence_attempts"] = attempt = int(d.get("fence_attempts", 0)) + 1
            await self._catch_up(record)
            xids = await pg.raise_fence(source, record.first, record.last)
            self._fence_at = time.monotonic()
            deadline = self._fence_at + self.fence_timeout
            self._say(
                f"fence: raised on {record.source} for shards {record.shards}, waiting for "
                f"{len(xids)} transactions in flight (attempt {attempt}/{self.fence_attempts})"
            )
            while True:
                running = await pg.still_running(source, xids)
                if not running or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(MARKER_POLL)
            if not running:
                d["fence_at"] = time.time()
                self._say(
                    f"fence: up; the transactions in flight finished in "
                    f"{(time.monotonic() - self._fence_at) * 1000:.0f} ms"
                )
                return "marker"
            await pg.lower_fence(source, record.first)
            self._fence_at = None
            if attempt >= self.fence_attempts:
                raise MoveError(
                    f"transactions on {record.source} ran past the fence's "
                    f"{self.fence_timeout} s {attempt} times (the fence was lifted each time)"
                )
            self._say(
                f"fence: {running} transactions on {record.source} still running after "
                f"{self.fence_timeout} s: fence lifted, trying again "
                f"({attempt}/{self.fence_attempts})"
            )
            await asyncio.sleep(min(0.25 * attempt, 2.0))

    async def _step_marker(self, record: MoveRecord) -> str:
        source, target = self._source(record), self.clusters[record.target]
        marker = self._marker_id(record.first)
        await pg.write_marker(source, marker)
        if await pg.wait_marker(target, marker, self.marker_timeout, MARKER_POLL):
            return "flip"
        await pg.lower_fence(source, record.first)
        self._fence_at = None
        if int(record.detail.get("fence_attempts", 0)) >= self.fence_attempts:
            raise MoveError(
                f"the marker written under the fence did not reach {record.target} within "
                f"{self.marker_timeout} s (the fence was lifted)"
            )
        self._say(
            f"marker: not on {record.target} after {self.marker_timeout} s: "
            "fence lifted, trying again"
        )
        return "fence"

    async def _step_flip(self, record: MoveRecord) -> str:
        for _ in range(5):
            current = await self.store.load()
            if current is None:
                raise MoveError("the shard map is gone from its store")
            owners = current.owners(record.first, record.last)
            if owners == {record.target}:
                version = current.version  # published by a process that died after it
                break
            if owners != {record.source}:
                raise MoveError(
                    f"the map changed under the move: shards {record.shards} are on "
                    f"{', '.join(sorted(owners))} in v{current.version}"
                )
            new = current.assign(record.first, record.last, record.target)
            if await self.store.publish(new):
                version = new.version
                break
        else:
            raise MoveError("the shard map kept changing under the flip")
        d = record.detail
        d["map_version_after"] = version
        d["flipped_at"] = time.time()
        if self._fence_at is not None:
            d["write_pause_seconds"] = round(time.monotonic() - self._fence_at, 4)
            self._say(
                f"flip: map v{version} names {record.target} for shards {record.shards} "
                f"(writes paused {d['write_pause_seconds'] * 1000:.0f} ms)"
            )
        return "lift"

    async def _step_lift(self, record: MoveRecord) -> str:
        source, target = self._source(record), self.clusters[record.target]
        oid = await self._subscription_oid(record)
        await pg.drop_subscription(target, record.name)
        await pg.drop_slots(source, record.name, oid)
        await pg.drop_publication(source, record.name)
        self._say(f"lift: subscription, slot and publication {record.name} dropped")
        return "cleanup"

    async def _step_cleanup(self, record: MoveRecord) -> str:
        source, target = self._source(record), self.clusters[record.target]
        # a delete on the source must not reach the target: replication is gone first
        if await pg.subscription_oid(target, record.name) is not None:
            raise MoveError(f"subscription {record.name} is still on {record.target}")
        await pg.drop_publication(source, record.name)
        # a process that has not seen the new map yet still reads the source
        grace = float(record.detail.get("flipped_at", 0)) + self._cleanup_grace - time.time()
        if grace > 0:
            self._say(f"cleanup: waiting {grace:.1f} s for every process to follow the map")
            await asyncio.sleep(grace)
        said = [time.monotonic()]

        def deleting(n: int) -> None:
            if time.monotonic() - said[0] >= 1.0:
                said[0] = time.monotonic()
                self._say(f"cleanup: {n} rows deleted from {record.source}")

        await pg.delete_markers(source, record.first, record.last)
        await pg.delete_markers(target, record.first, record.last)
        deleted = await pg.delete_range(source, record.first, record.last, progress=deleting)
        if await pg.lower_fence(source, record.first) == 0:
            await pg.drop_fence_triggers(source)
        record.detail["rows_deleted"] = deleted
        self._say(f"cleanup: {deleted} rows deleted from {record.source}, fence removed")
        return "done"

    # -- helpers ------------------------------------------------------------------------

    async def _catch_up(self, record: MoveRecord) -> None:
        """Before the fence: wait out the replication lag, so that the fenced wait for
        the marker is short."""
        marker = self._marker_id(record.first)
        await pg.write_marker(self._source(record), marker)
        target = self.clusters[record.target]
        if not await pg.wait_marker(target, marker, CATCH_UP_TIMEOUT, 0.02):
            raise MoveError(
                f"replication to {record.target} lags more than {CATCH_UP_TIMEOUT:.0f} s"
            )

    def _marker_id(self, shard: int) -> int:
        ms = max(time.time_ns() // 1_000_000 - EPOCH_MS, self._last_marker_ms + 1)
        self._last_marker_ms = ms
        return compose(ms, shard, random.randrange(MAX_SEQUENCE + 1))

    async def _flipped(self, record: MoveRecord) -> bool:
        current = await self.store.load()
        return current is not None and current.owners(record.first, record.last) == {record.target}

    async def _subscription_oid(self, record: MoveRecord) -> int | None:
        """Its table-sync slots are named after it (a process may have died before
        recording it)."""
        oid = record.detail.get("subscription_oid")
        if oid is None:
            oid = await pg.subscription_oid(self.clusters[record.target], record.name)
        return int(oid) if oid is not None else None

    def _source(self, record: MoveRecord) -> Database:
        return self.clusters[record.source]

    def _say(self, line: str) -> None:
        if self._progress is not None:  # an operator's command shows them
            self._progress(line)
        else:
            log.info("shard_move", line=line)

    def _require_postgres(self) -> None:
        dbs = [*self.clusters.values(), self.global_db]
        if any(db.dialect != "postgresql" for db in dbs):
            raise MoveRefused(POSTGRES_ONLY)

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """One process moves shards at a time (a second --resume waits for nothing)."""
        async with self.global_db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": MOVE_LOCK})
            if not got:
                raise MoveRefused("another process is running a shard move right now")
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    await conn.scalar(text("SELECT pg_advisory_unlock(:key)"), {"key": MOVE_LOCK})

    async def _check(self, first: int, last: int, target: str) -> tuple[str, ShardMap]:
        names = ", ".join(self.clusters)
        shards = f"{first}-{last}" if first != last else str(first)
        if target not in self.clusters:
            raise MoveRefused(f"no cluster named {target!r}: the layout has {names}")
        current = await self.store.load()
        if current is None:
            raise MoveRefused("no shard map is published yet: start the service once")
        if not 0 <= first <= last < current.logical:
            raise MoveRefused(f"shards {shards} lie outside 0-{current.logical - 1}")
        owners = current.owners(first, last)
        if len(owners) != 1:
            raise MoveRefused(
                f"shards {shards} lie on several clusters ({', '.join(sorted(owners))}): "
                "move a range that one cluster holds (see `picscale shards status`)"
            )
        source = owners.pop()
        if source == target:
            raise MoveRefused(f"shards {shards} are on {target} already")
        if source not in self.clusters:
            raise MoveRefused(f"the map names cluster {source!r}, which the layout lacks ({names})")
        under_way = await move_under_way(self.global_db)
        if under_way is not None:
            raise MoveRefused(
                f"{under_way.describe()} is under way: finish it with `picscale shards move "
                "--resume` or roll it back with `--abort` first"
            )
        src, dst = self.clusters[source], self.clusters[target]
        if not src.dsn:
            raise MoveRefused(f"cluster {source} has no connection string to subscribe to")
        for name, db in ((source, src), (target, dst)):
            facts = await pg.server_facts(db)
            if facts.version < 150000:
                raise MoveRefused(f"{name} runs PostgreSQL {facts.version}: moves need 15+")
            if not facts.superuser:
                raise MoveRefused(
                    f"{name} is reached as {facts.user}, not a superuser: a move subscribes "
                    "and deletes past the fence, which PostgreSQL 15 allows superusers only"
                )
        wal_level = (await pg.server_facts(src)).wal_level
        if wal_level != "logical":
            raise MoveRefused(
                f"{source} runs with wal_level={wal_level}: a move streams rows by logical "
                "replication, which needs wal_level=logical (a restart)"
            )
        differences = pg.schema_differences(await pg.schema_of(src), await pg.schema_of(dst))
        if differences:
            raise MoveRefused(
                f"the schemas of {source} and {target} differ (DDL is not replicated: "
                "migrate both to one revision first): " + "; ".join(differences)
            )
        return source, current
