"""The Redis cache and Redis sessions, with two app instances and no sticky routing."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import PASSWORD, job_events, new_user, upload, wait_job, wait_ready
from tests.support.images import image_bytes
from tests.support.metrics import cache_events, metric_values
from tests.support.picscale_server import Server, running_server, start_server
from tests.support.redis_server import RedisServer, start_redis
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def redis_cache() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.close()


@pytest.fixture(scope="module")
def redis_sessions() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.close()


@pytest.fixture(scope="module")
def pair(
    redis_cache: RedisServer, redis_sessions: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Two web servers sharing the database, the cache and the sessions."""
    data = tmp_path_factory.mktemp("pair")
    settings = {"cache_url": redis_cache.url, "session_url": redis_sessions.url}
    first = start_server(data, job_workers=1, **settings)
    second = start_server(data, job_workers=0, **settings)
    yield first, second
    second.close()
    first.close()


def test_a_session_made_on_one_server_works_on_the_other(pair: tuple[Server, Server]) -> None:
    first, second = pair
    client, user = new_user(first)
    token = client.headers["Authorization"]
    on_second = second.client(headers={"Authorization": token})
    assert on_second.get("/api/v1/me").json()["id"] == user["id"]

    # a browser: the cookie from one server, a CSRF-checked write on the other
    browser = first.client()
    login = browser.post(
        "/api/v1/sessions", json={"username": user["username"], "password": PASSWORD}
    )
    assert login.status_code == 201
    cookies = {k: v for k, v in browser.cookies.items()}
    other = second.client(cookies=cookies)
    assert other.get("/api/v1/me").status_code == 200
    out = other.delete("/api/v1/sessions", headers={"X-CSRF-Token": cookies["picscale_csrf"]})
    assert out.status_code == 204
    assert httpx.get(first.url + "/api/v1/me", cookies=cookies).status_code == 401
    # the bearer session is a different one: still valid
    assert on_second.get("/api/v1/me").status_code == 200


def test_no_stale_read_after_any_write(pair: tuple[Server, Server]) -> None:
    first, second = pair
    writer, w = new_user(first)
    reader = second.client(headers={"Authorization": writer.headers["Authorization"]})
    fan, f = new_user(first)
    name = w["username"]

    def profile() -> dict:
        return reader.get(f"/api/v1/users/{name}").json()

    def gallery() -> list[str]:
        return [p["id"] for p in reader.get(f"/api/v1/users/{name}/photos").json()["items"]]

    fan_reader = second.client(headers={"Authorization": fan.headers["Authorization"]})

    def feed(client: httpx.Client) -> list[tuple[str, int]]:
        return [(p["id"], p["version"]) for p in client.get("/api/v1/feed").json()["items"]]

    assert profile()["photo_count"] == 0 and gallery() == [] and feed(reader) == []  # cached
    assert feed(fan_reader) == []
    photo = wait_ready(writer, upload(writer, image_bytes(200, 100))["id"])
    assert profile()["photo_count"] == 1 and gallery() == [photo["id"]]  # upload
    assert feed(reader) == [(photo["id"], 1)]  # your own photos are in your feed at once
    assert fan.put(f"/api/v1/users/{name}/follow").status_code == 204
    assert feed(fan_reader) == [(photo["id"], 1)]  # a follow refreshes the follower's feed

    assert reader.get(f"/api/v1/photos/{photo['id']}").json()["version"] == 1
    job = writer.post(
        f"/api/v1/photos/{photo['id']}/edits",
        json={"operations": [{"op": "crop", "x": 0, "y": 0, "width": 50, "height": 50}]},
    ).json()
    assert wait_job(writer, job["id"])["status"] == "done"
    edited = reader.get(f"/api/v1/photos/{photo['id']}").json()  # edit
    assert (edited["version"], edited["width"]) == (2, 50)
    assert feed(fan_reader) == [(photo["id"], 2)]  # the cached feed page holds ids only

    # follow: the followee's count follows by a job, within seconds
    wait_until(lambda: profile()["follower_count"] == 1, what="the follower count")
    assert second.client().get(f"/api/v1/users/{f['username']}").json()["following_count"] == 1
    assert fan.delete(f"/api/v1/users/{name}/follow").status_code == 204
    wait_until(lambda: profile()["follower_count"] == 0, what="the follower count")  # unfollow
    assert feed(fan_reader) == []

    assert writer.patch("/api/v1/me", json={"display_name": "Changed"}).status_code == 200
    assert profile()["display_name"] == "Changed"  # profile change

    assert writer.delete(f"/api/v1/photos/{photo['id']}").status_code == 204
    assert reader.get(f"/api/v1/photos/{photo['id']}").status_code == 404  # delete
    assert profile()["photo_count"] == 0 and gallery() == [] and feed(reader) == []
    assert cache_events(second).get("hit", 0) > 0  # the reads did go through the cache


