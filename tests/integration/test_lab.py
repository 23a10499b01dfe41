"""`picscale lab` at stage 3 (PostgreSQL, 2 web servers, HAProxy), under supervisord:
up, status, a web server killed under load, logs, down with nothing left."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from support import wait_until


def lab(*args: str, lab_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "picscale", "lab", *args, "--dir", str(lab_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z":
            alive.append(pid)
    return alive


def timestamp(line: str) -> str | None:
    try:
        value = json.loads(line).get("timestamp")
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def status(lab_dir: Path) -> dict[str, dict[str, str]]:
    lines = lab("status", lab_dir=lab_dir).stdout.splitlines()
    header = lines[0].split()
    rows = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(header, cells, strict=False))
    return rows


@pytest.fixture(scope="module")
def lab_dir() -> Iterator[Path]:
    # under /tmp itself: the postgres user must be able to reach its data directory
    root = Path(tempfile.mkdtemp(prefix="picscale-lab-"))
    try:
        yield root
    finally:
        if (root / "lab.json").exists():
            lab("down", lab_dir=root, check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_stage_3_up_survives_a_dead_web_server_and_goes_down_cleanly(lab_dir: Path) -> None:
    started = lab("up", "--stage", "3", lab_dir=lab_dir)
    for name in ("postgres", "web1", "web2", "haproxy"):
        assert f"{name}" in started.stderr and "healthy" in started.stderr
    front = re.search(r"^Picscale\s+(http://\S+)$", started.stdout, re.MULTILINE)
    assert front is not None, started.stdout
    base = front.group(1)
    rows = status(lab_dir)
    assert set(rows) == {"postgres", "web1", "web2", "haproxy"}
    assert all(r["health"] == "healthy" for r in rows.values()), rows
    pids = [int(r["pid"]) for r in rows.values()]
    supervisord = int((lab_dir / "supervisord.pid").read_text())

    # one lab per directory: another stage is refused, the same one resumes
    other = lab("up", "--stage", "2", lab_dir=lab_dir, check=False)
    assert other.returncode != 0 and "lab down" in other.stderr
    again = lab("up", "--stage", "3", lab_dir=lab_dir)
    assert again.stderr.count("already up") == 4
    assert int((lab_dir / "supervisord.pid").read_text()) == supervisord

    # a user signs up through the load balancer; any web server knows them
    client = httpx.Client(base_url=base, timeout=30)
    name = f"lab_{uuid.uuid4().hex[:8]}"
    password = "correct horse battery"
    assert (
        client.post("/api/v1/users", json={"username": name, "password": password}).status_code
        == 201
    )
    token = client.post("/api/v1/sessions", json={"username": name, "password": password})
    client.headers["Authorization"] = f"Bearer {token.json()['token']}"
    client.cookies.clear()

    def under_load(action: Callable[[], None], after: int = 200) -> list[int]:
        """Status codes of GET /api/v1/me sent without pause while ``action`` runs."""
        codes: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=base, timeout=30) as reader:
                reader.headers["Authorization"] = client.headers["Authorization"]
                while not stop.is_set() and len(codes) < 5000:
                    try:
                        codes.append(reader.get("/api/v1/me").status_code)
                    except httpx.HTTPError:
                        codes.append(0)

        thread = threading.Thread(target=load)
        thread.start()
        try:
            wait_until(lambda: len(codes) >= 50, timeout=30, what="requests before")
            action()
            before = len(codes)
            wait_until(lambda: len(codes) >= before + after, timeout=60, what="requests after")
        finally:
            stop.set()
            thread.join()
        return codes

    # web1 dies while requests flow: HAProxy retries them on web2, no one sees a failure
    web1_group = int(status(lab_dir)["web1"]["pid"])

    def kill_web1() -> None:
        killed = lab("kill", "web1", lab_dir=lab_dir)
        assert re.search(r"killed web1 \(pid \d+\)", killed.stdout)
        # the whole server: its granian and job worker processes too
        assert pids_alive(group_members(web1_group)) == []

    codes = under_load(kill_web1)
    assert codes.count(200) == len(codes), sorted(set(codes))
    rows = status(lab_dir)
    assert rows["web1"]["health"] == "down" and rows["web2"]["health"] == "healthy"
    lab("start", "web1", lab_dir=lab_dir)
    wait_until(
        lambda: "2 web servers up" in status(lab_dir)["haproxy"].get("figure", ""),
        timeout=30,
        what="HAProxy to see web1 again",
    )

    # the web tier grows and shrinks through HAProxy's runtime API, under load
    haproxy_pid = status(lab_dir)["haproxy"]["pid"]
    codes = under_load(lambda: lab("scale", "web=3", lab_dir=lab_dir) and None)
    assert codes.count(200) == len(codes), sorted(set(codes))
    rows = status(lab_dir)
    assert rows["web3"]["health"] == "healthy" and "3 web servers up" in rows["haproxy"]["figure"]
    extra_pid = int(rows["web3"]["pid"])
    codes = under_load(lambda: lab("scale", "web=2", lab_dir=lab_dir) and None)
    assert codes.count(200) == len(codes), sorted(set(codes))
    rows = status(lab_dir)
    assert "web3" not in rows and pids_alive([extra_pid]) == []
    assert rows["haproxy"]["pid"] == haproxy_pid  # never restarted

    # one stream of every component's lines, in time order
    logs = lab("logs", lab_dir=lab_dir).stdout.splitlines()
    sources = {line.split("|", 1)[0].strip() for line in logs}
    assert {"postgres", "web1", "web2", "haproxy"} <= sources
    stamps = [timestamp(line.split("| ", 1)[1]) for line in logs if "| {" in line]
    # (a line a process was writing when it was killed has no end: it is not JSON)
    known = [t for t in stamps if t is not None]
    assert len(known) > 100 and known == sorted(known)
    only = lab("logs", "haproxy", lab_dir=lab_dir).stdout.splitlines()
    assert only and all(line.startswith("haproxy") for line in only)

    pids = [*pids, *(int(r["pid"]) for r in status(lab_dir).values()), supervisord]
    down = lab("down", lab_dir=lab_dir)
    assert "none is left" in down.stdout
    assert pids_alive(pids) == []
    assert lab("status", lab_dir=lab_dir, check=False).returncode != 0


def test_stage_4_fails_over_when_the_primary_dies(lab_dir: Path) -> None:
    """Patroni + etcd with 3 PostgreSQL nodes: the primary is killed (Patroni and its
    PostgreSQL), a replica takes over, writes through the load balancer resume."""
    lab("down", lab_dir=lab_dir, check=False)  # whatever the test before left
    started = lab("up", "--stage", "4", lab_dir=lab_dir)
    base = re.search(r"^Picscale\s+(http://\S+)$", started.stdout, re.MULTILINE)
    assert base is not None
    rows = status(lab_dir)
    primaries = [n for n, r in rows.items() if r.get("figure") == "primary"]
    replicas = [n for n, r in rows.items() if r.get("figure", "").startswith("replica")]
    assert len(primaries) == 1 and len(replicas) == 2, rows
    client = httpx.Client(base_url=base.group(1), timeout=30)

    def sign_up() -> int:
        name = f"fo_{uuid.uuid4().hex[:8]}"
        try:
            return client.post(
                "/api/v1/users", json={"username": name, "password": "correct horse battery"}
            ).status_code
        except httpx.HTTPError:
            return 0

    assert sign_up() == 201
    old = primaries[0]
    postmaster = int((lab_dir / old / "data" / "postmaster.pid").read_text().split()[0])
    lab("kill", old, lab_dir=lab_dir)
    assert pids_alive([postmaster]) == []  # the whole node is gone, not just Patroni

    def new_primary() -> str | None:
        found = [n for n, r in status(lab_dir).items() if r.get("figure") == "primary"]
        return found[0] if found and found[0] != old else None

    wait_until(new_primary, timeout=60, interval=0.5, what="a replica to take over")
    wait_until(lambda: sign_up() == 201, timeout=60, interval=0.5, what="writes to resume")
    pids = [int(r["pid"]) for r in status(lab_dir).values() if r["pid"] != "-"]
    postmasters = [
        int((lab_dir / n / "data" / "postmaster.pid").read_text().split()[0])
        for n in status(lab_dir)
        if n.startswith("patroni") and n != old
    ]
    assert "none is left" in lab("down", lab_dir=lab_dir).stdout
    assert pids_alive([*pids, *postmasters]) == []
