"""Patroni failover under a write loop: writes resume, no acknowledged write is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.api import new_user
from tests.support.images import image_bytes
from tests.support.patroni_cluster import PatroniCluster, start_patroni_cluster
from tests.support.picscale_server import running_server
from tests.support.waiting import wait_until

RETRY_PAUSE = 0.1  # a client backing off between failed writes


@pytest.fixture(scope="module")
def patroni() -> Iterator[PatroniCluster]:
    cluster = start_patroni_cluster(size=2)
    yield cluster
    cluster.close()


@dataclass
class WriteLoop:
    """A client uploading as fast as it can, keeping what the server acknowledged."""

    client: httpx.Client
    stop: threading.Event = field(default_factory=threading.Event)
    acknowledged: list[tuple[float, str]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)

    def run(self) -> None:
        photo = image_bytes(32, 32)
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                r = self.client.post(
                    "/api/v1/photos",
                    files={"file": ("w.jpg", photo, "image/jpeg")},
                    data={"caption": f"write {i}"},
                )
            except httpx.HTTPError as exc:
                self.failures.append((time.monotonic(), type(exc).__name__))
                time.sleep(RETRY_PAUSE)
                continue
            if r.status_code == 201:
                self.acknowledged.append((time.monotonic(), r.json()["id"]))
            else:
                assert r.status_code == 503, r.text  # unavailable, never a wrong answer
                assert r.headers.get("retry-after")
                self.failures.append((time.monotonic(), str(r.status_code)))
                time.sleep(RETRY_PAUSE)


def test_replicas_are_discovered_from_patroni(patroni: PatroniCluster, tmp_path: Path) -> None:
    leader = patroni.wait_leader()
    replica = next(n for n in patroni.nodes if n is not leader)
    apis = ",".join(n.api for n in patroni.nodes)
    with running_server(
        tmp_path, job_workers=0, database_url=patroni.url, database_patroni_url=apis
    ) as server:
        client, user = new_user(server)
        gallery = f"/api/v1/users/{user['username']}/photos"

        def replica_reads() -> float:
            metrics = server.client().get("/metrics").text
            needle = f'host="127.0.0.1:{replica.pg_port}",intent="read",role="replica"'
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("picscale_db_queries_total{") and needle in line
            )

        def served_by_replica() -> bool:
            before = replica_reads()
            assert client.get(gallery, params={"limit": 5}).status_code == 200
            return replica_reads() > before

        # the Patroni member list names the replica; reads go there
        wait_until(served_by_replica, timeout=30, what="reads on the discovered replica")


def test_failover_loses_no_acknowledged_write(patroni: PatroniCluster, tmp_path: Path) -> None:
    with running_server(tmp_path, job_workers=0, database_url=patroni.url) as server:
        client, _ = new_user(server)
        loop = WriteLoop(client)
        writer = threading.Thread(target=loop.run)
        writer.start()
        try:
            wait_until(lambda: len(loop.acknowledged) >= 10, what="writes before the kill")
            old = patroni.wait_leader()
            killed_at = time.monotonic()
            old.kill()
            # writes resume on the new primary
            wait_until(
                lambda: sum(t > killed_at for t, _ in loop.acknowledged) >= 10,
                timeout=90,
                interval=0.2,
                what="writes after the failover",
            )
        finally:
            loop.stop.set()
            writer.join(timeout=60)
        new = patroni.wait_leader()
        assert new is not old
        # every acknowledged write is there
        reader = server.client()
        for _, photo_id in loop.acknowledged:
            assert reader.get(f"/api/v1/photos/{photo_id}").status_code == 200, photo_id
        # the old primary comes back as a replica of the new one (pg_rewind)
        old.start()
        patroni.wait_streaming(old)
        assert patroni.leader() is new


def test_reads_are_served_by_a_replica_while_the_primary_is_gone(
    patroni: PatroniCluster, tmp_path: Path
) -> None:
    """Cache fills read on the primary (they must see every commit); while it is gone,
    a replica serves them instead of a 503, and what it served is not cached."""
    old = patroni.wait_leader()
    replica = next(n for n in patroni.nodes if n is not old)
    patroni.wait_streaming(replica)
    apis = ",".join(n.api for n in patroni.nodes)
    with running_server(
        tmp_path, job_workers=0, database_url=patroni.url, database_patroni_url=apis
    ) as server:
        client, _ = new_user(server)
        photo = image_bytes(16, 16)
        ids = []
        for i in range(20):
            r = client.post("/api/v1/photos", files={"file": ("r.jpg", photo, "image/jpeg")},
                            data={"caption": f"read {i}"})  # fmt: skip
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        ours = ",".join(str(i) for i in ids)
        wait_until(
            lambda: (
                patroni.psql(
                    replica, f"SELECT count(*) FROM photos WHERE id IN ({ours})", "picscale"
                )
                == str(len(ids))
            ),
            what="the photos on the replica",
        )
        reader = server.client()

        def stale_loads() -> float:
            for line in reader.get("/metrics").text.splitlines():
                if line.startswith('picscale_cache_events_total{event="stale_load"}'):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        old.kill()
        statuses: list[int] = []
        read_during_failover = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            new = patroni.leader()
            if new is not None and new is not old:
                break
            for photo_id in ids:  # never read before: each is a cache fill
                statuses.append(reader.get(f"/api/v1/photos/{photo_id}").status_code)
            read_during_failover += 1
        assert read_during_failover > 1
        assert set(statuses) == {200}, statuses
        # a photo the replica served was loaded again on the next pass: not cached
        assert stale_loads() > len(ids)
        old.start()
        patroni.wait_streaming(old)
