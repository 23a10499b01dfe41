"""`picscale lab` at its full stage (9) under supervisord: every engine up and healthy (two
shard clusters, the map in etcd), a photo through every tier, scaling under load, each
failure drill with its expectations met (a primary kill on either cluster), a shard move
and a celebrity under load, one time-ordered log stream, and `down` with nothing left."""

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

from picscale.lab.drills import DRILLS, PRIMARY_KILLS, SCENARIOS, ZERO_FAILURES
from picscale.procs import alive
from tests.support.images import image_bytes
from tests.support.waiting import wait_until

PASSWORD = "correct horse battery"
STAGE = 9
COMPONENTS = {
    "etcd", "patroni1", "patroni2", "patroni3", "c2-patroni1", "c2-patroni2", "redis1",
    "redis2", "sentinel1", "sentinel2", "sentinel3", "rabbitmq", "web1", "web2", "worker1",
    "worker2", "haproxy", "varnish", "node_exporter", "pg_exporter", "redis_exporter",
    "varnish_exporter", "prometheus",
}  # fmt: skip
SHARD_MAP = re.compile(
    r"shard map v(\d+): c1 \d+ shards \(([-\d, ]+)\), c2 \d+ shards \(([-\d, ]+)\)"
)


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
        for node in ("patroni1", "patroni2", "patroni3", "c2-patroni1", "c2-patroni2"):
            pidfile = self.root / node / "data" / "postmaster.pid"
            if pidfile.exists():
                self.pids.add(int(pidfile.read_text().split()[0]))
        return rows


@pytest.fixture(scope="module")
def full() -> Iterator[Lab]:
    # under /tmp itself: the postgres user must be able to reach its data directory
    root = Path(tempfile.mkdtemp(prefix="picscale-lab-"))
    try:
        started = lab("up", "--stage", str(STAGE), lab_dir=root)
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
    assert set(rows) == COMPONENTS
    assert all(r["health"] == "healthy" for r in rows.values()), rows
    figures = {name: r.get("figure", "") for name, r in rows.items()}
    # every engine but the exporters has a figure to show
    assert {name for name, figure in figures.items() if not figure} == {
        "node_exporter", "pg_exporter", "redis_exporter", "varnish_exporter",
    }  # fmt: skip
    for prefix, replicas in (("patroni", 2), ("c2-patroni", 1)):
        roles = sorted(f.split(",")[0] for n, f in figures.items() if n.startswith(prefix))
        cluster = "c2" if prefix.startswith("c2") else "c1"
        assert roles == [f"primary of {cluster}", *["replica"] * replicas], figures
    # the shard map lives in etcd: half the logical shards on each cluster; each cluster's
    # primary shows its load
    assert figures["etcd"] == "shard map v1: c1 4096 shards (0-4095), c2 4096 shards (4096-8191)"
    primaries = [f for f in figures.values() if f.startswith("primary of")]
    assert all(re.search(r"[\d.?]+ commits/s, \d+ rows$", f) for f in primaries), primaries
    assert {figures["redis1"].split(",")[0], figures["redis2"].split(",")[0]} == {
        "primary",
        "replica",
    }
    assert len({figures[f"sentinel{n}"] for n in (1, 2, 3)}) == 1  # they agree
    assert figures["rabbitmq"].startswith("queue depth")
    assert figures["haproxy"] == "2 web servers up"
    for name in ("Redis", "RabbitMQ", "Prometheus", "Media edge", "Patroni", "Patroni c2"):
        assert name in full.urls
    assert full.urls["Shard map"].startswith("etcd://127.0.0.1:")

    other = lab("up", "--stage", "3", lab_dir=full.root, check=False)
    assert other.returncode != 0 and "lab down" in other.stderr
    supervisord = (full.root / "supervisord.pid").read_text()
    again = lab("up", "--stage", str(STAGE), lab_dir=full.root)
    assert again.stderr.count("already up") == len(COMPONENTS)
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


@pytest.mark.parametrize("name", [name for name in DRILLS if name not in SCENARIOS])
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
    if name in PRIMARY_KILLS:
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


def run_drill(full: Lab, name: str, *times: str) -> str:
    """The drill's report, once it passed (every expectation met)."""
    result = subprocess.run(
        [sys.executable, "-m", "picscale", "drill", name, "--dir", str(full.root), *times],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    report = result.stdout
    assert result.returncode == 0, report + result.stderr[-3000:]
    assert "MISSED" not in report and "  failed, as clients saw   0\n" in report, report
    assert re.search(r"acknowledged writes lost 0 of [1-9]", report), report
    assert re.search(r"jobs lost\s+0 of [1-9]", report), report  # jobs were made, none lost
    return report


def test_shard_move_drill_moves_shards_there_and_back_under_load(full: Lab) -> None:
    """The shards of the most read account go to the other cluster and back while it
    writes without pause: no request fails, writes pause well under 2 s, nothing is lost."""
    before = SHARD_MAP.fullmatch(full.remember()["etcd"]["figure"])
    assert before is not None
    report = run_drill(
        full, "shard-move", "--users", "5", "--before", "3", "--down-for", "4", "--after", "3"
    )
    title = re.search(r"\(shards (\d+)-(\d+) of \S+: (c\d) -> (c\d) -> \3\)", report)
    assert title is not None, report
    first, last, home, other = title.groups()
    assert f"moved shards {first}-{last} from {home} to {other}: " in report
    assert f"moved shards {first}-{last} from {other} to {home}: " in report
    paused = re.search(r"writes paused <= 2 s: yes \(max ([\d.]+) s\)", report)
    assert paused is not None and float(paused.group(1)) <= 2, report
    # two new versions of the map, the shards back where they were
    after = SHARD_MAP.fullmatch(full.remember()["etcd"]["figure"])
    assert after is not None
    assert int(after.group(1)) == int(before.group(1)) + 2
    assert after.groups()[1:] == before.groups()[1:]


def test_celebrity_drill_keeps_the_hot_counter_exact(full: Lab) -> None:
    """One account gets most reads and new followers as the users grow: no request fails,
    its follower count is exact once the jobs are done, its primary's load is shown."""
    report = run_drill(
        full, "celebrity", "--users", "8", "--before", "5", "--down-for", "10", "--after", "5"
    )
    exact = re.search(r"met   follower count exact: counter (\d+) = mirror (\d+)", report)
    assert exact is not None and exact.group(1) == exact.group(2) != "0", report
    assert re.search(rf"\(edges {exact.group(1)}, the profile shows {exact.group(1)}\)", report)
    reads = re.search(r"reads of the celebrity\s+(\d+) of (\d+) API reads", report)
    assert reads is not None and int(reads.group(1)) > int(reads.group(2)) / 2, report
    assert "primary commits/s  primary CPU" in report
    assert re.search(r"first third -> last third: celebrity reads/s [\d.]+ -> [\d.]+", report)


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
