"""`picscale lab` at its full stage (8) under supervisord: every engine up and healthy, a
photo through every tier, scaling under load, each failure drill with its expectations
met, one time-ordered log stream, and `down` with nothing left."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from picscale.lab.drills import DRILLS, ZERO_FAILURES
from picscale.procs import alive
from tests.support.images import image_bytes
from tests.support.waiting import wait_until

PASSWORD = "correct horse battery"
STAGE_8 = {
    "etcd", "patroni1", "patroni2", "patroni3", "redis1", "redis2", "sentinel1", "sentinel2",
    "sentinel3", "rabbitmq", "web1", "web2", "worker1", "worker2", "haproxy", "varnish",
    "node_exporter", "pg_exporter", "redis_exporter", "varnish_exporter", "prometheus",
}  # fmt: skip


def lab(*args: str, lab_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "picscale", "lab", *args, "--dir", str(lab_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def pids_alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if alive(pid)]


def timestamp(line: str) -> str | None:
    try:
        value = json.loads(line).get("timestamp")
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def status(lab_dir: Path) -> dict[str, dict[str, str]]:
    lines = lab("status", lab_dir=lab_dir).stdout.splitlines()
    header = lines[0].split()
    rows = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(header, cells, strict=False))
    return rows


class Lab:
    def __init__(self, root: Path, urls: dict[str, str]) -> None:
        self.root = root
        self.urls = urls
        self.pids: set[int] = set()  # every pid the lab ran, for the last test

    @property
    def base(self) -> str:
        return self.urls["Picscale"]

    def remember(self) -> dict[str, dict[str, str]]:
        rows = status(self.root)
        self.pids |= {int(r["pid"]) for r in rows.values() if r["pid"].isdigit()}
        for node in ("patroni1", "patroni2", "patroni3"):
            pidfile = self.root / node / "data" / "postmaster.pid"
            if pidfile.exists():
                self.pids.add(int(pidfile.read_text().split()[0]))
        return rows


@pytest.fixture(scope="module")
def full() -> Iterator[Lab]:
    # under /tmp itself: the postgres user must be able to reach its data directory
    root = Path(tempfile.mkdtemp(prefix="picscale-lab-"))
    try:
        started = lab("up", "--stage", "8", lab_dir=root)
        urls = dict(
            re.match(r"^(.+?)\s{2,}(\S+)", line).groups()  # type: ignore[union-attr]
            for line in started.stdout.splitlines()
        )
        yield Lab(root, urls)
    finally:
        if (root / "lab.json").exists():
            lab("down", lab_dir=root, check=False)
        shutil.rmtree(root, ignore_errors=True)


def member(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=30)
    name = f"lab_{uuid.uuid4().hex[:8]}"
    credentials = {"username": name, "password": PASSWORD}
    assert client.post("/api/v1/users", json=credentials).status_code == 201
    token = client.post("/api/v1/sessions", json=credentials).json()["token"]
    client.headers["Authorization"] = f"Bearer {token}"
    client.cookies.clear()
    return client


def test_the_full_stage_is_up_and_a_second_up_resumes_it(full: Lab) -> None:
    rows = full.remember()
    assert set(rows) == STAGE_8
    assert all(r["health"] == "healthy" for r in rows.values()), rows
    figures = {name: r.get("figure", "") for name, r in rows.items()}
    # every engine but etcd and the exporters has a figure to show
    assert {name for name, figure in figures.items() if not figure} == {
        "etcd", "node_exporter", "pg_exporter", "redis_exporter", "varnish_exporter",
    }  # fmt: skip
    assert sorted(f.split(",")[0] for n, f in figures.items() if n.startswith("patroni")) == [
        "primary",
        "replica",
        "replica",
    ]
    assert {figures["redis1"].split(",")[0], figures["redis2"].split(",")[0]} == {
        "primary",
        "replica",
    }
    assert len({figures[f"sentinel{n}"] for n in (1, 2, 3)}) == 1  # they agree
    assert figures["rabbitmq"].startswith("queue depth")
    assert figures["haproxy"] == "2 web servers up"
    for name in ("Redis", "RabbitMQ", "Prometheus", "Media edge", "Patroni"):
        assert name in full.urls

    other = lab("up", "--stage", "3", lab_dir=full.root, check=False)
    assert other.returncode != 0 and "lab down" in other.stderr
    supervisord = (full.root / "supervisord.pid").read_text()
    again = lab("up", "--stage", "8", lab_dir=full.root)
    assert again.stderr.count("already up") == len(STAGE_8)
    assert (full.root / "supervisord.pid").read_text() == supervisord


def test_a_photo_goes_through_every_tier(full: Lab) -> None:
    client = member(full.base)
    photo = client.post(
        "/api/v1/photos", files={"file": ("p.jpg", image_bytes(800, 600), "image/jpeg")}
    ).json()

    def ready() -> dict[str, object] | None:
        body = client.get(f"/api/v1/photos/{photo['id']}").json()
        return body if body["status"] == "ready" else None

    # the first render ran on a separate worker, through RabbitMQ
    shown = wait_until(ready, timeout=60, interval=0.2, what="the photo to be rendered")
    thumb = shown["urls"]["thumb"]  # type: ignore[index]
    # media URLs point at the edge; Varnish keeps the thumbnail
    assert thumb.startswith(full.urls["Media edge"])
    first, second = httpx.get(thumb), httpx.get(thumb)
    assert first.status_code == second.status_code == 200
    assert second.headers["x-cache"].startswith("HIT"), second.headers

    # sessions live in Redis: log out on one web server, refused on every one
    assert client.delete("/api/v1/sessions").status_code == 204
    assert {client.get("/api/v1/me").status_code for _ in range(6)} == {401}

    # Prometheus scrapes every component, the app's own metrics among them
    prometheus = full.urls["Prometheus"]

    def every_target_up() -> bool:
        targets = httpx.get(prometheus + "/api/v1/targets").json()["data"]["activeTargets"]
        jobs = {t["labels"]["job"] for t in targets if t["health"] == "up"}
        return len(jobs) == 9 and all(t["health"] == "up" for t in targets)

    wait_until(every_target_up, timeout=60, interval=1, what="every scrape target up")
    for query in (
        'sum(picscale_http_requests_total{job="picscale_web"})',
        'sum(picscale_jobs_total{job="picscale_worker",outcome="done"})',
        "sum(haproxy_backend_http_responses_total)",
        "max(pg_up)",
        "max(redis_up)",
        "sum(rabbitmq_queues)",
        "max(varnish_up)",
        "count(node_cpu_seconds_total)",
    ):

        def answered(q: str = query) -> bool:
            result = httpx.get(prometheus + "/api/v1/query", params={"query": q}).json()
            values = result["data"]["result"]
            return bool(values) and float(values[0]["value"][1]) > 0

        wait_until(answered, timeout=30, interval=1, what=f"Prometheus to answer {query}")


def test_web_servers_and_workers_scale_under_load_without_a_restart(full: Lab) -> None:
    client = member(full.base)

    def under_load(action: Callable[[], None], after: int = 60) -> list[int]:
        """Status codes of GET /api/v1/me sent without pause while ``action`` runs."""
        codes: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=full.base, timeout=30) as reader:
                reader.headers["Authorization"] = client.headers["Authorization"]
                while not stop.is_set() and len(codes) < 5000:
                    try:
                        codes.append(reader.get("/api/v1/me").status_code)
                    except httpx.HTTPError:
                        codes.append(0)

        thread = threading.Thread(target=load)
        thread.start()
        try:
            wait_until(lambda: len(codes) >= 30, timeout=30, what="requests before")
            action()
            before = len(codes)
            wait_until(lambda: len(codes) >= before + after, timeout=60, what="requests after")
        finally:
            stop.set()
            thread.join()
        return codes

    haproxy_pid = full.remember()["haproxy"]["pid"]
    codes = under_load(lambda: lab("scale", "web=3", "workers=3", lab_dir=full.root) and None)
    assert codes.count(200) == len(codes), sorted(set(codes))
    rows = full.remember()
    assert rows["web3"]["health"] == rows["worker3"]["health"] == "healthy"
    assert "3 web servers up" in rows["haproxy"]["figure"]
    extra = [int(rows["web3"]["pid"]), int(rows["worker3"]["pid"])]
    codes = under_load(lambda: lab("scale", "web=2", "workers=2", lab_dir=full.root) and None)
    assert codes.count(200) == len(codes), sorted(set(codes))
    rows = full.remember()
    assert "web3" not in rows and "worker3" not in rows and pids_alive(extra) == []
    assert rows["haproxy"]["pid"] == haproxy_pid  # never restarted
    targets = json.loads((full.root / "prometheus-targets" / "web.json").read_text())
    assert len(targets[0]["targets"]) == 2  # Prometheus scrapes what runs


def test_the_web_tier_autoscales_with_its_load(full: Lab) -> None:
    """Busy web servers (CPU over the target) bring a third; idle, it is drained away."""
    client = member(full.base)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                client.get("/api/v1/feed")

    scaler = subprocess.Popen(
        [
            sys.executable, "-m", "picscale", "lab", "autoscale", "web=2:3", "--dir",
            str(full.root), "--for", "120", "--cooldown", "4", "--target-cpu", "0.2",
            "--target-ms", "1000",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(scaler.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: "  web3: in the pool\n" in lines, timeout=90, what="a third server")
        assert any("-> scaling to 3" in line for line in lines), lines
        stop.set()
        wait_until(lambda: "  web3: stopped\n" in lines, timeout=90, what="the third to go")
        assert any("-> scaling to 2" in line for line in lines), lines
    finally:
        stop.set()
        for t in threads:
            t.join()
        scaler.send_signal(signal.SIGINT)
        scaler.wait(timeout=60)
        reader.join()
    assert "web3" not in full.remember()


@pytest.mark.parametrize("name", list(DRILLS))
def test_drill(full: Lab, name: str) -> None:
    full.remember()
    result = subprocess.run(
        [
            sys.executable, "-m", "picscale", "drill", name, "--dir", str(full.root),
            "--users", "5", "--before", "3", "--down-for", "4", "--after", "3",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    report = result.stdout
    assert result.returncode == 0, report + result.stderr[-3000:]
    assert "MISSED" not in report and "acknowledged writes lost 0 of" in report
    assert re.search(r"jobs lost\s+0 of [1-9]", report), report  # jobs were made, none lost
    requests = int(re.search(r"requests\s+(\d+)", report).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"failed, as clients saw\s+(\d+)", report).group(1))  # type: ignore[union-attr]
    assert requests > 50
    if name in ZERO_FAILURES:
        assert failed == 0, report
    if name == "db-primary":
        gap = float(re.search(r"writes unavailable\s+([\d.]+) s", report).group(1))  # type: ignore[union-attr]
        assert gap <= 12, report
    # the drill ends once its victim is back: a database node following the new primary
    victim = re.search(r"victim (\S+)\)", report).group(1)  # type: ignore[union-attr]
    assert full.remember()[victim]["health"] == "healthy", report

    down: list[str] = []  # and the rest of the lab heals on its own

    def whole() -> bool:
        down[:] = [c for c, row in full.remember().items() if row["health"] != "healthy"]
        return not down

    with contextlib.suppress(AssertionError):
        wait_until(whole, timeout=60, what="every component to be healthy")
    assert not down, f"not healthy 60 s after the drill: {down}"


def test_one_log_stream_then_down_leaves_nothing(full: Lab) -> None:
    logs = lab("logs", lab_dir=full.root).stdout.splitlines()
    sources = {line.split("|", 1)[0].strip() for line in logs}
    assert {"patroni1", "web1", "web2", "worker1", "haproxy", "rabbitmq"} <= sources
    stamps = [timestamp(line.split("| ", 1)[1]) for line in logs if "| {" in line]
    # (a line a process was writing when it was killed has no end: it is not JSON)
    known = [t for t in stamps if t is not None]
    assert len(known) > 100 and known == sorted(known)
    only = lab("logs", "haproxy", lab_dir=full.root).stdout.splitlines()
    assert only and all(line.startswith("haproxy") for line in only)

    full.remember()
    full.pids.add(int((full.root / "supervisord.pid").read_text()))
    down = lab("down", lab_dir=full.root)
    assert "none is left" in down.stdout
    assert pids_alive(sorted(full.pids)) == []
    assert lab("status", lab_dir=full.root, check=False).returncode != 0
