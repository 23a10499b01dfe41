"""The job queue on both backends (the SQLite lease table and a real RabbitMQ): dead
letters and the `picscale jobs dead` commands, a broker restart under queued jobs, and a
commit whose publish never happened (the outbox relay)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.api import new_user, upload, wait_ready
from tests.support.images import image_bytes
from tests.support.picscale_server import Process, base_env, running_server, start_process
from tests.support.rabbitmq_server import RabbitServer, RabbitVhost, start_rabbitmq
from tests.support.waiting import wait_until


@pytest.fixture(params=["lease", "amqp"])
def queue_url(request: pytest.FixtureRequest) -> str:
    if request.param == "lease":
        return "lease://"
    rabbit: RabbitVhost = request.getfixturevalue("rabbitmq")
    asyncio.run(_reset_broker(rabbit.url))
    return rabbit.url


async def _reset_broker(url: str) -> None:
    """Each test starts with empty queues (a broker may be shared by the module)."""
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in ("picscale.jobs", "picscale.jobs.dead"):
            await channel.queue_delete(name)


def dead_letters(url: str) -> int:
    async def count() -> int:
        import aio_pika

        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("picscale.jobs.dead", passive=True)
            return int(queue.declaration_result.message_count or 0)

    return asyncio.run(count())


def cli(data_dir: Path, *args: str, **settings: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "picscale", *args],
        env=base_env(data_dir, **settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def job_rows(data_dir: Path) -> dict[str, tuple[str, int, str | None]]:
    with sqlite3.connect(data_dir / "picscale.db") as conn:
        rows = conn.execute("SELECT id, status, attempts, published_at FROM jobs").fetchall()
    return {str(r[0]): (r[1], r[2], r[3]) for r in rows}


@pytest.fixture
def worker_env(tmp_path: Path, queue_url: str) -> dict[str, str]:
    return base_env(tmp_path, queue_url=queue_url, job_max_attempts=3)


def start_worker(tmp_path: Path, env: dict[str, str], name: str = "worker") -> Process:
    return start_process(["worker"], env, tmp_path / f"{name}.log")


def test_a_poison_job_is_dead_lettered_then_retried(
    tmp_path: Path, queue_url: str, worker_env: dict[str, str]
) -> None:
    settings = {"queue_url": queue_url, "job_max_attempts": 3}
    with running_server(tmp_path, job_workers=0, **settings) as server:
        client, _ = new_user(server)
        photos = [upload(client, image_bytes(120, 80))["id"] for _ in range(2)]
        # the sources vanish before any worker runs: every attempt fails
        sources = {p: tmp_path / "media" / "photos" / p / "source" for p in photos}
        kept = {p: path.read_bytes() for p, path in sources.items()}
        for path in sources.values():
            path.unlink()
        worker = start_worker(tmp_path, worker_env)
        try:

            def failed() -> bool:
                return all(
                    client.get(f"/api/v1/photos/{p}").json()["status"] == "failed" for p in photos
                )

            wait_until(failed, timeout=60, what="both jobs to run out of attempts")
            rows = job_rows(tmp_path)
            dead = {jid for jid, (status, attempts, _) in rows.items() if status == "dead"}
            assert len(dead) == 2
            assert all(rows[j][1] == 3 for j in dead)  # exactly the attempt limit
            listed = cli(tmp_path, "jobs", "dead", "list", **settings)
            assert listed.returncode == 0, listed.stderr
            assert all(j in listed.stdout for j in dead)
            assert "MediaNotFound" in listed.stdout  # the last error
            if queue_url.startswith("amqp"):
                wait_until(lambda: dead_letters(queue_url) == 2, what="two dead letters")

            # put one source back and retry its job by id: it completes
            first, second = photos
            sources[first].write_bytes(kept[first])
            first_job = next(j for j in dead if _photo_of(tmp_path, j) == first)
            retried = cli(tmp_path, "jobs", "dead", "retry", first_job, **settings)
            assert retried.returncode == 0, retried.stderr
            assert "queued 1 job" in retried.stdout
            wait_ready(client, first)
            if queue_url.startswith("amqp"):
                assert dead_letters(queue_url) == 1  # its message left the dead letters

            again = cli(tmp_path, "jobs", "dead", "retry", first_job, **settings)
            assert again.returncode != 0 and "not dead" in again.stderr
            both = cli(tmp_path, "jobs", "dead", "retry", first_job, "--all", **settings)
            assert both.returncode != 0  # one or the other

            purged = cli(tmp_path, "jobs", "dead", "purge", "--yes", **settings)
            assert purged.returncode == 0 and "purged 1 dead job" in purged.stdout
            assert "no dead jobs" in cli(tmp_path, "jobs", "dead", "list", **settings).stdout
            if queue_url.startswith("amqp"):
                assert dead_letters(queue_url) == 0
            assert client.get(f"/api/v1/photos/{second}").json()["status"] == "failed"
        finally:
            worker.stop()


def _photo_of(data_dir: Path, job_id: str) -> str:
    with sqlite3.connect(data_dir / "picscale.db") as conn:
        (photo_id,) = conn.execute(
            "SELECT photo_id FROM jobs WHERE id = ?", (int(job_id),)
        ).fetchone()
    return str(photo_id)


@pytest.fixture(scope="module")
def own_rabbitmq() -> Iterator[RabbitServer]:
    """A node of the module's own: the tests below stop and start it."""
    node = start_rabbitmq()
    yield node
    node.close()