def test_a_hot_key_is_kept_near_and_dropped_everywhere_on_a_write(
    redis_cache: RedisServer, redis_sessions: RedisServer, tmp_path: Path
) -> None:
    """A key read often is served from the process's own memory; a write through another
    process drops it there at once, through Redis pub/sub. The near TTL here is a minute,
    so only the published invalidation can explain the fresh read."""
    settings = {
        "cache_url": redis_cache.url,
        "session_url": redis_sessions.url,
        "cache_near_ttl_seconds": 60,
        "cache_hot_reads_per_second": 3,
    }
    with (
        running_server(tmp_path, job_workers=0, **settings) as first,
        running_server(tmp_path, job_workers=0, **settings) as second,
    ):
        writer, user = new_user(first)
        url = f"/api/v1/users/{user['username']}"
        anonymous = second.client()
        before = cache_events(second).get("near_hit", 0)
        for _ in range(10):
            assert anonymous.get(url).json()["display_name"] == user["display_name"]
        wait_until(
            lambda: cache_events(second).get("near_hit", 0) >= before + 5,
            what="reads served from the near cache",
        )

        assert writer.patch("/api/v1/me", json={"display_name": "Renamed"}).status_code == 200
        wait_until(
            lambda: anonymous.get(url).json()["display_name"] == "Renamed",
            timeout=5,
            what="the other process to drop its near-cached profile",
        )
        # and a write in the same process drops it there too
        for _ in range(10):
            anonymous.get(url)
        on_second = second.client(headers={"Authorization": writer.headers["Authorization"]})
        assert on_second.patch("/api/v1/me", json={"display_name": "Again"}).status_code == 200
        assert anonymous.get(url).json()["display_name"] == "Again"


def test_requests_succeed_while_the_cache_is_down(
    pair: tuple[Server, Server], redis_cache: RedisServer
) -> None:
    first, _ = pair
    client, user = new_user(first)
    photo = upload(client, image_bytes(64, 64))
    url = f"/api/v1/photos/{photo['id']}"
    assert client.get(url).status_code == 200
    redis_cache.stop(signal.SIGKILL)
    try:
        for _ in range(20):
            assert client.get(url).status_code == 200
            assert client.get(f"/api/v1/users/{user['username']}").status_code == 200
        assert cache_events(first).get("error", 0) > 0  # counted, not hidden
    finally:
        redis_cache.start()

    def hits_again() -> bool:
        before = cache_events(first).get("hit", 0)
        client.get(url)
        client.get(url)
        return cache_events(first).get("hit", 0) > before

    wait_until(hits_again, timeout=30, what="the cache to be used again")


def test_settings_name_the_redis_schemes(tmp_path: Path) -> None:
    from picscale.observability.metrics import Metrics
    from picscale.settings import SettingsError, load_settings
    from picscale.tiers.cache import create_cache
    from tests.support.shards import local_shards

    settings = load_settings({}, data_dir=tmp_path, cache_url="memcached://x")
    with pytest.raises(SettingsError, match="redis://"):
        create_cache(settings, local_shards(settings), Metrics())


def test_a_stampede_on_one_cold_key_loads_it_at_most_twice(
    redis_cache: RedisServer, tmp_path: Path
) -> None:
    import asyncio

    # four processes: without a lock shared between them, each would load the key once
    with running_server(tmp_path, workers=4, job_workers=0, cache_url=redis_cache.url) as srv:
        _, user = new_user(srv)
        # a profile nobody has read yet: its key is cold
        path = f"/api/v1/users/{user['username']}"

        def counters() -> tuple[float, float]:
            text = httpx.get(srv.url + "/metrics").text
            loads = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith('picscale_cache_events_total{event="load"}')
            )
            served = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("picscale_http_requests_total{")
                and 'route="/api/v1/users/{username}"' in line
                and 'status="200"' in line
            )
            return loads, served

        loads_before, served_before = counters()

        async def burst() -> list[int]:
            limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as c:
                responses = await asyncio.gather(*(c.get(path) for _ in range(500)))
            return [r.status_code for r in responses]

        statuses = asyncio.run(burst())
        assert statuses == [200] * 500
        # every web process has flushed its counts
        wait_until(lambda: counters()[1] - served_before >= 500, what="the burst in the metrics")
        loads = counters()[0] - loads_before
        metrics = httpx.get(srv.url + "/metrics").text.splitlines()
        events = [line for line in metrics if "cache_events" in line]
        assert 1 <= loads <= 2, (loads, [e for e in events if not e.startswith("#")])


