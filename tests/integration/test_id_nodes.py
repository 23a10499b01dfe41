"""Id node leases against real databases (SQLite and PostgreSQL): concurrent claims get
distinct numbers, a released number is reused, an expired lease is taken over, and a
process that cannot keep its lease stops minting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from picscale.clock import utcnow
from picscale.data.id_nodes import NodeLease
from picscale.data.schema import id_nodes
from picscale.ids import NODES, IdGenerator, node_of
from picscale.observability.metrics import Metrics
from picscale.settings import Settings, load_settings
from picscale.tiers.db import Database, create_database
from picscale.tiers.db.database import DatabaseUnavailable
from picscale.tiers.db.migrate import upgrade
from picscale.tiers.db.shard_map import LOGICAL_SHARDS
from tests.support.pg import PostgresServer
from tests.support.waiting import async_wait_until

OpenDatabase = Callable[[], Database]


@pytest.fixture(params=["sqlite", "postgresql"])
async def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenDatabase]:
    """Opens databases on one migrated global database: one per simulated process."""
    overrides: dict[str, Any] = {"data_dir": tmp_path}
    if request.param == "postgresql":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        overrides["database_url"] = pg.new_database().url
    settings: Settings = load_settings({}, **overrides)
    await asyncio.to_thread(upgrade, settings)
    opened: list[Database] = []

    def open_database() -> Database:
        db = create_database(settings, Metrics())
        opened.append(db)
        return db

    yield open_database
    for db in opened:
        await db.dispose()


@pytest.fixture
async def leases() -> AsyncIterator[list[NodeLease]]:
    """Leases a test starts; stopped at its end."""
    started: list[NodeLease] = []
    yield started
    for lease in started:
        await lease.stop()


async def rows(db: Database) -> dict[int, tuple[str, Any]]:
    async with db.read_on_primary() as conn:
        result = await conn.execute(select(id_nodes))
        return {r.node: (r.holder, r.expires_at) for r in result}


async def test_concurrent_claims_get_distinct_nodes(
    open_db: OpenDatabase, leases: list[NodeLease]
) -> None:
    gens = [IdGenerator(LOGICAL_SHARDS) for _ in range(12)]
    new = [NodeLease(open_db(), ids, f"proc-{i}") for i, ids in enumerate(gens)]
    leases.extend(new)
    nodes = await asyncio.gather(*(lease.start() for lease in new))
    assert len(set(nodes)) == 12
    assert [ids.node for ids in gens] == nodes
    assert set(nodes) == set(range(12))  # the lowest free numbers
    stored = await rows(open_db())
    assert {n: holder.split("#")[0] for n, (holder, _) in stored.items()} == {
        node: f"proc-{i}" for i, node in enumerate(nodes)
    }
    # every process mints under its own number: ids of one shard in one ms never meet
    minted = [ids.next_id(5) for ids in gens for _ in range(100)]
    assert len(set(minted)) == len(minted)
    assert {node_of(i) for i in minted} == set(nodes)


async def test_a_released_node_is_reused(open_db: OpenDatabase, leases: list[NodeLease]) -> None:
    ids_a = IdGenerator()
    a = NodeLease(open_db(), ids_a, "a")
    b, c = (NodeLease(open_db(), IdGenerator(), name) for name in "bc")
    leases.extend([b, c])
    assert await a.start() == 0
    assert await b.start() == 1
    await a.stop()
    assert ids_a.node is None
    with pytest.raises(RuntimeError, match="ids need a node number"):
        ids_a.next_id(0)
    assert 0 not in await rows(open_db())
    assert await c.start() == 0


async def test_an_expired_lease_is_taken_over_and_a_full_table_refuses(
    open_db: OpenDatabase, leases: list[NodeLease]
) -> None:
    db = open_db()
    now = utcnow()
    async with db.write() as tx:  # every number held by live processes, but one dead one
        await tx.conn.execute(
            insert(id_nodes),
            [
                {
                    "node": n,
                    "holder": f"other-{n}",
                    "expires_at": now + (timedelta(seconds=-5) if n == 7 else timedelta(hours=1)),
                }
                for n in range(NODES)
            ],
        )
    ids = IdGenerator()
    lease = NodeLease(open_db(), ids, "heir")
    leases.append(lease)
    assert await lease.start() == 7
    assert ids.node == 7
    holder, expires_at = (await rows(db))[7]
    assert holder.startswith("heir#") and expires_at > utcnow()

    late = NodeLease(open_db(), IdGenerator(), "late")
    with pytest.raises(RuntimeError, match=f"all {NODES} id node numbers are held"):
        await late.start()


async def test_the_lease_is_renewed(open_db: OpenDatabase, leases: list[NodeLease]) -> None:
    db = open_db()
    lease = NodeLease(db, IdGenerator(), "renewing", lease_seconds=0.6)
    leases.append(lease)
    node = await lease.start()
    first = (await rows(db))[node][1]

    async def renewed() -> bool:
        return bool((await rows(db))[node][1] > first)

    await async_wait_until(renewed, within=5, what="a renewal of the lease")


async def test_a_lease_taken_away_stops_minting_under_it(
    open_db: OpenDatabase, leases: list[NodeLease]
) -> None:
    db = open_db()
    ids = IdGenerator()
    lease = NodeLease(db, ids, "victim", lease_seconds=0.3)
    leases.append(lease)
    assert await lease.start() == 0
    async with db.write() as tx:  # another process took it (a long pause, say)
        await tx.conn.execute(
            update(id_nodes)
            .where(id_nodes.c.node == 0)
            .values(holder="thief", expires_at=utcnow() + timedelta(hours=1))
        )

    async def moved_on() -> bool:
        return ids.node not in (None, 0)

    await async_wait_until(moved_on, within=5, what="a claim of another number")
    assert ids.node == 1 and lease.node == 1
    assert node_of(ids.next_id(3)) == 1
    assert (await rows(db))[0][0] == "thief"


class FailingDatabase:
    """A database whose writes fail while ``down`` (the global database out of reach)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.down = False
        self.name, self.dialect = db.name, db.dialect

    def write(self) -> AbstractAsyncContextManager[Any]:
        if self.down:
            raise DatabaseUnavailable("down for the test")
        return self.db.write()

    def read_on_primary(self, intent: str = "read") -> AbstractAsyncContextManager[Any]:
        if self.down:
            raise DatabaseUnavailable("down for the test")
        return self.db.read_on_primary(intent)


async def test_a_lease_that_cannot_be_renewed_stops_minting_then_reclaims(
    open_db: OpenDatabase, leases: list[NodeLease]
) -> None:
    flaky = FailingDatabase(open_db())
    ids = IdGenerator()
    lease = NodeLease(flaky, ids, "cut-off", lease_seconds=0.3)  # type: ignore[arg-type]
    leases.append(lease)
    assert await lease.start() == 0
    flaky.down = True

    async def stopped() -> bool:
        return ids.node is None

    await async_wait_until(stopped, within=5, what="minting to stop")
    with pytest.raises(RuntimeError, match="ids need a node number"):
        ids.next_id(0)
    flaky.down = False

    async def minting() -> bool:
        return ids.node is not None

    await async_wait_until(minting, within=5, what="a claim once the database is back")
    ids.next_id(0)
