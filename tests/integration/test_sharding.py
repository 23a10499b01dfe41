"""Sharding as users meet it, on every shared server (one SQLite file; two PostgreSQL
databases as two clusters; two SQLite files as two clusters): usernames unique across
shards under a race, follows across shards converging whatever the order, and the hot
counter of one much-followed account exact under 2,000 concurrent follows."""

from __future__ import annotations

import asyncio
import io
import random
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from picscale.data.counters import FollowerCounter
from picscale.data.follows import FollowRepository
from picscale.data.schema import followers, user_counters, users
from picscale.ids import shard_of
from picscale.resharding import replication as fencing
from picscale.services import Services, build_services
from picscale.settings import load_settings
from picscale.tiers.db.database import Database
from picscale.tiers.db.engines import async_url, postgres_engine
from picscale.tiers.db.map_store import TableMapStore
from picscale.tiers.db.migrate import upgrade
from picscale.tiers.db.shard_map import LOGICAL_SHARDS
from tests.support.api import PASSWORD, new_user
from tests.support.pg import PostgresServer
from tests.support.picscale_server import Server, running_server
from tests.support.waiting import wait_until


def test_one_username_one_user_whatever_the_shards(server: Server) -> None:
    name = f"race_{uuid.uuid4().hex[:8]}"

    def sign_up(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            body = {"username": name, "password": PASSWORD}
            return client.post("/api/v1/users", json=body).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = sorted(pool.map(sign_up, range(12)))
    assert codes == [201] + [409] * 11
    client = server.client()
    assert client.get(f"/api/v1/users/{name}").status_code == 200
    session = client.post("/api/v1/sessions", json={"username": name, "password": PASSWORD})
    assert session.status_code == 201


def test_follow_and_unfollow_races_converge(server: Server) -> None:
    _, star = new_user(server, "star")
    fans = [new_user(server, "fan") for _ in range(8)]
    path = f"/api/v1/users/{star['username']}/follow"
    rng = random.Random(7)
    plans = [[rng.choice(("put", "delete")) for _ in range(6)] for _ in fans]

    def play(i: int) -> None:
        client = fans[i][0]
        for method in plans[i]:
            assert client.request(method.upper(), path).status_code == 204

    with ThreadPoolExecutor(len(fans)) as pool:
        list(pool.map(play, range(len(fans))))
    following = [plan[-1] == "put" for plan in plans]
    reader = server.client()

    def count() -> int:
        return int(reader.get(f"/api/v1/users/{star['username']}").json()["follower_count"])

    wait_until(lambda: count() == sum(following), what="the follower count to converge")
    for (_, fan), follows in zip(fans, following, strict=True):
        profile = reader.get(f"/api/v1/users/{fan['username']}").json()
        assert profile["following_count"] == int(follows)


@pytest.fixture(scope="module")
async def two_clusters(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Services]:
    url = f"c1={postgres_server.new_database().url};c2={postgres_server.new_database().url}"
    settings = load_settings({}, data_dir=tmp_path_factory.mktemp("hot"), database_url=url)
    await asyncio.to_thread(upgrade, settings)
    services = build_services(settings)
    await services.start()
    yield services
    await services.close()


async def test_users_spread_over_both_clusters(two_clusters: Services) -> None:
    shards = two_clusters.shards
    for i in range(24):
        await two_clusters.users.sign_up(f"spread_{i}_{uuid.uuid4().hex[:6]}", PASSWORD, None)

    async def count(db: object) -> int:
        async with db.read() as conn:  # type: ignore[attr-defined]
            return int(await conn.scalar(select(func.count()).select_from(users)))

    per_cluster = await shards.across(count)
    assert sum(per_cluster) >= 24 and all(n > 0 for n in per_cluster)


async def test_a_hot_counter_loses_no_count_under_2000_concurrent_follows(
    two_clusters: Services,
) -> None:
    shards = two_clusters.shards
    celebrity = await two_clusters.users.sign_up(f"celeb_{uuid.uuid4().hex[:8]}", PASSWORD, None)
    follows = FollowRepository(shards)
    counter = FollowerCounter(shards.dialect, two_clusters.settings.shards.counter_slots)
    base = celebrity.id & ~((1 << 23) - 1)  # follower ids: any, as the mirror has no key on them
    gate = asyncio.Semaphore(32)  # the pool's connections, not 2,000 at once

    async def follow(n: int) -> None:
        async with gate, shards.write(celebrity.id) as tx:
            await follows.lock_pair(tx, celebrity.id, base + n)
            if await follows.mirror_add(tx, celebrity.id, base + n):
                await counter.add(tx, celebrity.id, +1)

    await asyncio.gather(*(follow(n) for n in range(2000)))
    await asyncio.gather(*(follow(n) for n in range(0, 2000, 7)))  # run again: no change
    profile = await two_clusters.users.profile(celebrity.username)
    assert profile is not None and profile.follower_count == 2000
    async with shards.read_on_primary(celebrity.id) as conn:
        mirrored = await conn.scalar(
            select(func.count())
            .select_from(followers)
            .where(followers.c.followee_id == celebrity.id)
        )
        slots = await conn.scalar(
            select(func.count())
            .select_from(user_counters)
            .where(user_counters.c.user_id == celebrity.id)
        )
    # the increments went to many rows, not one: they did not all queue for one lock
    assert mirrored == 2000 and slots > 1


def test_writes_that_meet_a_moves_fence_wait_and_are_replayed(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A move's last moment as the web tier sees it: the user's shard fenced, an upload
    and a follow wait (their bodies kept), then the map moves on and they succeed."""
    first, second = postgres_server.new_database(), postgres_server.new_database()
    layout = f"c1={first.url};c2={second.url}"
    with running_server(tmp_path, database_url=layout, job_workers=1) as server:
        client, user = new_user(server, "fenced")
        _, other = new_user(server, "other")
        shard = shard_of(int(user["id"]))
        home = first if shard < LOGICAL_SHARDS // 2 else second  # the even map, v1

        def rollbacks() -> int:
            return int(
                home.sql(
                    "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
                )
            )

        async def fence(up: bool) -> None:
            settings = load_settings({})
            engine = postgres_engine(async_url(home.url), settings)
            db = Database(engine, engine, "postgresql")
            try:
                if up:
                    await fencing.install_fence_triggers(db)
                    await fencing.raise_fence(db, shard, shard)
                else:
                    await fencing.lower_fence(db, shard)
                    store_engine = postgres_engine(async_url(first.url), settings)
                    store = TableMapStore(Database(store_engine, store_engine, "postgresql"))
                    current = await store.load()
                    assert current is not None  # the same cluster, a new version
                    assert await store.publish(
                        current.assign(shard, shard, current.cluster_of(shard))
                    )
                    await store_engine.dispose()
            finally:
                await engine.dispose()

        asyncio.run(fence(True))
        before = rollbacks()
        with ThreadPoolExecutor(2) as pool:
            # over a megabyte: the upload is spooled to a file, closed after the response
            uploading = pool.submit(upload_status, client, noisy_png())
            following = pool.submit(
                lambda: client.put(f"/api/v1/users/{other['username']}/follow").status_code
            )
            wait_until(lambda: rollbacks() >= before + 2, what="both writes to meet the fence")
            assert not uploading.done() and not following.done()  # waiting, not failed
            asyncio.run(fence(False))
            assert uploading.result(timeout=60) == 201
            assert following.result(timeout=60) == 204
        assert client.get("/api/v1/me").status_code == 200


def noisy_png() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((1000, 800), 80).convert("RGB").save(out, "PNG")
    assert len(out.getvalue()) > 1024 * 1024
    return out.getvalue()


def upload_status(client: httpx.Client, data: bytes) -> int:
    return client.post(
        "/api/v1/photos", files={"file": ("p.png", data, "image/png")}, data={"caption": ""}
    ).status_code