def test_a_full_cache_evicts_and_the_service_stays_correct(tmp_path: Path) -> None:
    import redis as redis_sync

    tiny = start_redis(maxmemory="2mb")  # allkeys-lru
    try:
        with running_server(tmp_path, job_workers=1, cache_url=tiny.url) as srv:
            filler = redis_sync.Redis(port=tiny.port)
            pipe = filler.pipeline(transaction=False)
            for i in range(40_000):  # about 4 MB of other keys: twice the limit
                pipe.set(f"other:{i}", b"x" * 64)
            pipe.execute()
            client, user = new_user(srv)
            photos = [upload(client, image_bytes(40, 40))["id"] for _ in range(3)]
            for photo_id in photos:
                wait_ready(client, photo_id)
            for _ in range(3):
                got = client.get(f"/api/v1/users/{user['username']}/photos").json()["items"]
                assert [p["id"] for p in got] == photos[::-1]
                assert client.get(f"/api/v1/users/{user['username']}").json()["photo_count"] == 3
            stats = filler.info("stats")
            assert int(stats["evicted_keys"]) > 0
            assert int(filler.info("memory")["used_memory"]) <= 3 * 1024 * 1024
            filler.close()
            # the service's metrics tell the same story
            figures = metric_values(srv, "picscale_cache_store")
            assert figures['figure="evictions"'] > 0
            assert figures['figure="max_memory_bytes"'] == 2 * 1024 * 1024
            assert 0 < metric_values(srv, "picscale_cache_hit_ratio")[""] < 1
            assert metric_values(srv, "picscale_cache_load_seconds_count")[""] > 0
    finally:
        tiny.close()


def test_a_fill_that_raced_a_write_stores_nothing(redis_cache: RedisServer) -> None:
    """Process A misses and loads the old value; meanwhile process B's write commits and
    invalidates the key; A's fill must not store its now stale value (its lease went
    with the key)."""
    import asyncio

    from picscale.observability.metrics import Metrics
    from picscale.tiers.cache import Cache
    from picscale.tiers.cache.redis import RedisCache
    from picscale.tiers.redis_client import redis_client

    async def scenario() -> tuple[dict[str, object], str | None, str | None]:
        a = RedisCache(redis_client(redis_cache.url, timeout=1.0), Metrics())
        b = RedisCache(redis_client(redis_cache.url, timeout=1.0), Metrics())
        key = "race:photo:1"
        loading, written = asyncio.Event(), asyncio.Event()

        async def load_old() -> str:
            loading.set()
            await written.wait()  # the write commits while we hold the old row
            return "old"

        async def load_new() -> str:
            return "new"

        try:
            filling = asyncio.create_task(
                Cache(a, ttl=60, metrics=Metrics()).get_or_load(key, load_old)
            )
            await loading.wait()
            await b.delete_many([key])  # B's invalidation after its commit
            written.set()
            assert await filling == "old"  # A's request answers what it read...
            stored = await b.get_many([key])  # ...but the cache keeps nothing of it
            after = await Cache(b, ttl=60, metrics=Metrics()).get_or_load(key, load_new)
            again = await Cache(a, ttl=60, metrics=Metrics()).get_or_load(key, load_old)
            return {k: v.value for k, v in stored.items()}, after, again
        finally:
            await a.close()
            await b.close()

    stored, after, again = asyncio.run(scenario())
    assert stored == {}
    assert (after, again) == ("new", "new")


def test_job_progress_reaches_a_stream_on_the_other_server(pair: tuple[Server, Server]) -> None:
    """The worker runs beside the first server; the stream is held by the second, woken
    through Redis pub/sub."""
    first, second = pair
    client, _ = new_user(first)
    photo = wait_ready(client, upload(client, image_bytes(300, 200))["id"])
    job = client.post(
        f"/api/v1/photos/{photo['id']}/edits", json={"operations": [{"op": "sharpen", "sigma": 1}]}
    ).json()
    on_second = second.client(headers={"Authorization": client.headers["Authorization"]})
    events = job_events(on_second, job["id"])
    assert events[-1]["status"] == "done" and events[-1]["version"] == 2
