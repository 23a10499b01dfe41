"""The cache's contract, the same tests over every backend: the in-process LRU with its
invalidation log (on SQLite, and on PostgreSQL where no epoch file is shared), a real
Redis, Redis behind Sentinel, and ``none://``.

Each test opens "processes" on one store: every ``open_cache()`` is a cache with a
database connection of its own, as another process of the service would have; it calls
``sync()`` first, as each request does. What a backend promises differs in two ways,
said by ``CacheStore``: ``none://`` keeps nothing (every read loads), and only a shared
store (Redis) lets one process read what another filled.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from picscale.observability.metrics import Metrics
from picscale.settings import Settings, load_settings
from picscale.tiers.cache import Cache, Found, create_cache
from picscale.tiers.db import Database
from picscale.tiers.db.migrate import upgrade
from tests.support.metrics import cache_events_of
from tests.support.pg import PostgresServer
from tests.support.redis_sentinel import start_sentinel_group
from tests.support.redis_server import start_redis
from tests.support.shards import local_shards
from tests.support.waiting import async_wait_until


@dataclass
class CacheStore:
    """What every process's cache shares: a store (or none), and the database."""

    name: str
    settings: Settings
    keeps_values: bool  # all but none://
    shared: bool  # one store for every process: what one fills, another reads


@pytest.fixture(
    scope="module",
    params=["memory-sqlite", "memory-postgresql", "redis", "redis-sentinel", "none"],
)
def cache_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CacheStore]:
    """What each backend needs (a server, the database), started once per backend."""
    overrides: dict[str, Any] = {"data_dir": tmp_path_factory.mktemp("cache")}
    with contextlib.ExitStack() as servers:
        if request.param == "memory-sqlite":
            overrides["cache_url"] = "memory://"
        elif request.param == "memory-postgresql":
            pg: PostgresServer = request.getfixturevalue("postgres_server")
            overrides["database_url"] = pg.new_database().url
            overrides["cache_url"] = "memory://"
        elif request.param == "redis":
            redis = start_redis()
            servers.callback(redis.close)
            overrides["cache_url"] = redis.url
        elif request.param == "redis-sentinel":
            group = start_sentinel_group()
            servers.callback(group.close)
            overrides["cache_url"] = group.url
        else:
            overrides["cache_url"] = "none://"
        settings = load_settings({}, **overrides)
        upgrade(settings)
        yield CacheStore(
            request.param,
            settings,
            keeps_values=request.param != "none",
            shared=request.param.startswith("redis"),
        )


@dataclass
class Process:
    """One process's view: its cache, its database, and its metrics."""

    cache: Cache
    db: Database
    metrics: Metrics

    @property
    def events(self) -> Counter[str]:
        """What its cache reported: hits, misses, loads..."""
        return cache_events_of(self.metrics)


OpenCache = Callable[[], Awaitable[Process]]


@pytest.fixture
async def open_cache(cache_store: CacheStore) -> AsyncIterator[OpenCache]:
    """Opens processes on the store: the one place a cache is built."""
    opened: list[Process] = []

    async def open_process() -> Process:
        metrics = Metrics()
        shards = local_shards(cache_store.settings, metrics)
        db = shards.home
        process = Process(create_cache(cache_store.settings, shards, metrics), db, metrics)
        opened.append(process)
        await process.cache.sync()  # as a request does before it reads
        return process

    yield open_process
    for process in opened:
        await process.cache.close()
        await process.db.dispose()


