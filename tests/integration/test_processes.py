"""Several processes on one data directory: no stale cache reads, jobs survive SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
import pyvips

from tests.support.api import new_user, upload, wait_job, wait_ready
from tests.support.images import image_bytes
from tests.support.picscale_server import base_env, running_server, start_process
from tests.support.waiting import wait_until


def test_write_through_one_process_read_through_another(tmp_path: Path) -> None:
    """Two servers (separate processes, separate in-process caches) on one database."""
    with (
        running_server(tmp_path, job_workers=1) as first,
        running_server(tmp_path, job_workers=0) as second,
    ):
        client, user = new_user(first)
        name = user["username"]
        headers = {"Authorization": client.headers["Authorization"]}
        reader = second.client(headers=headers)
        photo = wait_ready(client, upload(client, _jpeg())["id"])

        # warm the second process's cache with the current values
        for _ in range(3):
            assert reader.get(f"/api/v1/users/{name}").json()["photo_count"] == 1
            assert reader.get(f"/api/v1/photos/{photo['id']}").json()["version"] == 1
            assert len(reader.get(f"/api/v1/users/{name}/photos").json()["items"]) == 1

        # write through the first process; the very next read through the second sees it
        r = client.patch("/api/v1/me", json={"display_name": "Renamed"})
        assert r.status_code == 200, r.text
        assert reader.get(f"/api/v1/users/{name}").json()["display_name"] == "Renamed"

        job = client.post(
            f"/api/v1/photos/{photo['id']}/edits",
            json={"operations": [{"op": "crop", "x": 0, "y": 0, "width": 100, "height": 80}]},
        ).json()
        assert wait_job(client, job["id"])["status"] == "done"
        assert reader.get(f"/api/v1/photos/{photo['id']}").json()["version"] == 2

        second_photo = upload(client, _jpeg())
        assert reader.get(f"/api/v1/users/{name}").json()["photo_count"] == 2
        assert len(reader.get(f"/api/v1/users/{name}/photos").json()["items"]) == 2

        assert client.delete(f"/api/v1/photos/{second_photo['id']}").status_code == 204
        assert reader.get(f"/api/v1/photos/{second_photo['id']}").status_code == 404
        assert reader.get(f"/api/v1/users/{name}").json()["photo_count"] == 1


def test_many_web_processes_share_invalidations(tmp_path: Path) -> None:
    """--workers 2: whichever process answers, it never serves a stale profile."""
    with running_server(tmp_path, workers=2, job_workers=0) as server:
        client, user = new_user(server)
        name = user["username"]
        readers = [server.client() for _ in range(6)]  # separate connections spread out
        for i in range(8):
            for reader in readers:
                reader.get(f"/api/v1/users/{name}")  # warm both processes
            assert client.patch("/api/v1/me", json={"display_name": f"n{i}"}).status_code == 200
            seen = {
                reader.get(f"/api/v1/users/{name}").json()["display_name"] for reader in readers
            }
            assert seen == {f"n{i}"}
        # each process adds its counts to the shared files every second
        scraper = server.client()
        wait_until(
            lambda: "picscale_http_requests_total" in scraper.get("/metrics").text,
            what="the request counts in /metrics",
        )


def _jpeg(width: int = 640, height: int = 480) -> bytes:
    return image_bytes(width, height)


def _slow_jpeg() -> bytes:
    """A photo whose edit takes a while (seconds: far longer than the tests take to act
    on a running job): two big blurs on 3 megapixels of noise."""
    noise = pyvips.Image.gaussnoise(2000, 1500, mean=128, sigma=40)
    image = noise.bandjoin([noise, noise]).cast("uchar")
    data: bytes = image.jpegsave_buffer(Q=85)
    return data


def _versions(db: Path, photo_id: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT version FROM photo_versions WHERE photo_id = ? ORDER BY version",
            (int(photo_id),),
        ).fetchall()
    return [r[0] for r in rows]


def _job_row(db: Path, job_id: str) -> tuple[str, int, str | None, int]:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT status, attempts, lease_owner, crashes FROM jobs WHERE id = ?",
            (int(job_id),),
        ).fetchone()
    return row[0], row[1], row[2], row[3]


@pytest.mark.parametrize("backend", ["lease", "amqp"])
def test_worker_killed_mid_job_the_job_completes_once(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """On the lease table the lease runs out; on RabbitMQ the unacked message goes back
    to the queue when the worker's connection drops."""
    lease = 3
    queue_url = "lease://"
    if backend == "amqp":
        queue_url = request.getfixturevalue("rabbitmq").url
    settings = {"job_lease_seconds": lease, "queue_url": queue_url}
    with running_server(tmp_path, job_workers=0, **settings) as server:
        db = tmp_path / "picscale.db"
        env = base_env(tmp_path, **settings)
        first = start_process(["worker"], env, tmp_path / "worker-1.log")
        try:
            client, _ = new_user(server)
            photo = wait_ready(client, upload(client, _slow_jpeg())["id"])
            job = client.post(
                f"/api/v1/photos/{photo['id']}/edits",
                json={"operations": [{"op": "blur", "sigma": 40}, {"op": "blur", "sigma": 40}]},
            ).json()

            def running() -> bool:
                status, attempts, owner, _ = _job_row(db, job["id"])
                return status == "running" and attempts == 1 and owner is not None

            wait_until(running, timeout=30, what="the worker to claim the edit")
            # the worker dies without any chance to clean up
            os.killpg(first.pid, signal.SIGKILL)
            first.proc.wait()
            assert _job_row(db, job["id"])[0] == "running"  # killed mid-job
            assert _versions(db, photo["id"]) == [1]
        finally:
            first.stop()

        second = start_process(["worker"], env, tmp_path / "worker-2.log")
        try:
            done = wait_job(client, job["id"])
            assert done["status"] == "done" and done["version"] == 2
            status, attempts, _, crashes = _job_row(db, job["id"])
            # a second delivery finished it: the same attempt, after one crash
            assert (status, attempts, crashes) == ("done", 1, 1)
            assert _versions(db, photo["id"]) == [1, 2]  # exactly one new version
            current = client.get(f"/api/v1/photos/{photo['id']}").json()
            assert current["version"] == 2
            assert httpx.get(server.url + current["urls"]["thumb"]).status_code == 200
        finally:
            second.stop()


