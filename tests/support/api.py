"""The JSON API as a client uses it: sign up and log in, upload, wait for a photo or a job."""

from __future__ import annotations

import json
import uuid

import httpx

from tests.support.picscale_server import Server
from tests.support.waiting import wait_until

PASSWORD = "correct horse battery"


def new_user(server: Server, prefix: str = "u") -> tuple[httpx.Client, dict[str, str]]:
    """A signed-up user and a client holding a bearer token for them."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    client = server.client()
    created = client.post("/api/v1/users", json={"username": name, "password": PASSWORD})
    assert created.status_code == 201, created.text
    session = client.post("/api/v1/sessions", json={"username": name, "password": PASSWORD})
    assert session.status_code == 201, session.text
    client.cookies.clear()
    client.headers["Authorization"] = f"Bearer {session.json()['token']}"
    return client, created.json()


def upload(client: httpx.Client, data: bytes, name: str = "p.jpg", caption: str = "") -> dict:
    r = client.post(
        "/api/v1/photos", files={"file": (name, data, "image/jpeg")}, data={"caption": caption}
    )
    assert r.status_code == 201, r.text
    return r.json()


def wait_ready(client: httpx.Client, photo_id: str) -> dict:
    def ready() -> dict | None:
        body = client.get(f"/api/v1/photos/{photo_id}").json()
        return body if body["status"] == "ready" else None

    return wait_until(ready, timeout=60, what=f"photo {photo_id} to be ready")


def wait_job(client: httpx.Client, job_id: str) -> dict:
    def done() -> dict | None:
        body = client.get(f"/api/v1/jobs/{job_id}").json()
        return body if body["status"] in ("done", "failed") else None

    return wait_until(done, timeout=60, what=f"job {job_id}")


def job_events(client: httpx.Client, job_id: str) -> list[dict]:
    """Every `status` event of a job's stream, until the server ends it."""
    events: list[dict] = []
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "status":
                events.append(json.loads(line.split(":", 1)[1]))
    return events
