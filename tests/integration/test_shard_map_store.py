"""The shard map's stores against real servers: etcd (its v3 JSON gateway), and the
``shard_map`` table on SQLite and on PostgreSQL. Compare-and-set, and the watcher."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from picscale.observability.metrics import Metrics
from picscale.settings import SettingsError, load_settings
from picscale.tiers.db import Database, create_database
from picscale.tiers.db.map_store import (
    EtcdMapStore,
    MapStore,
    MapStoreUnavailable,
    MapWatcher,
    TableMapStore,
    create_map_store,
)
from picscale.tiers.db.migrate import upgrade
from picscale.tiers.db.shard_map import ShardMap
from tests.support.patroni_cluster import Etcd
from tests.support.pg import PostgresServer
from tests.support.ports import free_port
from tests.support.waiting import async_wait_until

_keys = iter(range(1, 1_000_000))


@pytest.fixture(scope="module")
def etcd() -> Iterator[Etcd]:
    root = Path(tempfile.mkdtemp(prefix="picscale-etcd-"))
    server = Etcd(root, free_port(), free_port())
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


async def migrated(settings_overrides: dict[str, object]) -> Database:
    settings = load_settings({}, **settings_overrides)
    await asyncio.to_thread(upgrade, settings)
    return create_database(settings, Metrics())


@pytest.fixture(params=["etcd", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MapStore]:
    """An empty store of the test's own."""
    db: Database | None = None
    made: MapStore
    if request.param == "etcd":
        server: Etcd = request.getfixturevalue("etcd")
        # a key of the test's own on the module's etcd
        made = EtcdMapStore(f"etcd://127.0.0.1:{server.client_port}/tests/map-{next(_keys)}")
    elif request.param == "sqlite":
        db = await migrated({"data_dir": tmp_path})
        made = create_map_store("", db)
    else:
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        db = await migrated({"data_dir": tmp_path, "database_url": pg.new_database().url})
        made = create_map_store("database://", db)
    yield made
    await made.close()
    if db is not None:
        await db.dispose()


async def test_publish_is_compare_and_set(store: MapStore) -> None:
    assert await store.load() is None
    v1 = ShardMap.even(["c1", "c2"])
    assert not await store.publish(v1.assign(0, 9, "c3"))  # v2 on nothing
    assert await store.publish(v1)
    assert await store.load() == v1
    assert not await store.publish(v1)  # v1 again
    v3 = v1.assign(0, 9, "c3").assign(10, 19, "c3")
    assert not await store.publish(v3)  # skips v2
    assert await store.load() == v1
    v2 = v1.assign(0, 9, "c3")
    assert await store.publish(v2)
    assert await store.load() == v2
    assert await store.publish(v3)
    assert await store.load() == v3


async def test_concurrent_publishers_of_one_version_exactly_one_wins(store: MapStore) -> None:
    firsts = [ShardMap.even([f"c{i}"]) for i in range(4)]  # on nothing stored yet
    won = await asyncio.gather(*(store.publish(m) for m in firsts))
    assert sum(won) == 1, won
    assert await store.load() == firsts[won.index(True)]
    for round_ in range(3):
        base = await store.load()
        assert base is not None
        rivals = [base.assign(i, i, f"c{3 + i}") for i in range(4)]
        won = await asyncio.gather(*(store.publish(m) for m in rivals))
        assert sum(won) == 1, f"round {round_}: {won}"
        assert await store.load() == rivals[won.index(True)]


async def test_watcher_sees_a_new_version_within_a_second(store: MapStore) -> None:
    v1 = ShardMap.even(["c1", "c2"])
    assert await store.publish(v1)
    seen: list[int] = []
    watcher = MapWatcher(store, lambda m: seen.append(m.version), interval=0.05)
    await watcher.start(v1)
    try:
        assert await watcher.wait_newer(1, timeout=0.2) is None
        v2 = v1.assign(0, 99, "c3")
        assert await store.publish(v2)
        assert await watcher.wait_newer(1, timeout=1.0) == v2
        assert seen == [2]
        v3 = v2.assign(100, 199, "c3")
        assert await store.publish(v3)
        await async_wait_until(lambda: _is(seen, [2, 3]), within=1.0, what="the watcher's v3")
        assert watcher.current == v3
    finally:
        await watcher.stop()


async def _is(seen: list[int], expected: list[int]) -> bool:
    return seen == expected


class FlakyStore:
    """A store whose loads fail while ``broken``: the watcher must keep polling."""

    def __init__(self, inner: MapStore) -> None:
        self.inner = inner
        self.broken = True
        self.failures = 0

    async def load(self) -> ShardMap | None:
        if self.broken:
            self.failures += 1
            raise MapStoreUnavailable("down for the test")
        return await self.inner.load()

    async def publish(self, new: ShardMap) -> bool:
        return await self.inner.publish(new)

    async def close(self) -> None:
        pass

    def describe(self) -> str:
        return "flaky " + self.inner.describe()


async def test_watcher_keeps_polling_through_errors(store: MapStore) -> None:
    v1 = ShardMap.even(["c1"])
    assert await store.publish(v1)
    assert await store.publish(v1.assign(0, 0, "c2"))
    flaky = FlakyStore(store)
    watcher = MapWatcher(flaky, lambda _m: None, interval=0.02)
    await watcher.start(v1)
    try:
        await async_wait_until(lambda: _at_least(flaky, 3), within=5, what="failed polls")
        flaky.broken = False
        newer = await watcher.wait_newer(1, timeout=2.0)
        assert newer is not None and newer.version == 2
    finally:
        await watcher.stop()


async def _at_least(flaky: FlakyStore, n: int) -> bool:
    return flaky.failures >= n


async def test_etcd_endpoint_list_with_a_dead_first_endpoint(etcd: Etcd) -> None:
    dead = free_port()  # nothing listens there
    key = f"/tests/map-{next(_keys)}"
    store = EtcdMapStore(f"etcd://127.0.0.1:{dead},127.0.0.1:{etcd.client_port}{key}")
    try:
        assert store.describe() == (f"etcd 127.0.0.1:{dead},127.0.0.1:{etcd.client_port} key {key}")
        assert await store.load() is None
        v1 = ShardMap.even(["c1", "c2"])
        assert await store.publish(v1)
        assert await store.publish(v1.assign(1, 1, "c3"))
        assert (await store.load()) == v1.assign(1, 1, "c3")
    finally:
        await store.close()

    nobody = EtcdMapStore(f"etcd://127.0.0.1:{dead}{key}")
    try:
        with pytest.raises(MapStoreUnavailable, match="check that etcd runs"):
            await nobody.load()
    finally:
        await nobody.close()


async def test_the_url_chooses_the_store(tmp_path: Path) -> None:
    db = await migrated({"data_dir": tmp_path})
    try:
        assert isinstance(create_map_store("", db), TableMapStore)
        assert create_map_store("database://", db).describe() == f"table shard_map on {db.name}"
        etcd_store = create_map_store("etcd://10.0.0.1:2379,10.0.0.2:2379", db)
        assert etcd_store.describe() == "etcd 10.0.0.1:2379,10.0.0.2:2379 key /picscale/shard-map"
        for bad in ("redis://x", "etcd:///key", "etcd://host/key"):
            with pytest.raises(SettingsError, match="PICSCALE_SHARD_MAP_URL"):
                create_map_store(bad, db)
    finally:
        with contextlib.suppress(Exception):
            await db.dispose()