def test_request_id_on_every_line_and_on_the_job(tmp_path: Path) -> None:
    with running_server(tmp_path, job_workers=1, log_level="info") as server:
        client, _ = new_user(server)
        r = client.post(
            "/api/v1/photos",
            files={"file": ("a.jpg", _jpeg(), "image/jpeg")},
            headers={"X-Request-ID": "req-upload-42"},
        )
        assert r.headers["x-request-id"] == "req-upload-42"
        wait_ready(client, r.json()["id"])

        def lines() -> list[dict]:
            out = []
            for line in server.process.log().splitlines():
                if line.startswith("{"):
                    out.append(json.loads(line))
            return out

        def job_logged() -> list[dict]:
            return [e for e in lines() if e.get("event") == "job_done"]

        wait_until(job_logged, what="the worker's job_done line")
        tagged = [e for e in lines() if e.get("request_id") == "req-upload-42"]
        processes = {e.get("process") for e in tagged}
        assert {"web", "worker"} <= processes  # the request and the job it queued
        assert any(e["event"] == "request" and e["status"] == 201 for e in tagged)
        assert all("timestamp" in e and "level" in e for e in lines())
        # libraries' lines (pyvips, say) come out as JSON too; only the banner is text
        text = [
            line
            for line in server.process.log().splitlines()
            if line.strip() and not line.startswith("{")
        ]
        assert all(line.startswith(("picscale ", "serving ")) for line in text), text[:5]


@pytest.mark.parametrize("backend", ["lease", "amqp"])
def test_sigterm_lets_the_running_job_finish(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """A worker told to stop mid-job finishes that job (one attempt), then exits 0."""
    queue_url = "lease://"
    if backend == "amqp":
        queue_url = request.getfixturevalue("rabbitmq").url
    with running_server(tmp_path, job_workers=0, queue_url=queue_url) as server:
        db = tmp_path / "picscale.db"
        env = base_env(tmp_path, queue_url=queue_url)
        worker = start_process(["worker"], env, tmp_path / "worker.log")
        try:
            client, _ = new_user(server)
            photo = wait_ready(client, upload(client, _slow_jpeg())["id"])
            job = client.post(
                f"/api/v1/photos/{photo['id']}/edits",
                json={"operations": [{"op": "blur", "sigma": 40}, {"op": "blur", "sigma": 40}]},
            ).json()
            wait_until(lambda: _job_row(db, job["id"])[0] == "running", what="the edit to start")
            os.killpg(worker.pid, signal.SIGTERM)
            # still running once the signal is sent: the worker was told to stop mid-job
            assert _job_row(db, job["id"])[0] == "running"
            assert worker.proc.wait(timeout=60) == 0
            status, attempts, _, crashes = _job_row(db, job["id"])
            assert (status, attempts, crashes) == ("done", 1, 0)  # finished by the stopping worker
            assert _versions(db, photo["id"]) == [1, 2]
        finally:
            worker.stop()
