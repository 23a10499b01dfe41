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
from picscale.resharding.rebalance import EVENLY, Move, plan_rebalance, rebalance, shard_loads
from picscale.resharding.status import ShardStats, format_status, shard_status
from picscale.settings import Settings, load_settings
from picscale.tiers.db.database import FENCE_SQLSTATE, Database, ShardMoving
from picscale.tiers.db.engines import async_url, postgres_engine
from picscale.tiers.db.map_store import TableMapStore
from picscale.tiers.db.migrate import MigrationRefused, alembic_config, upgrade
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
    """The target of the moves. Its launcher starts a new subscription's workers at most
    every wal_retrieve_retry_interval (5 s by default): short here, for the tests' sake."""
    server = start_postgres()
    server.sql("ALTER SYSTEM SET wal_retrieve_retry_interval = '100ms'", database="postgres")
    server.sql("SELECT pg_reload_conf()", database="postgres")
    yield server
    server.close()


@dataclass
class Layout:
    pg: dict[str, PostgresDatabase]
    clusters: dict[str, Database]
    store: TableMapStore
    lines: list[str] = field(default_factory=list)

    def mover(self, **kwargs: Any) -> ShardMover:
        # the writers here ask the store on every fence: no process to wait for
        kwargs.setdefault("cleanup_grace", 0.2)
        return ShardMover(
            self.clusters, self.clusters["c1"], self.store, progress=self.say, **kwargs
        )

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(f"{time.monotonic():.3f} {line}")

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
    """``users`` users on random shards of ``shards``, a photo each."""
    ids = [new_id(random.randint(*shards)) for _ in range(users)]
    now = datetime.now(UTC)
    async with db.write() as tx:
        await tx.conn.execute(
            text(
                "INSERT INTO users (id, username, display_name, password_hash, created_at) "
                "VALUES (:id, :name, :name, 'x', :now)"
            ),
            [{"id": i, "name": f"u{i}", "now": now} for i in ids],
        )
        await tx.conn.execute(
            text(
                "INSERT INTO photos (id, owner_id, format, status, width, height, created_at) "
                "VALUES (:id, :owner, 'jpeg', 'ready', 10, 10, :now)"
            ),
            [{"id": new_id(shard_of(i)), "owner": i, "now": now} for i in ids],
        )
    return ids


# -- the move --------------------------------------------------------------------------


async def test_move_under_concurrent_writes_loses_no_acknowledged_write(layout: Layout) -> None:
    c1 = layout.clusters["c1"]
    seeded = await seed(c1, MOVING, 10_000)
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
    in_range = "((id >> 10) & 8191) BETWEEN 100 AND 199"
    counts = {
        int(user_id): int(photo_count)
        for user_id, photo_count in (
            line.split("|")
            for line in c2.sql(f"SELECT id, photo_count FROM users WHERE {in_range}").split()
        )
    }
    assert set(counts) == set(seeded) | set(acked)  # every acknowledged insert, no other
    assert {u: counts[u] for u in bumps} == bumps  # every acknowledged update
    assert layout.count("c2", "photos", MOVING) == len(seeded) + 2 * len(acked)
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
    # DDL is not replicated: the schema stays as it is until the move is over
    settings = load_settings({}, database_url=f"c1={layout.pg['c1'].url};c2={layout.pg['c2'].url}")
    with pytest.raises(MigrationRefused, match="--resume"):
        await asyncio.to_thread(upgrade, settings)
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


async def test_a_move_on_sqlite_clusters_is_refused_and_status_works(tmp_path: Path) -> None:
    clusters = {}
    for name in ("c1", "c2"):
        url = f"sqlite:///{tmp_path / name}.db"
        await asyncio.to_thread(_migrate, url)
        engine = create_async_engine(async_url(url))
        clusters[name] = Database(engine, engine, "sqlite", name=name)
    store = TableMapStore(clusters["c1"])
    assert await store.publish(ShardMap.even(["c1", "c2"]))
    mover = ShardMover(clusters, clusters["c1"], store)
    for attempt in (mover.move(*MOVING, "c2"), mover.resume(), mover.abort()):
        with pytest.raises(MoveRefused) as refused:
            await attempt
        assert str(refused.value) == POSTGRES_ONLY
    await seed(clusters["c2"], (5000, 5010), 5)
    status = await shard_status(clusters, clusters["c1"], store)
    assert [(c.name, c.shards, c.rows) for c in status.clusters] == [
        ("c1", 4096, 0),
        ("c2", 4096, 10),
    ]
    assert all(c.bytes > 0 for c in status.clusters)
    for db in clusters.values():
        await db.dispose()


# -- shards status -----------------------------------------------------------------------


