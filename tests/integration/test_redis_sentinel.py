"""Redis failover with Sentinel: the master dies under load, no request fails, and the
sessions written before it are still valid after."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import new_user
from tests.support.picscale_server import running_server
from tests.support.redis_sentinel import SentinelGroup, start_sentinel_group
from tests.support.redis_sentinel import _ask as ask
from tests.support.waiting import wait_until


@pytest.fixture
def sentinels() -> Iterator[SentinelGroup]:
    group = start_sentinel_group()
    yield group
    group.close()


def test_logins_and_logouts_wait_for_the_replica(sentinels: SentinelGroup) -> None:
    """A login is acknowledged once the replica has it (WAIT); with the replica frozen,
    the store gives up waiting after half a second and says so."""
    from datetime import timedelta

    from picscale.tiers.redis_client import redis_client
    from picscale.tiers.sessions.redis import RedisSessionStore

    async def scenario() -> list[int | None]:
        store = RedisSessionStore(
            redis_client(sentinels.url, timeout=1.0), timedelta(hours=1), wait_replicas=1
        )
        seen: list[int | None] = []
        try:
            session = await store.create(42)
            seen.append(store.last_replicated)
            assert (
                ask(sentinels.replica.port, b"EXISTS " + session_key(session.token) + b"\r\n")[:2]
                == b":1"
            )  # already there: no waiting for replication needed
            replica = sentinels.replica.proc
            assert replica is not None
            replica.send_signal(signal.SIGSTOP)
            try:
                await store.create(43)
                seen.append(store.last_replicated)
            finally:
                replica.send_signal(signal.SIGCONT)
            await store.delete(session.token)
            seen.append(store.last_replicated)
            assert await store.get(session.token) is None
        finally:
            await store._redis.aclose()
        return seen

    assert asyncio.run(scenario()) == [1, 0, 1]


def session_key(token: str) -> bytes:
    from picscale.tiers.sessions.port import token_digest
    from picscale.tiers.sessions.redis import PREFIX

    return (PREFIX + token_digest(token)).encode()


def test_master_killed_under_load(sentinels: SentinelGroup, tmp_path: Path) -> None:
    with running_server(
        tmp_path, job_workers=0, session_url=sentinels.url, cache_url=sentinels.url
    ) as server:
        users = [new_user(server)[0] for _ in range(5)]
        old_master = sentinels.master_port()
        # no waiting for replication here: each login waited for the replica (WAIT)
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
