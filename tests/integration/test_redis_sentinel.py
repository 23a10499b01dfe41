"""Redis failover with Sentinel: the master dies under load, no request fails, and the
sessions written before it are still valid after."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_api import new_user

from redis_sentinel import SentinelGroup, start_sentinel_group
from redis_sentinel import _ask as ask
from support import running_server, wait_until


def dbsize(port: int) -> int:
    return int(ask(port, b"DBSIZE\r\n").strip().lstrip(b":"))


@pytest.fixture
def sentinels() -> Iterator[SentinelGroup]:
    group = start_sentinel_group()
    yield group
    group.close()


def test_master_killed_under_load(sentinels: SentinelGroup, tmp_path: Path) -> None:
    with running_server(
        tmp_path, job_workers=0, session_url=sentinels.url, cache_url=sentinels.url
    ) as server:
        users = [new_user(server)[0] for _ in range(5)]
        old_master = sentinels.master_port()
        # the sessions have reached the replica before the master dies (replication is
        # asynchronous: a session made in the last moment before a crash can be lost)
        wait_until(
            lambda: dbsize(sentinels.master.port) == dbsize(sentinels.replica.port),
            what="the replica to hold every session",
        )
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                for client in users:
                    statuses.append(client.get("/api/v1/me").status_code)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            wait_until(lambda: len(statuses) >= 50, what="requests before the kill")
            sentinels.master.stop(signal.SIGKILL)
            wait_until(
                lambda: sentinels.master_port() != old_master, timeout=60, what="a new master"
            )
            count = len(statuses)
            wait_until(lambda: len(statuses) >= count + 50, timeout=60, what="requests after")
        finally:
            stop.set()
            worker.join(timeout=60)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        for client in users:  # sessions from before the kill still valid
            assert client.get("/api/v1/me").status_code == 200
        assert httpx.get(server.url + "/readyz").status_code == 200