class Loader:
    """What a read would load from the database, counting how often it is asked."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        return self.value


def new_key() -> str:
    return f"contract:{uuid.uuid4().hex}"


async def test_a_miss_loads_then_the_next_read_hits(
    cache_store: CacheStore, open_cache: OpenCache
) -> None:
    process = await open_cache()
    key, photo = new_key(), Loader({"id": 7, "caption": "sunset", "tags": ["sea"]})
    assert await process.cache.get_or_load(key, photo) == photo.value
    assert await process.cache.get_or_load(key, photo) == photo.value
    if cache_store.keeps_values:
        assert photo.calls == 1
        assert process.events == Counter(miss=1, load=1, hit=1)
    else:
        assert photo.calls == 2  # none:// keeps nothing: every read loads
        assert process.events == Counter(miss=2, load=2)


async def test_a_cached_not_found_is_told_apart_from_a_miss(
    cache_store: CacheStore, open_cache: OpenCache
) -> None:
    process = await open_cache()
    key, never_read = new_key(), new_key()
    nothing = Loader(None)
    assert await process.cache.get_or_load(key, nothing) is None
    assert await process.cache.get_or_load(key, nothing) is None
    stored = await process.cache.backend.get_many([key, never_read])
    if cache_store.keeps_values:
        assert nothing.calls == 1  # "not found" was cached...
        assert stored == {key: Found(None)}  # ...as a found None, unlike a key never read
    else:
        assert nothing.calls == 2
        assert stored == {}


@pytest.mark.parametrize("value", [0, "", [], False, "é 🙂", {"nested": [1, None, 2.5]}])
async def test_what_one_process_fills_another_reads_from_a_shared_store(
    cache_store: CacheStore, open_cache: OpenCache, value: Any
) -> None:
    """Falsy values are values: a hit, not a miss (only a missing entry is a miss)."""
    first, second = await open_cache(), await open_cache()
    key = new_key()
    assert await first.cache.get_or_load(key, Loader(value)) == value
    again = Loader(value)
    assert await first.cache.get_or_load(key, again) == value
    assert again.calls == (0 if cache_store.keeps_values else 1)
    elsewhere = Loader(value)
    assert await second.cache.get_or_load(key, elsewhere) == value
    assert elsewhere.calls == (0 if cache_store.shared else 1)


async def test_an_invalidation_drops_the_key_once_the_write_commits_in_every_process(
    cache_store: CacheStore, open_cache: OpenCache
) -> None:
    writer, reader = await open_cache(), await open_cache()
    key = new_key()
    for process in (writer, reader):
        assert await process.cache.get_or_load(key, Loader("old")) == "old"
    async with writer.db.write() as tx:
        await writer.cache.invalidate(tx, [key, new_key()])  # a key never cached: harmless
        # not before the commit: a reader meanwhile would refill it from the old row
        during = "old" if cache_store.keeps_values else "during"
        assert await writer.cache.get_or_load(key, Loader("during")) == during
    assert await writer.cache.backend.get_many([key]) == {}  # gone in the writer at once
    for process in (writer, reader):
        await process.cache.sync()  # the next request of each process
        assert await process.cache.backend.get_many([key]) == {}
    for process in (writer, reader):
        assert await process.cache.get_or_load(key, Loader("new")) == "new"


async def test_a_write_that_rolls_back_invalidates_nothing(
    cache_store: CacheStore, open_cache: OpenCache
) -> None:
    writer, reader = await open_cache(), await open_cache()
    key = new_key()
    for process in (writer, reader):
        await process.cache.get_or_load(key, Loader("kept"))

    async def failing_write() -> None:
        async with writer.db.write() as tx:
            await writer.cache.invalidate(tx, [key])
            raise RuntimeError("the write failed")

    with pytest.raises(RuntimeError, match="the write failed"):
        await failing_write()
    for process in (writer, reader):
        await process.cache.sync()
        expected = {key: Found("kept")} if cache_store.keeps_values else {}
        assert await process.cache.backend.get_many([key]) == expected


@pytest.mark.parametrize("writer_is", ["the same process", "another process"])
async def test_a_fill_racing_an_invalidation_stores_nothing_stale(
    open_cache: OpenCache, writer_is: str
) -> None:
    """A process misses and loads the old row; meanwhile a write commits and invalidates
    the key; what the fill loaded must not outlive the invalidation: from the next request
    on (``sync``), no process reads it."""
    filler, other = await open_cache(), await open_cache()
    writer = filler if writer_is == "the same process" else other
    key = new_key()
    loading, written = asyncio.Event(), asyncio.Event()

    async def load_old() -> str:
        loading.set()
        await written.wait()  # the write commits while this load holds the old row
        return "old"

    filling = asyncio.create_task(filler.cache.get_or_load(key, load_old))
    await loading.wait()
    async with writer.db.write() as tx:
        await writer.cache.invalidate(tx, [key])
    written.set()
    assert await filling == "old"  # the racing request answers what it read...
    for process in (filler, other):
        await process.cache.sync()
        assert await process.cache.backend.get_many([key]) == {}  # ...but nothing keeps it
    for process in (filler, other):
        assert await process.cache.get_or_load(key, Loader("new")) == "new"


async def test_concurrent_misses_in_one_process_load_once(open_cache: OpenCache) -> None:
    process = await open_cache()
    key = new_key()
    release = asyncio.Event()
    calls = 0

    async def slow_load() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "loaded"

    readers = [asyncio.create_task(process.cache.get_or_load(key, slow_load)) for _ in range(10)]

    async def all_missed() -> bool:
        return process.events["miss"] == 10

    await async_wait_until(all_missed, within=10, what="every reader to miss")
    release.set()
    assert await asyncio.gather(*readers) == ["loaded"] * 10
    assert calls == 1


async def test_a_bulk_read_loads_only_the_missing(
    cache_store: CacheStore, open_cache: OpenCache
) -> None:
    process = await open_cache()
    rows = {0: "zero", 1: "one", 3: "three", 5: "five"}  # 2 and 4 do not exist
    keys = {f"{new_key()}:{i}": i for i in range(6)}
    by_id = {i: key for key, i in keys.items()}
    for i in (0, 1, 2):  # read one by one before: 2 is cached as not found
        assert await process.cache.get_or_load(by_id[i], Loader(rows.get(i))) == rows.get(i)
    asked: list[list[int]] = []

    async def load_many(ids: list[int]) -> dict[int, str]:
        asked.append(sorted(ids))
        return {i: rows[i] for i in ids if i in rows}

    assert await process.cache.get_many_or_load(keys, load_many) == rows
    assert await process.cache.get_many_or_load(keys, load_many) == rows
    if cache_store.keeps_values:
        assert asked == [[3, 4, 5]]  # one query for the missing, none the second time
    else:
        assert asked == [[0, 1, 2, 3, 4, 5]] * 2


async def test_an_entry_expires_with_its_ttl(
    cache_store: CacheStore, open_cache: OpenCache
) -> None:
    process = await open_cache()
    key, photo = new_key(), Loader("photo")
    ttl = 2.0  # stored for 1.8 to 2.2 s (jittered)
    await process.cache.get_or_load(key, photo, ttl=ttl)
    await process.cache.get_or_load(key, photo, ttl=ttl)
    loaded = 1 if cache_store.keeps_values else 2
    assert photo.calls == loaded

    async def loaded_again() -> bool:
        await process.cache.get_or_load(key, photo, ttl=ttl)
        return photo.calls > loaded

    await async_wait_until(loaded_again, within=10, what="the entry to expire")
