"""Reads on a streaming replica, read-your-writes, lag and failure, on real PostgreSQL."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.support.api import new_user, upload
from tests.support.images import image_bytes
from tests.support.metrics import cache_events, metric_values
from tests.support.pg import PostgresServer, start_postgres
from tests.support.picscale_server import Server, start_server
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresServer]:
    primary = start_postgres()
    primary.add_replica()
    yield primary
    primary.close()


@pytest.fixture(scope="module")
def split_server(
    cluster: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("split"),
        job_workers=1,
        database_url=cluster.url,
        database_replica_urls=cluster.replicas[0].url,
    )
    yield srv
    srv.close()


def reads_by_role(server: Server) -> dict[str, float]:
    metrics = httpx.get(server.url + "/metrics").text
    totals = {"primary": 0.0, "replica": 0.0}
    for line in metrics.splitlines():
        if line.startswith("picscale_db_queries_total{") and 'intent="read"' in line:
            role = re.search(r'role="(\w+)"', line)
            assert role is not None
            totals[role.group(1)] += float(line.rsplit(" ", 1)[1])
    return totals


def wait_replayed(cluster: PostgresServer) -> None:
    """Until every replica has replayed all the primary has written so far."""
    position = cluster.sql("SELECT pg_current_wal_insert_lsn()")
    for replica in cluster.replicas:
        wait_until(
            lambda r=replica: r.sql(f"SELECT pg_last_wal_replay_lsn() >= '{position}'") == "t",
            what=f"replay up to {position}",
        )


def photo_ids(client: httpx.Client, username: str) -> list[str]:
    # a page size that is not cached: the query runs on every request
    r = client.get(f"/api/v1/users/{username}/photos", params={"limit": 5})
    assert r.status_code == 200, r.text
    return [p["id"] for p in r.json()["items"]]


def test_reads_go_to_the_replica(split_server: Server) -> None:
    client, user = new_user(split_server)
    upload(client, image_bytes(64, 64))
    reader, _ = new_user(split_server)
    wait_until(lambda: len(photo_ids(reader, user["username"])) == 1, what="replication")
    before = reads_by_role(split_server)
    for _ in range(10):
        assert len(photo_ids(reader, user["username"])) == 1
    after = reads_by_role(split_server)
    # the listing's queries ran on the replica (sessions and the cache's invalidation
    # log are read on the primary by design)
    assert after["replica"] - before["replica"] >= 10


def test_read_your_writes_while_the_replica_is_paused(
    split_server: Server, cluster: PostgresServer
) -> None:
    replica = cluster.replicas[0]
    alice, a = new_user(split_server, "alice")
    bob, _ = new_user(split_server, "bob")
    wait_replayed(cluster)  # nobody is bound to the primary by a recent write
    replica.sql("SELECT pg_wal_replay_pause()")
    try:
        photo = upload(alice, image_bytes(64, 64))
        # alice sees her own write (served by the primary) ...
        assert photo_ids(alice, a["username"]) == [photo["id"]]
        assert photo_ids(alice, a["username"]) == [photo["id"]]
        # ... while bob still reads the paused replica, which has not replayed it
        assert photo_ids(bob, a["username"]) == []
    finally:
        replica.sql("SELECT pg_wal_replay_resume()")
    wait_until(lambda: photo_ids(bob, a["username"]) == [photo["id"]], what="replay")
    # once the replica has caught up, alice's reads go back to it
    before = reads_by_role(split_server)
    for _ in range(5):
        assert photo_ids(alice, a["username"]) == [photo["id"]]
    after = reads_by_role(split_server)
    assert after["replica"] - before["replica"] >= 5


def test_a_lagging_replica_is_skipped(
    cluster: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    replica = cluster.replicas[0]
    with_limit = start_server(
        tmp_path_factory.mktemp("lag"),
        job_workers=0,
        database_url=cluster.url,
        database_replica_urls=replica.url,
        replica_max_lag_bytes=1,  # any unreplayed byte is too much
    )
    try:
        writer, w = new_user(with_limit)
        reader, _ = new_user(with_limit)
        wait_replayed(cluster)
        replica.sql("SELECT pg_wal_replay_pause()")
        try:
            photo = upload(writer, image_bytes(64, 64))
            # the replica is behind the limit: another user's read is served by the primary
            wait_until(
                lambda: photo_ids(reader, w["username"]) == [photo["id"]],
                what="the lagging replica to be left out",
            )
        finally:
            replica.sql("SELECT pg_wal_replay_resume()")
    finally:
        with_limit.close()


def test_a_stopped_replica_costs_no_failed_request(
    split_server: Server, cluster: PostgresServer
) -> None:
    replica = cluster.replicas[0]
    client, user = new_user(split_server)
    upload(client, image_bytes(64, 64))
    reader, _ = new_user(split_server)
    wait_until(lambda: len(photo_ids(reader, user["username"])) == 1, what="replication")
    replica.stop(signal.SIGKILL)  # the only replica dies: reads fall back to the primary
    try:
        before = reads_by_role(split_server)
        for _ in range(20):
            assert len(photo_ids(reader, user["username"])) == 1
        assert reader.get("/api/v1/feed").status_code == 200
        after = reads_by_role(split_server)
        assert after["primary"] - before["primary"] >= 20
    finally:
        replica.start()
    # the replica comes back and is used again

    def replica_used_again() -> bool:
        before = reads_by_role(split_server)["replica"]
        photo_ids(reader, user["username"])
        return reads_by_role(split_server)["replica"] > before

    wait_until(replica_used_again, timeout=30, what="the replica to be used again")


def test_a_silent_primary_is_not_waited_for_by_every_read(
    cluster: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A primary host that stops answering (no refusal: silence) costs one connect timeout,
    not one per read: reads that a replica may serve skip it until a probe finds it."""
    proxy = TcpProxy(cluster.port)
    srv = start_server(
        tmp_path_factory.mktemp("silent"),
        job_workers=0,
        database_url=cluster.url.replace(f":{cluster.port}/", f":{proxy.port}/"),
        database_replica_urls=cluster.replicas[0].url,
        db_pool_timeout_seconds=2,  # each connect to the silent host waits this long
    )
    try:
        client, _ = new_user(srv)
        photo_id = upload(client, image_bytes(32, 32))["id"]
        wait_replayed(cluster)
        reader = httpx.Client(base_url=srv.url, timeout=30)
        assert reader.get(f"/api/v1/photos/{photo_id}").status_code == 200

        proxy.fall_silent()
        # an anonymous read is a cache fill meant for the primary: served by the replica
        # while the primary is out, and so not cached, each read is a fill again
        statuses = [reader.get(f"/api/v1/photos/{photo_id}").status_code for _ in range(30)]
        assert statuses == [200] * 30
        tries = proxy.accepted_while_silent
        # the first read's try, and the probes (one at a time, each waits 2 s): without
        # the breaker, each read would have tried at least once
        assert 1 <= tries <= 6, tries
        assert replica_events(srv).get("primary_skipped", 0) >= 29

        proxy.answer_again()
        wait_until(lambda: replica_events(srv).get("primary_back", 0) >= 1, what="a probe")
        stale = cache_events(srv).get("stale_load", 0)
        for _ in range(3):
            assert reader.get(f"/api/v1/photos/{photo_id}").status_code == 200
        assert cache_events(srv).get("stale_load", 0) == stale  # fresh again, and cached
    finally:
        srv.close()
        proxy.close()


def replica_events(server: Server) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in metric_values(server, "picscale_db_replica_events_total").items():
        event = re.search(r'event="(\w+)"', labels)
        if event:
            out[event.group(1)] = out.get(event.group(1), 0) + value
    return out
