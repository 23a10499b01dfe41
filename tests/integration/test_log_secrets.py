"""No credential reaches a log: a real server's 500s (their tracebacks carry the frames'
local variables) and its files, checked for known secrets."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import uuid
from pathlib import Path

from tests.support.api import upload
from tests.support.images import image_bytes
from tests.support.picscale_server import running_server


def _broken(db: Path, *tables: str) -> None:
    """Tables gone under a running server: the requests that use them fail with a 500
    (an error no input can cause, and no change to the code fixes)."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        for table in tables:
            conn.execute(f"DROP TABLE {table}")


def test_tracebacks_of_500s_carry_no_credentials(tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    wrong_password = f"wrong-{uuid.uuid4().hex}"
    with running_server(tmp_path, job_workers=0, log_level="info") as server:
        api = server.client()
        name = f"u_{uuid.uuid4().hex[:10]}"
        assert api.post("/api/v1/users", json={"username": name, "password": password}).is_success
        login = api.post("/api/v1/sessions", json={"username": name, "password": password})
        assert login.status_code == 201, login.text
        token = login.json()["token"]
        session_cookie = login.cookies["picscale_session"]
        bearer = server.client(headers={"Authorization": f"Bearer {token}"})
        upload(bearer, image_bytes(64, 48))
        browser = server.client(headers={"Accept": "text/html"})
        assert browser.get("/login").status_code == 200
        csrf = browser.cookies["picscale_csrf"]

        _broken(tmp_path / "picscale.db", "login_failures", "photos", "photo_versions")
        answers = [
            # the bearer token in the scope's headers, the request object, the session
            bearer.get("/api/v1/feed").status_code,
            bearer.post(
                "/api/v1/photos", files={"file": ("a.jpg", image_bytes(64, 48), "image/jpeg")}
            ).status_code,
            # a password in the JSON body, the decoded payload, the handler's arguments
            api.post(
                "/api/v1/sessions", json={"username": name, "password": wrong_password}
            ).status_code,
            # a password and the CSRF token in a form body, the session cookie on a page
            browser.post(
                "/login", data={"username": name, "password": password, "csrf_token": csrf}
            ).status_code,
            server.client(
                cookies={"picscale_session": session_cookie}, headers={"Accept": "text/html"}
            )
            .get(f"/u/{name}")
            .status_code,
        ]
        assert answers.count(500) >= 4, answers
        log = server.process.log()

    errors = [
        json.loads(line)
        for line in log.splitlines()
        if line.startswith("{") and '"unhandled_error"' in line
    ]
    assert len(errors) >= 4
    # the tracebacks still show their frames' variables: what makes them worth logging
    assert any(frame.get("locals") for e in errors for frame in e["exception"][0]["frames"])
    for secret in (token, password, wrong_password, session_cookie, csrf):
        # whole, or a piece of it (a variable's value cut short)
        assert secret[:12] not in log, f"{secret[:12]}… is in the log"
    assert "[redacted]" in log


def test_files_with_secrets_are_private(tmp_path: Path) -> None:
    """The database (password hashes, session tokens) and its WAL: the owner's alone.
    No secret_key file: nothing would read it."""
    with running_server(tmp_path, job_workers=0) as server:
        assert server.client().get("/readyz").status_code == 200
        files = [p for p in tmp_path.iterdir() if re.fullmatch(r"picscale\.db(-wal|-shm)?", p.name)]
        assert {p.name for p in files} >= {"picscale.db", "picscale.db-wal"}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert not (tmp_path / "secret_key").exists()
