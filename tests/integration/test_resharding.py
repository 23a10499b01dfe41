"""Online shard moves between two real PostgreSQL servers (logical replication): a move
under concurrent writes loses no acknowledged write, the fence, an aborted move, a
resumed move, and the moves that are refused. Then ``shards status`` and the rebalance
planner."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from picscale.ids import EPOCH_MS, compose, shard_of
from picscale.resharding.mover import (
    POSTGRES_ONLY,
    MoveError,
    MoveInterrupted,
    MoveRefused,
    NoMoveUnderWay,
    ShardMover,
)
from picscale.settings import Settings
from picscale.tiers.db.database import FENCE_SQLSTATE, Database, ShardMoving
from picscale.tiers.db.engines import async_url, postgres_engine
from picscale.tiers.db.map_store import TableMapStore
from picscale.tiers.db.migrate import alembic_config
from picscale.tiers.db.shard_map import ShardMap
from tests.support.pg import PostgresDatabase, PostgresServer, start_postgres
from tests.support.waiting import async_wait_until

MOVING = (100, 199)  # on c1 in the even map of two clusters (c1 0-4095, c2 4096-8191)
STAYING = (300, 399)  # on c1, never moved
_ids = itertools.count()
_base_ms = time.time_ns() // 1_000_000 - EPOCH_MS


def new_id(shard: int) -> int:
    n = next(_ids)
    return compose(_base_ms + n // 1024, shard, n % 1024)


@pytest.fixture(scope="module")
def second_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.close()


@dataclass
class Layout:
    pg: dict[str, PostgresDatabase]
    clusters: dict[str, Database]
    store: TableMapStore
    lines: list[str] = field(default_factory=list)

    def mover(self, **kwargs: Any) -> ShardMover:
        return ShardMover(
            self.clusters, self.clusters["c1"], self.store, progress=self.lines.append, **kwargs
        )

    def count(self, cluster: str, table: str, shards: tuple[int, int]) -> int:
        column = "owner_id" if table == "photos" else "id"
        where = f"(({column} >> 10) & 8191) BETWEEN {shards[0]} AND {shards[1]}"
        return int(self.pg[cluster].sql(f"SELECT count(*) FROM {table} WHERE {where}"))


def _migrate(url: str) -> None:
    command.upgrade(alembic_config(url), "head")


def _drop_replication(layout: Layout) -> None:
    """What a failed test may leave: subscriptions hold workers and slots."""
    c1, c2 = layout.pg["c1"], layout.pg["c2"]
    for sub in c2.sql(
        "SELECT subname FROM pg_subscription WHERE subdbid = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    ).split():
        c2.sql(f"ALTER SUBSCRIPTION {sub} DISABLE")
        c2.sql(f"ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)")
        c2.sql(f"DROP SUBSCRIPTION {sub}")
    c1.sql(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE database = current_database() AND NOT active"
    )


@pytest.fixture
async def layout(
    postgres_server: PostgresServer, second_server: PostgresServer
) -> AsyncIterator[Layout]:
    pg = {"c1": postgres_server.new_database(), "c2": second_server.new_database()}
    for db in pg.values():  # one at a time: alembic's context is global to the process
        await asyncio.to_thread(_migrate, db.url)
    settings = Settings()
    clusters = {}
    for name, db in pg.items():
        engine = postgres_engine(async_url(db.url), settings)
        clusters[name] = Database(engine, engine, "postgresql", name=name, dsn=db.url)
    store = TableMapStore(clusters["c1"])
    assert await store.publish(ShardMap.even(["c1", "c2"]))
    made = Layout(pg, clusters, store)
    yield made
    _drop_replication(made)
    for db in clusters.values():
        await db.dispose()


# -- writing as the service does: routed by the map, retried when a fence says so --------


def fenced(exc: BaseException) -> bool:
    if isinstance(exc, ShardMoving):
        return True
    cause = getattr(exc, "orig", None)
    return isinstance(exc, DBAPIError) and FENCE_SQLSTATE in repr(cause)


@dataclass
class Router:
    layout: Layout
    map: ShardMap
    fenced: int = 0
    pauses: list[float] = field(default_factory=list)

    async def write(self, key: int, work: Callable[[AsyncConnection], Awaitable[None]]) -> None:
        """Commit ``work`` on the cluster of ``key``: a write that meets the fence waits
        for the next map and runs again there (as the service's router does)."""
        met_fence: float | None = None
        while True:
            seen = self.map
            db = self.layout.clusters[seen.cluster_of(shard_of(key))]
            try:
                async with db.write() as tx:
                    await work(tx.conn)
            except Exception as exc:
                if not fenced(exc):
                    raise
                self.fenced += 1
                met_fence = met_fence or time.monotonic()
                self.map = await async_wait_until(
                    lambda v=seen.version: self._newer(v), within=10, what="a newer shard map"
                )
                continue
            if met_fence is not None:
                self.pauses.append(time.monotonic() - met_fence)
            return

    async def _newer(self, version: int) -> ShardMap | None:
        current = await self.layout.store.load()
        return current if current is not None and current.version > version else None


async def insert_user(conn: AsyncConnection, user_id: int, photos: int = 1) -> None:
    now = datetime.now(UTC)
    await conn.execute(
        text(
            "INSERT INTO users (id, username, display_name, password_hash, created_at) "
            "VALUES (:id, :name, :name, 'x', :now)"
        ),
        {"id": user_id, "name": f"u{user_id}", "now": now},
    )
    for _ in range(photos):
        await conn.execute(
            text(
                "INSERT INTO photos (id, owner_id, format, status, width, height, created_at) "
                "VALUES (:id, :owner, 'jpeg', 'ready', 10, 10, :now)"
            ),
            {"id": new_id(shard_of(user_id)), "owner": user_id, "now": now},
        )


async def seed(db: Database, shards: tuple[int, int], users: int) -> list[int]:
    ids = [new_id(random.randint(*shards)) for _ in range(users)]
    async with db.write() as tx:
        for user_id in ids:
            await insert_user(tx.conn, user_id)
    return ids


# -- the move --------------------------------------------------------------------------


async def test_move_under_concurrent_writes_loses_no_acknowledged_write(layout: Layout) -> None:
    c1 = layout.clusters["c1"]
    seeded = await seed(c1, MOVING, 1500)
    staying = await seed(c1, STAYING, 200)
    router = Router(layout, await layout.store.load() or ShardMap.even(["c1"]))
    acked: list[int] = []
    bumps: dict[int, int] = {}  # user -> acknowledged photo_count increments
    stop = asyncio.Event()

    async def writer() -> None:
        mine: list[int] = []
        while not stop.is_set():
            user_id = new_id(random.randint(*MOVING))
            await router.write(user_id, lambda conn, u=user_id: insert_user(conn, u, photos=2))
            acked.append(user_id)
            mine.append(user_id)
            target = random.choice(mine)

            async def bump(conn: AsyncConnection, u: int = target) -> None:
                await conn.execute(
                    text("UPDATE users SET photo_count = photo_count + 1 WHERE id = :id"),
                    {"id": u},
                )

            await router.write(target, bump)
            bumps[target] = bumps.get(target, 0) + 1

    writers = [asyncio.create_task(writer()) for _ in range(4)]
    await async_wait_until(lambda: _at_least(acked, 20), what="writes before the move")
    report = await layout.mover().move(*MOVING, "c2")
    after = len(acked) + 20
    await async_wait_until(lambda: _at_least(acked, after), what="writes after the move")
    stop.set()
    await asyncio.gather(*writers)

    assert report.source == "c1" and report.target == "c2"
    assert report.map_version == 2
    assert report.rows_copied >= 2 * len(seeded)
    assert report.write_pause_seconds is not None and report.write_pause_seconds < 2.0
    current = await layout.store.load()
    assert current is not None and current.owners(*MOVING) == {"c2"}

    c2 = layout.pg["c2"]
    present = set(c2.sql(f"SELECT id FROM users WHERE id IN ({_list(seeded + acked)})").split())
    assert {str(i) for i in seeded + acked} == present
    assert layout.count("c2", "photos", MOVING) == len(seeded) + 2 * len(acked)
    counts = dict(
        line.split("|")
        for line in c2.sql(
            f"SELECT id, photo_count FROM users WHERE id IN ({_list(list(bumps))})"
        ).split()
    )
    assert {int(k): int(v) for k, v in counts.items()} == bumps
    # the source keeps what stays, and nothing of what moved; no fence, trigger, slot left
    assert layout.count("c1", "users", MOVING) == 0
    assert layout.count("c1", "photos", MOVING) == 0
    assert layout.count("c1", "users", STAYING) == len(staying)
    assert layout.count("c2", "users", STAYING) == 0
    _assert_no_move_left(layout)
    print("\n" + "\n".join(layout.lines))
    print(
        f"move: {report.describe()}; writes met the fence {router.fenced} times, "
        f"longest wait {max(router.pauses, default=0) * 1000:.0f} ms"
    )


def _list(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids)


async def _at_least(items: list[int], n: int) -> bool:
    return len(items) >= n


def _assert_no_move_left(layout: Layout) -> None:
    c1, c2 = layout.pg["c1"], layout.pg["c2"]
    assert c1.sql("SELECT count(*) FROM shard_fences") == "0"
    assert c1.sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'picscale_shard_fence'") == "0"
    assert c1.sql("SELECT count(*) FROM pg_publication") == "0"
    assert (
        c1.sql("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()")
        == "0"
    )
    assert c2.sql("SELECT count(*) FROM shard_move_markers") == "0"
    assert c1.sql("SELECT count(*) FROM shard_move_markers") == "0"
    assert (
        c2.sql(
            "SELECT count(*) FROM pg_subscription WHERE subdbid = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        == "0"
    )


async def _move_stopped_after(layout: Layout, step: str) -> None:
    """A move whose process dies right after ``step`` (nothing tidied up)."""
    with pytest.raises(MoveInterrupted):
        await layout.mover(fail_after=step).move(*MOVING, "c2")


async def test_the_fence_refuses_writes_until_the_flip_then_they_land_on_the_target(
    layout: Layout,
) -> None:
    c1 = layout.clusters["c1"]
    await seed(c1, MOVING, 50)
    before = await layout.store.load()
    assert before is not None
    await _move_stopped_after(layout, "fence")  # the fence is up, the map not flipped
    user_id = new_id(MOVING[0] + 5)
    with pytest.raises(ShardMoving):
        async with c1.write() as tx:
            await insert_user(tx.conn, user_id)
    async with c1.write() as tx:  # the shards that stay are not fenced
        await insert_user(tx.conn, new_id(STAYING[0]))

    router = Router(layout, before)
    write = asyncio.create_task(router.write(user_id, lambda conn: insert_user(conn, user_id)))
    await async_wait_until(lambda: _truthy(router.fenced), what="the write to meet the fence")
    assert not write.done()
    report = await layout.mover().resume()
    await asyncio.wait_for(write, 10)
    assert report.map_version == before.version + 1
    assert layout.pg["c2"].sql(f"SELECT count(*) FROM users WHERE id = {user_id}") == "1"
    assert layout.pg["c1"].sql(f"SELECT count(*) FROM users WHERE id = {user_id}") == "0"
    _assert_no_move_left(layout)


async def _truthy(value: object) -> bool:
    return bool(value)


async def test_writes_in_flight_at_the_fence_finish_and_move(layout: Layout) -> None:
    c1 = layout.clusters["c1"]
    await seed(c1, MOVING, 50)
    await _move_stopped_after(layout, "copy")
    # a transaction that wrote to a moving shard before the fence, and commits under it
    held_id = new_id(MOVING[1])
    held = await c1.engine.connect()
    await held.begin()
    await insert_user(held, held_id)
    raised = asyncio.Event()

    def progress(line: str) -> None:
        layout.lines.append(line)
        if line.startswith("fence: raised"):
            raised.set()

    mover = ShardMover(layout.clusters, c1, layout.store, progress=progress, fence_timeout=10)
    resumed = asyncio.create_task(mover.resume())
    await asyncio.wait_for(raised.wait(), 30)
    await held.commit()
    await held.close()
    report = await resumed
    assert any("waiting for 1 transactions" in line for line in layout.lines), layout.lines
    assert layout.pg["c2"].sql(f"SELECT count(*) FROM users WHERE id = {held_id}") == "1"
    assert layout.pg["c1"].sql(f"SELECT count(*) FROM users WHERE id = {held_id}") == "0"
    assert report.write_pause_seconds is not None


async def test_a_fence_that_cannot_hold_is_lifted_and_the_move_fails_cleanly(
    layout: Layout,
) -> None:
    c1 = layout.clusters["c1"]
    await seed(c1, MOVING, 50)
    await _move_stopped_after(layout, "copy")
    held = await c1.engine.connect()  # in flight for longer than the fence may stand
    await held.begin()
    await insert_user(held, new_id(MOVING[0]))
    mover = layout.mover(fence_timeout=0.2, fence_attempts=2)
    with pytest.raises(MoveError, match="ran past the fence") as failure:
        await mover.resume()
    assert "--resume" in str(failure.value) and "--abort" in str(failure.value)
    await held.rollback()
    await held.close()
    current = await layout.store.load()
    assert current is not None and current.version == 1
    assert layout.pg["c1"].sql("SELECT count(*) FROM shard_fences") == "0"
    async with c1.write() as tx:  # the range takes writes again, on the source
        await insert_user(tx.conn, new_id(MOVING[0]))
    record = await mover.current()
    assert record is not None and record.state == "failed" and record.step == "fence"
    await layout.mover().abort()
    assert layout.count("c2", "users", MOVING) == 0
    assert layout.count("c1", "users", MOVING) == 51


async def test_an_aborted_move_leaves_map_and_data_as_before(layout: Layout) -> None:
    c1 = layout.clusters["c1"]
    seeded = await seed(c1, MOVING, 300)
    await _move_stopped_after(layout, "copy")
    assert layout.count("c2", "users", MOVING) == len(seeded)  # the copy was made
    mover = layout.mover()
    await mover.abort()
    current = await layout.store.load()
    assert current is not None and current.version == 1 and current.owners(*MOVING) == {"c1"}
    assert layout.count("c2", "users", MOVING) == 0
    assert layout.count("c2", "photos", MOVING) == 0
    assert layout.count("c1", "users", MOVING) == len(seeded)
    assert layout.count("c1", "photos", MOVING) == len(seeded)
    _assert_no_move_left(layout)
    assert await mover.current() is None
    with pytest.raises(NoMoveUnderWay, match="no move is under way"):
        await mover.abort()
    # and the range can be moved again later
    report = await mover.move(*MOVING, "c2")
    assert report.rows_copied == 2 * len(seeded)


async def test_a_move_killed_after_the_copy_resumes_to_completion(layout: Layout) -> None:
    c1 = layout.clusters["c1"]
    seeded = await seed(c1, MOVING, 300)
    await _move_stopped_after(layout, "copy")
    mover = layout.mover()
    record = await mover.current()
    assert record is not None and (record.step, record.state) == ("fence", "running")
    later = await seed(c1, MOVING, 20)  # the map still names c1: writes go on there
    with pytest.raises(MoveRefused, match="under way"):
        await mover.move(STAYING[0], STAYING[1], "c2")
    report = await mover.resume()
    assert report.map_version == 2
    assert layout.count("c2", "users", MOVING) == len(seeded) + len(later)
    assert layout.count("c1", "users", MOVING) == 0
    _assert_no_move_left(layout)
    with pytest.raises(NoMoveUnderWay):
        await mover.resume()


async def test_a_move_past_the_flip_cannot_be_aborted_only_resumed(layout: Layout) -> None:
    c1 = layout.clusters["c1"]
    seeded = await seed(c1, MOVING, 100)
    await _move_stopped_after(layout, "flip")
    with pytest.raises(MoveError, match="--resume"):
        await layout.mover().abort()
    # until the cleanup, the source keeps refusing writes by processes on the old map
    with pytest.raises(ShardMoving):
        async with c1.write() as tx:
            await insert_user(tx.conn, new_id(MOVING[0]))
    report = await layout.mover().resume()
    assert report.write_pause_seconds is not None  # measured by the process that flipped
    assert layout.count("c2", "users", MOVING) == len(seeded)
    assert layout.count("c1", "users", MOVING) == 0
    _assert_no_move_left(layout)


async def test_moves_that_are_refused_change_nothing(layout: Layout) -> None:
    mover = layout.mover()
    with pytest.raises(MoveRefused, match="no cluster named 'c9': the layout has c1, c2"):
        await mover.move(*MOVING, "c9")
    with pytest.raises(MoveRefused, match="several clusters"):
        await mover.move(4000, 4200, "c2")
    with pytest.raises(MoveRefused, match="on c1 already"):
        await mover.move(*MOVING, "c1")
    layout.pg["c2"].sql("ALTER TABLE photos ADD COLUMN extra integer")
    with pytest.raises(MoveRefused, match=r"schemas of c1 and c2 differ.*photos.*extra"):
        await mover.move(*MOVING, "c2")
    assert await mover.current() is None
    with pytest.raises(NoMoveUnderWay):
        await mover.resume()
    current = await layout.store.load()
    assert current is not None and current.version == 1


async def test_a_move_on_sqlite_clusters_is_refused(tmp_path: Path) -> None:
    clusters = {}
    for name in ("c1", "c2"):
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / name}.db")
        clusters[name] = Database(engine, engine, "sqlite", name=name)
    store = TableMapStore(clusters["c1"])
    mover = ShardMover(clusters, clusters["c1"], store)
    for attempt in (mover.move(*MOVING, "c2"), mover.resume(), mover.abort()):
        with pytest.raises(MoveRefused) as refused:
            await attempt
        assert str(refused.value) == POSTGRES_ONLY
    for db in clusters.values():
        await db.dispose()