@pytest.fixture
def broker(own_rabbitmq: RabbitServer) -> Iterator[RabbitServer]:
    asyncio.run(_reset_broker(own_rabbitmq.url))
    yield own_rabbitmq
    if own_rabbitmq.proc is None or own_rabbitmq.proc.poll() is not None:
        own_rabbitmq.start()  # leave it running for the next test


def test_a_broker_restart_loses_no_queued_job(tmp_path: Path, broker: RabbitServer) -> None:
    with running_server(tmp_path, job_workers=0, queue_url=broker.url) as server:
        client, _ = new_user(server)
        photos = [upload(client, image_bytes(100, 100))["id"] for _ in range(5)]
        assert all(published for _, _, published in job_rows(tmp_path).values())
        broker.stop()  # the jobs wait in the broker, not in any process
        broker.start()
        worker = start_worker(tmp_path, base_env(tmp_path, queue_url=broker.url))
        try:
            for photo_id in photos:
                wait_ready(client, photo_id)
        finally:
            worker.stop()
        assert {s for s, _, _ in job_rows(tmp_path).values()} == {"done"}


def test_a_job_committed_but_never_published_is_relayed(
    tmp_path: Path, broker: RabbitServer
) -> None:
    with running_server(tmp_path, job_workers=0, queue_url=broker.url) as server:
        client, _ = new_user(server)
        broker.stop()  # the commit happens; the publish cannot
        photo = upload(client, image_bytes(100, 100))["id"]
        rows = job_rows(tmp_path)
        # the photo's render and its fan-out, both in the outbox
        assert [published for _, _, published in rows.values()] == [None, None]
        broker.start()
        env = base_env(tmp_path, queue_url=broker.url, log_level="info")
        worker = start_worker(tmp_path, env)
        try:
            wait_ready(client, photo)
            wait_until(
                lambda: {s for s, _, _ in job_rows(tmp_path).values()} == {"done"},
                what="both jobs to be done",
            )
        finally:
            worker.stop()
        for status, attempts, published in job_rows(tmp_path).values():
            assert (status, attempts) == ("done", 1) and published is not None
        log = (tmp_path / "worker.log").read_text().splitlines()
        events = [json.loads(line).get("event") for line in log if line.startswith("{")]
        assert "jobs_relayed" in events  # the relay published it, not the request


def autoscale_decisions(log_path: Path) -> list[int]:
    """The worker counts the autoscaler decided on, in order."""
    if not log_path.exists():
        return []
    out = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "autoscale":
                out.append(int(entry["workers"]))
    return out


def test_a_burst_grows_the_workers_and_an_empty_queue_shrinks_them(
    tmp_path: Path, queue_url: str
) -> None:
    settings = {
        "queue_url": queue_url,
        "autoscale_jobs_per_worker": 20,
        "autoscale_up_samples": 2,
        "autoscale_cooldown_seconds": 2,
        "autoscale_interval_seconds": 0.5,
    }
    with running_server(tmp_path, job_workers=0, queue_url=queue_url) as server:
        client, _ = new_user(server)
        image = image_bytes(96, 64)
        # a burst of 100 jobs: 5 workers' worth, so the 3 allowed are wanted until most are
        # done (the first worker is still starting when the readings that grow are taken)
        with ThreadPoolExecutor(max_workers=8) as pool:
            photos = list(pool.map(lambda _: upload(client, image)["id"], range(100)))
        log_path = tmp_path / "autoscale.log"
        env = base_env(tmp_path, log_level="info", **settings)
        scaler = start_process(["worker", "--autoscale", "1:3"], env, log_path)
        try:
            wait_until(lambda: 3 in autoscale_decisions(log_path), timeout=60, what="growing to 3")

            def all_done() -> bool:
                return {s for s, _, _ in job_rows(tmp_path).values()} == {"done"}

            wait_until(all_done, timeout=120, what="the burst to be worked off")
            wait_until(
                lambda: autoscale_decisions(log_path)[-1:] == [1],
                timeout=60,
                what="shrinking back to 1",
            )
        finally:
            scaler.stop()
        decided = autoscale_decisions(log_path)
        assert decided[0] == 1 and max(decided) == 3
        assert decided[decided.index(3) :] == [3, 2, 1]  # one step per cooldown
        assert client.get(f"/api/v1/photos/{photos[-1]}").json()["status"] == "ready"