def _record_traffic(layout: Layout, hits: dict[int, int]) -> None:
    minute = int(time.time() // 60)
    values = ",".join(f"({shard}, {minute}, {n}, 0)" for shard, n in hits.items())
    layout.pg["c1"].sql(f"INSERT INTO shard_traffic (shard, minute, reads, writes) VALUES {values}")


async def test_status_shows_rows_bytes_ranges_hot_shards_and_the_move(layout: Layout) -> None:
    await seed(layout.clusters["c1"], MOVING, 40)
    await seed(layout.clusters["c2"], (5000, 5001), 10)
    _record_traffic(layout, {150: 900, 5000: 100})
    status = await shard_status(layout.clusters, layout.clusters["c1"], layout.store)
    c1, c2 = status.clusters
    assert (c1.name, c1.shards, c1.rows) == ("c1", 4096, 80)  # users and photos
    assert (c2.name, c2.shards, c2.rows) == ("c2", 4096, 20)
    assert c1.bytes > 0 and c2.bytes > 0
    assert [(h.shard, h.cluster, h.hits) for h in status.hottest] == [
        (150, "c1", 900),
        (5000, "c2", 100),
    ]
    lines = format_status(status).splitlines()
    assert lines[0] == "shard map v1: 8192 logical shards"
    assert lines[1].split() == ["cluster", "shards", "rows", "bytes", "ranges"]
    assert lines[2].split()[:3] == ["c1", "4096", "80"] and lines[2].endswith("  0-4095")
    assert lines[3].split()[:3] == ["c2", "4096", "20"] and lines[3].endswith("  4096-8191")
    assert lines[4] == "hottest shards (reads+writes, last 5 minutes):"
    assert lines[5].split() == ["shard", "150", "on", "c1", "900", "90.0%"]
    assert lines[-1] == "no move under way"

    await _move_stopped_after(layout, "copy")
    status = await shard_status(layout.clusters, layout.clusters["c1"], layout.store)
    assert status.clusters[1].rows == 20 + 80  # the copy, before the flip
    assert (
        format_status(status)
        .splitlines()[-1]
        .startswith("move 1: shards 100-199 c1 -> c2, step fence, running (started ")
    )
    await layout.mover().abort()


# -- the rebalance planner ---------------------------------------------------------------


def _loads_after(map_: ShardMap, plan: list[Move], stats: ShardStats) -> dict[str, float]:
    for move in plan:
        assert map_.owners(move.first, move.last) == {move.source}
        map_ = map_.assign(move.first, move.last, move.target)
    loads = shard_loads(map_.logical, stats)
    out: dict[str, float] = {}
    for shard, load in enumerate(loads):
        name = map_.cluster_of(shard)
        out[name] = out.get(name, 0.0) + load
    return out


def test_rebalance_onto_a_new_cluster_moves_half_the_load_in_one_range() -> None:
    one = ShardMap.even(["c1"])
    stats = ShardStats(rows={s: 10 for s in range(8192)}, traffic={})
    plan = plan_rebalance(one, stats, ["c1", "c2"])
    assert len(plan) == 1 and plan[0].source == "c1" and plan[0].target == "c2"
    assert plan[0].last - plan[0].first + 1 == 4096
    loads = _loads_after(one, plan, stats)
    assert abs(loads["c1"] - loads["c2"]) < 0.01


def test_rebalance_goes_by_rows_and_traffic_not_by_shard_count() -> None:
    even = ShardMap.even(["c1", "c2"])  # as many shards each, but c1 has the rows and the hits
    stats = ShardStats(
        rows={s: 100 if s < 4096 else 1 for s in range(8192)},
        traffic={s: 50 for s in range(0, 512)},
    )
    plan = plan_rebalance(even, stats, ["c1", "c2"])
    assert plan and all(m.source == "c1" and m.target == "c2" for m in plan)
    loads = _loads_after(even, plan, stats)
    assert abs(loads["c1"] - loads["c2"]) / (loads["c1"] + loads["c2"]) < 0.05


def test_a_hot_shard_is_balanced_by_moving_the_rest() -> None:
    even = ShardMap.even(["c1", "c2"])
    stats = ShardStats(rows={s: 10 for s in range(8192)}, traffic={17: 10_000, 5000: 100})
    plan = plan_rebalance(even, stats, ["c1", "c2"])
    loads = _loads_after(even, plan, stats)
    before = _loads_after(even, [], stats)
    assert abs(loads["c1"] - loads["c2"]) < abs(before["c1"] - before["c2"])
    assert abs(loads["c1"] - loads["c2"]) / (loads["c1"] + loads["c2"]) < 0.05


def test_rebalance_of_an_even_layout_plans_nothing() -> None:
    even = ShardMap.even(["c1", "c2"])
    stats = ShardStats(rows={s: 7 for s in range(8192)}, traffic={s: 1 for s in range(8192)})
    assert plan_rebalance(even, stats, ["c1", "c2"]) == []


def test_rebalance_onto_fewer_clusters_drains_the_others() -> None:
    three = ShardMap.even(["c1", "c2", "c3"])
    stats = ShardStats(rows={s: 5 for s in range(8192)}, traffic={})
    plan = plan_rebalance(three, stats, ["c1", "c2"])
    loads = _loads_after(three, plan, stats)
    assert set(loads) == {"c1", "c2"}
    assert abs(loads["c1"] - loads["c2"]) / (loads["c1"] + loads["c2"]) < 0.05


async def test_rebalance_runs_its_plan_one_move_at_a_time(layout: Layout) -> None:
    # everything on c1 (map v2), rows on a few shards only: the plan follows the rows
    current = await layout.store.load()
    assert current is not None and await layout.store.publish(current.assign(0, 8191, "c1"))
    await seed(layout.clusters["c1"], (10, 20), 200)
    await seed(layout.clusters["c1"], (6000, 6010), 200)
    lines: list[str] = []
    dry = await rebalance(
        layout.clusters, layout.clusters["c1"], layout.store, 2, dry_run=True, progress=lines.append
    )
    assert dry.plan and not dry.reports and lines[-1] == "dry run: nothing moved"
    done = await rebalance(layout.clusters, layout.clusters["c1"], layout.store, 2)
    assert len(done.reports) == len(done.plan) == len(dry.plan)
    assert 0.4 < int(layout.pg["c2"].sql("SELECT count(*) FROM users")) / 400 < 0.6
    again: list[str] = []
    await rebalance(layout.clusters, layout.clusters["c1"], layout.store, 2, progress=again.append)
    assert again == [EVENLY]
    _assert_no_move_left(layout)
