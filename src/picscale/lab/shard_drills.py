"""The drills of stage 9: nothing breaks, the data moves or one account gets hot, under
the load of ``picscale load``.

- ``shard-move``: the range of logical shards that holds the most popular seeded account
  (most reads go to it) moves to the other cluster and back, while a prober, signed in as
  that account, writes to it without pause. Expected: 0 failed requests, writes paused at
  most 2 s (the moves' fence to flip, and the longest write the prober saw during the
  moves), 0 acknowledged writes lost, 0 jobs lost.
- ``celebrity``: one account gets most reads (profile, gallery, photos) and follows from
  many new accounts while Locust adds users. Expected: 0 failed requests, the follower
  count exact once the jobs are done (the counter, the mirror of the edges on the
  celebrity's shard, the edges on the followers' shards and the profile agree); reported:
  the celebrity's primary (commits/s, CPU) beside the requests/s, as the reads grow.
"""

from __future__ import annotations

import asyncio
import csv
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from picscale.ids import shard_of
from picscale.lab import lab as labs
from picscale.lab.drills import Drill, cluster
from picscale.lab.engine import LabError
from picscale.lab.engines.etcd import shard_map
from picscale.lab.engines.patroni import Patroni, shard_clusters
from picscale.lab.engines.postgres import query
from picscale.lab.layout import Layout
from picscale.load.runner import (
    IMAGE_FILE,
    SEED_FILE,
    LoadOptions,
    LoadSummary,
    WriteCheck,
    start_load,
    verify_writes,
)
from picscale.procs import CLOCK_TICKS

if TYPE_CHECKING:
    from picscale.resharding.mover import MoveReport
    from picscale.tiers.db.shard_map import ShardMap

MAX_WRITE_PAUSE_SECONDS = 2.0  # the bound on a move's write pause
MOVE_BLOCK = 512  # logical shards moved: the aligned block around the prober's shard
PROBE_PAUSE_SECONDS = 0.05  # between the prober's rounds
PROBE_UPLOAD_EVERY = 10  # rounds: an upload (a photo and its render job on the shard)
SAMPLE_SECONDS = 3.0  # the celebrity drill's samples of the load and of the primary
SETTLE_SECONDS = 60.0
MOVES_CEILING_SECONDS = 600.0  # for the jobs to drain and the follower count to converge
REQUEST_TIMEOUT_SECONDS = 30.0
LOCUSTFILES = Path(__file__).with_name("locustfiles")
CELEBRITY = "{celebrity"  # in the names of the celebrity drill's requests about it


@dataclass
class ScenarioReport:
    name: str
    title: str  # what ran, on which shards and clusters
    summary: LoadSummary
    requests: int  # Locust's and the drill's own (the prober's)
    failed: int
    errors: dict[str, int]
    details: list[str]
    writes_checked: int
    writes_lost: int
    jobs_checked: int
    jobs_lost: int
    lost: list[dict[str, Any]] = field(default_factory=list)
    expectations: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(met for _, met in self.expectations)

    def format(self) -> str:
        lines = [
            f"drill {self.name} ({self.title})",
            f"  requests                 {self.requests}",
            f"  failed, as clients saw   {self.failed}",
        ]
        lines += [
            f"    {n:>6}  {kind}" for kind, n in sorted(self.errors.items(), key=lambda e: -e[1])
        ]
        lines += [f"  {line}" for line in self.details]
        lines += [
            f"  acknowledged writes lost {self.writes_lost} of {self.writes_checked}",
            f"  jobs lost                {self.jobs_lost} of {self.jobs_checked}",
        ]
        lines += [f"    lost: {json.dumps(item, default=str)}" for item in self.lost[:10]]
        lines.append("expectations:")
        lines += [f"  {'met ' if met else 'MISSED'}  {text}" for text, met in self.expectations]
        lines.append(f"load report: {self.summary.html}")
        return "\n".join(lines)


class Scenario(Protocol):
    def __call__(
        self,
        lab: labs.Lab,
        drill: Drill,
        say: Callable[[str], None],
        *,
        users: int,
        before: float,
        during: float,
        after: float,
    ) -> ScenarioReport: ...


# -- what both share --------------------------------------------------------------------


def _out_dir(layout: Layout, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return layout.root / "drills" / f"{name}-{stamp}"


def _load_on(run_running: Callable[[], bool], seconds: float, out_dir: Path) -> None:
    """``seconds`` of load; an error if Locust ends before."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not run_running():
            raise LabError(f"the load ended early: see {out_dir}")
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))  # the load runs on


def _profile(front: str, username: str) -> dict[str, Any]:
    response = httpx.get(f"{front}/api/v1/users/{username}", timeout=REQUEST_TIMEOUT_SECONDS)
    if response.status_code != 200:
        raise LabError(f"the profile of {username} answered {response.status_code}")
    body: dict[str, Any] = response.json()
    return body


def _cluster_of(layout: Layout, user_id: int) -> Patroni:
    found = shard_map(layout)
    if found is None:
        raise LabError("no shard map in etcd: have the web servers started? (`lab status`)")
    return cluster(layout, found.cluster_of(shard_of(user_id)))


def _leader_port(layout: Layout, patroni: Patroni) -> int:
    port = patroni.leader_port(layout)
    if port is None:
        raise LabError(f"no primary in {patroni.cluster} now: wait for Patroni (`lab status`)")
    return port


def _number(port: int, sql: str) -> int | None:
    rows = query(port, sql)
    return int(rows[0]) if rows and rows[0].lstrip("-").isdigit() else None


def _merge(check: WriteCheck, other: WriteCheck) -> WriteCheck:
    return WriteCheck(
        check.checked + other.checked,
        [*check.lost, *other.lost],
        check.jobs_checked + other.jobs_checked,
        [*check.jobs_lost, *other.jobs_lost],
    )


# -- shard-move ---------------------------------------------------------------------------


@dataclass
class Move:
    first: int
    last: int
    source: str
    target: str
    started: float  # unix time
    ended: float = 0.0
    report: MoveReport | None = None
    error: str | None = None

    @property
    def shards(self) -> str:
        return f"{self.first}-{self.last}"

    @property
    def pause(self) -> float | None:
        """Fence to flip, as the move measured it."""
        return self.report.write_pause_seconds if self.report is not None else None


def move_shards(
    layout: Layout, first: int, last: int, source: str, target: str, say: Callable[[str], None]
) -> Move:
    """Move shards ``first..last`` to ``target`` (``picscale shards move``'s steps); a move
    that fails is finished (past its flip) or rolled back, so the next one can start."""
    from picscale.resharding.mover import MoveError, ShardMover
    from picscale.settings import load_settings
    from picscale.tiers.db.shards import open_sharding

    move = Move(first, last, source, target, time.time())

    def progress(line: str) -> None:
        say(f"    {line}")

    async def run() -> None:
        settings = load_settings(layout.app_env())  # the clusters as the web servers see them
        async with open_sharding(settings) as (clusters, home, store):
            mover = ShardMover(clusters, home, store, progress=progress)
            try:
                move.report = await mover.move(first, last, target)
            except MoveError as exc:
                move.error = str(exc).splitlines()[0]
                say(f"  the move failed: {move.error}")
                if await mover.current() is None:
                    return
                try:
                    await mover.abort()
                except MoveError:  # past its flip: only its cleanup is left to do
                    await mover.resume()

    say(f"  moving shards {first}-{last} from {source} to {target}…")
    asyncio.run(run())
    move.ended = time.time()
    return move


@dataclass
class Attempt:
    kind: str  # rename | upload | read
    started: float  # unix time
    ended: float
    error: str | None  # None: it succeeded


class Prober(threading.Thread):
    """Signed in as one account, writes without pause to its shard (a new display name,
    every few rounds an upload) and reads its profile; every attempt is timed, and the
    uploads go to a writes log ``verify_writes`` reads back."""

    def __init__(self, front: str, username: str, password: str, out_dir: Path) -> None:
        super().__init__(name="shard-move-prober", daemon=True)
        self.username = username
        self.client = httpx.Client(base_url=front, timeout=REQUEST_TIMEOUT_SECONDS)
        body = {"username": username, "password": password}
        response = self.client.post("/api/v1/sessions", json=body)
        if response.status_code != 201:
            raise LabError(f"the prober could not log in as {username}: {response.status_code}")
        self.client.cookies.clear()
        self.client.headers["Authorization"] = f"Bearer {response.json()['token']}"
        self.user_id = int(_profile(front, username)["id"])
        self.image = (out_dir / IMAGE_FILE).read_bytes()
        self.writes = out_dir / "probe-writes.jsonl"
        self.attempts: list[Attempt] = []
        self.renamed = 0  # acknowledged renames
        self.last_name: str | None = None  # the last acknowledged
        self.names_sent: list[str] = []  # every name sent, in order
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=REQUEST_TIMEOUT_SECONDS + 5)
        self.client.close()

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            n += 1
            self._rename(f"probe {n}")
            if n % PROBE_UPLOAD_EVERY == 1:
                self._upload()
            self._attempt("read", "GET", f"/api/v1/users/{self.username}", 200)
            self._halt.wait(PROBE_PAUSE_SECONDS)

    def _attempt(
        self, kind: str, method: str, path: str, expect: int, **kwargs: Any
    ) -> httpx.Response | None:
        started = time.time()
        error: str | None = None
        response: httpx.Response | None = None
        try:
            response = self.client.request(method, path, **kwargs)
            if response.status_code != expect:
                error = str(response.status_code)
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        self.attempts.append(Attempt(kind, started, time.time(), error))
        return response if error is None else None

    def _rename(self, name: str) -> None:
        self.names_sent.append(name)
        body = {"display_name": name}
        if self._attempt("rename", "PATCH", "/api/v1/me", 200, json=body) is not None:
            self.renamed += 1
            self.last_name = name

    def _upload(self) -> None:
        files = {"file": ("probe.jpg", self.image, "image/jpeg")}
        response = self._attempt("upload", "POST", "/api/v1/photos", 201, files=files)
        entry: dict[str, Any] = {
            "t": time.time(),
            "kind": "upload",
            "ok": response is not None,
            "id": str(response.json()["id"]) if response is not None else None,
            "user": self.username,
        }
        with self.writes.open("a") as log:
            log.write(json.dumps(entry) + "\n")

    def longest_write(self, moves: list[Move]) -> tuple[float, int]:
        """The longest write that overlapped a move, and how many did."""
        during = [
            a
            for a in self.attempts
            if a.kind != "read"
            and any(a.ended >= m.started and a.started <= m.ended for m in moves)
        ]
        return max((a.ended - a.started for a in during), default=0.0), len(during)

    def failures(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.attempts:
            if a.error is not None:
                kind = f"prober {a.kind}: {a.error}"
                out[kind] = out.get(kind, 0) + 1
        return out

    def name_kept(self) -> bool:
        """The profile shows the last acknowledged name (or one sent after it: a rename
        whose answer was lost may have been applied), within a few seconds."""
        if self.last_name is None:
            return True
        allowed = set(self.names_sent[self.names_sent.index(self.last_name) :])
        deadline = time.monotonic() + 10
        while True:
            shown = _profile(str(self.client.base_url).rstrip("/"), self.username)
            if shown["display_name"] in allowed:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)  # a replica may lag, a cache entry may be on its way out


def range_to_move(found: ShardMap, shard: int, clusters: list[str]) -> tuple[int, int, str, str]:
    """The aligned block of MOVE_BLOCK logical shards around ``shard`` (within the range
    of the map that holds it), the cluster that holds it and the other one to move it to."""
    holding = next(r for r in found.ranges if r.first <= shard <= r.last)
    block = shard - shard % MOVE_BLOCK
    first, last = max(holding.first, block), min(holding.last, block + MOVE_BLOCK - 1)
    other = next((name for name in clusters if name != holding.cluster), None)
    if other is None:
        raise LabError("a shard move needs two clusters: stage 9")
    return first, last, holding.cluster, other


def shard_move(
    lab: labs.Lab,
    drill: Drill,
    say: Callable[[str], None],
    *,
    users: int,
    before: float,
    during: float,
    after: float,
) -> ScenarioReport:
    """Load for ``before`` s, move the shards there, ``during`` s on the other cluster,
    move them back, ``after`` s more of load; then read every acknowledged write back."""
    layout = lab.layout
    front = layout.url("haproxy")
    out_dir = _out_dir(layout, drill.name)
    say(f"drill {drill.name}: {drill.what}")
    # stopped by us: this is a ceiling, with room for the moves (a few seconds each when
    # the shards hold little) and their catching up
    duration = before + during + after + MOVES_CEILING_SECONDS
    options = LoadOptions(
        target=front, users=users, spawn_rate=users, duration=duration, out_dir=out_dir
    )
    run = start_load(options, say)
    prober: Prober | None = None
    moves: list[Move] = []
    try:
        seed = json.loads((out_dir / SEED_FILE).read_text())
        star = seed["celebrities"][0]
        prober = Prober(front, star, seed["password"], out_dir)
        shard = shard_of(prober.user_id)
        found = shard_map(layout)
        if found is None:
            raise LabError("no shard map in etcd: have the web servers started? (`lab status`)")
        names = [c.cluster for c in shard_clusters(layout)]
        first, last, home, other = range_to_move(found, shard, names)
        say(f"  {star} (the most read account) is on logical shard {shard}, in {home}")
        prober.start()
        _load_on(lambda: run.running, before, out_dir)
        moves.append(move_shards(layout, first, last, home, other, say))
        _load_on(lambda: run.running, during, out_dir)
        moves.append(move_shards(layout, first, last, other, home, say))
        _load_on(lambda: run.running, after, out_dir)
    finally:
        try:
            if prober is not None:
                prober.stop()
        finally:
            summary = run.stop()
    assert prober is not None
    say("  reading back every acknowledged write…")
    check = _merge(verify_writes(front, summary.writes), verify_writes(front, prober.writes))
    name_kept = prober.name_kept()
    lost = [*check.lost]
    if not name_kept:
        lost.append({"kind": "rename", "user": prober.username, "reason": "not shown"})
    probe_errors = prober.failures()
    longest, overlapping = prober.longest_write(moves)
    pauses = [m.pause for m in moves if m.pause is not None]
    worst = max([longest, *pauses])
    paused_ok = worst <= MAX_WRITE_PAUSE_SECONDS and len(pauses) == len(moves)
    details = [
        f"move there: {_move_line(moves[0])}" if moves else "move there: not run",
        f"move back:  {_move_line(moves[1])}" if len(moves) > 1 else "move back: not run",
        f"writes paused <= {MAX_WRITE_PAUSE_SECONDS:g} s: {'yes' if paused_ok else 'no'} "
        f"(max {worst:.2f} s)",
        "  fence to flip "
        + ", ".join(f"{p:.2f} s" for p in pauses)
        + f"; the longest of the prober's {overlapping} writes during the moves {longest:.2f} s",
        f"prober (as {prober.username}, on the moving shards): "
        f"{len(prober.attempts)} requests, {prober.renamed} renames acknowledged, "
        f"the last one shown: {'yes' if name_kept else 'no'}",
    ]
    failed = summary.total.failures + sum(probe_errors.values())
    report = ScenarioReport(
        name=drill.name,
        title=f"shards {first}-{last} of {star}: {home} -> {other} -> {home}",
        summary=summary,
        requests=summary.total.requests + len(prober.attempts),
        failed=failed,
        errors=summary.errors | probe_errors,
        details=details,
        writes_checked=check.checked + 1,  # the renames: the last acknowledged shows
        writes_lost=len(lost),
        jobs_checked=check.jobs_checked,
        jobs_lost=len(check.jobs_lost),
        lost=[*lost, *check.jobs_lost],
    )
    report.expectations = [
        ("failed requests = 0", failed == 0),
        ("both moves done", len(moves) == 2 and all(m.report is not None for m in moves)),
        (f"writes paused <= {MAX_WRITE_PAUSE_SECONDS:g} s (max {worst:.2f} s)", paused_ok),
        (f"acknowledged writes lost = 0 (of {report.writes_checked})", report.writes_lost == 0),
        (f"jobs lost = 0 (of {report.jobs_checked})", report.jobs_lost == 0),
    ]
    return report


def _move_line(move: Move) -> str:
    if move.report is None:
        return f"shards {move.shards} {move.source} -> {move.target} FAILED: {move.error}"
    return f"{move.report.describe()} ({move.ended - move.started:.1f} s in all)"


# -- celebrity ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic
    users: int
    requests: int  # every request so far
    star_reads: int  # reads of the celebrity so far
    primary_commits: int | None
    primary_cpu: float | None  # seconds
    replica_commits: int | None


def _requests_so_far(history: Path) -> tuple[int, int, int]:
    """Locust's users now, its requests so far, and those about the celebrity (its
    history file: a line per request name every second, cumulative counts)."""
    latest: dict[str, dict[str, str]] = {}
    try:
        with history.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("Name"):
                    latest[row["Name"]] = row
    except OSError:
        return 0, 0, 0
    total = latest.get("Aggregated", {})

    def count(row: dict[str, str], column: str) -> int:
        return int(float(row.get(column) or 0))

    star = sum(count(row, "Total Request Count") for n, row in latest.items() if CELEBRITY in n)
    return count(total, "User Count"), count(total, "Total Request Count"), star


def _commits(port: int) -> int | None:
    return _number(
        port, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )


def _stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _postgres_cpu(postmaster: int | None) -> float | None:
    """CPU seconds of a PostgreSQL server: the postmaster, its children now (each
    backend makes a session of its own: they are found by their parent) and those that
    have ended (the postmaster's reaped children)."""
    own = _stat(postmaster) if postmaster is not None else None
    if own is None:
        return None
    ticks = sum(int(own[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry.name)) and int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


class Sampler(threading.Thread):
    """Every few seconds: Locust's users and requests, and the cluster's load."""

    def __init__(self, layout: Layout, patroni: Patroni, history: Path) -> None:
        super().__init__(name="celebrity-sampler", daemon=True)
        self.layout = layout
        self.patroni = patroni
        self.history = history
        self.samples: list[Sample] = []
        self.primary = ""
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def run(self) -> None:
        while True:
            self._sample()
            if self._halt.wait(SAMPLE_SECONDS):
                return

    def _sample(self) -> None:
        layout, patroni = self.layout, self.patroni
        leader = patroni.leader(layout)
        if leader is None:
            return
        self.primary = patroni.node(leader)
        replicas = [_commits(layout.ports[patroni.pg(n)]) for n in patroni.numbers() if n != leader]
        users, requests, star_reads = _requests_so_far(self.history)
        self.samples.append(
            Sample(
                at=time.monotonic(),
                users=users,
                requests=requests,
                star_reads=star_reads,
                primary_commits=_commits(layout.ports[patroni.pg(leader)]),
                primary_cpu=_postgres_cpu(patroni.postmaster(layout, leader)),
                replica_commits=None if None in replicas else sum(r or 0 for r in replicas),
            )
        )

    def rates(self) -> list[tuple[int, float, float, float | None, float | None, float | None]]:
        """Per interval: users, requests/s, the celebrity's reads/s, the primary's
        commits/s and CPU (of one core), the replicas' commits/s."""

        def rate(a: float | None, b: float | None, seconds: float) -> float | None:
            return None if a is None or b is None else (b - a) / seconds

        out = []
        for a, b in zip(self.samples, self.samples[1:], strict=False):
            if b.users == 0:  # Locust has not started its users yet
                continue
            seconds = max(b.at - a.at, 1e-3)
            out.append(
                (
                    b.users,
                    (b.requests - a.requests) / seconds,
                    (b.star_reads - a.star_reads) / seconds,
                    rate(a.primary_commits, b.primary_commits, seconds),
                    rate(a.primary_cpu, b.primary_cpu, seconds),
                    rate(a.replica_commits, b.replica_commits, seconds),
                )
            )
        return out

    def table(self) -> list[str]:
        def cell(value: float | None, text: str, width: int) -> str:
            return ("?" if value is None else text.format(value)).rjust(width)

        lines = [
            "users  requests/s  celebrity reads/s  primary commits/s  primary CPU  "
            "replica commits/s"
        ]
        for users, requests, star, commits, cpu, replica in self.rates():
            lines.append(
                f"{users:>5}  {requests:>10.1f}  {star:>17.1f}  {cell(commits, '{:.1f}', 17)}  "
                f"{cell(cpu, '{:.1%}', 11)}  {cell(replica, '{:.1f}', 17)}"
            )
        return lines

    def trend(self) -> str:
        """The first third of the run against the last: how the celebrity's reads grew,
        and its primary's load with them."""
        rates = self.rates()
        third = len(rates) // 3
        if third == 0:
            return "too short a run to compare its start with its end"
        first, last = rates[:third], rates[-third:]

        def mean(rows: list[tuple[Any, ...]], i: int) -> float | None:
            values = [r[i] for r in rows if r[i] is not None]
            return sum(values) / len(values) if values else None

        reads = (mean(first, 2), mean(last, 2))
        commits = (mean(first, 3), mean(last, 3))
        cpu = (mean(first, 4), mean(last, 4))

        def grew(pair: tuple[float | None, float | None], text: str) -> str:
            a, b = pair
            if a is None or b is None:
                return "?"
            return f"{text.format(a)} -> {text.format(b)}"

        return (
            f"first third -> last third: celebrity reads/s {grew(reads, '{:.1f}')}, "
            f"primary commits/s {grew(commits, '{:.1f}')}, primary CPU {grew(cpu, '{:.1%}')}"
        )


@dataclass(frozen=True)
class FollowerCounts:
    counter: int | None  # what the profile is built from (base count and counter slots)
    mirror: int | None  # the followee's side of the edges, on its shard
    edges: int | None  # the truth: the edges on the followers' shards
    profile: int | None  # what the API shows
    mirror_jobs: dict[str, int]  # follow_mirror jobs for the account, by status

    @property
    def exact(self) -> bool:
        values = {self.counter, self.mirror, self.edges, self.profile}
        return None not in values and len(values) == 1

    @property
    def settled(self) -> bool:
        return self.exact and set(self.mirror_jobs) <= {"done"}


def follower_counts(layout: Layout, front: str, username: str, user_id: int) -> FollowerCounts:
    home = _leader_port(layout, _cluster_of(layout, user_id))
    counter = _number(
        home,
        f"SELECT u.follower_count + coalesce((SELECT sum(followers) FROM user_counters "
        f"WHERE user_id = {user_id}), 0) FROM users u WHERE u.id = {user_id}",
    )
    mirror = _number(home, f"SELECT count(*) FROM followers WHERE followee_id = {user_id}")
    edges: int | None = 0
    jobs: dict[str, int] = {}
    for patroni in shard_clusters(layout):
        port = _leader_port(layout, patroni)
        found = _number(port, f"SELECT count(*) FROM follows WHERE followee_id = {user_id}")
        edges = None if edges is None or found is None else edges + found
        for line in query(
            port,
            "SELECT status, count(*) FROM jobs WHERE kind = 'follow_mirror' "
            f"AND payload->>'followee' = '{user_id}' GROUP BY status",
        ):
            status, n = line.split("|")
            jobs[status] = jobs.get(status, 0) + int(n)
    try:
        profile: int | None = int(_profile(front, username)["follower_count"])
    except (LabError, httpx.HTTPError):
        profile = None
    return FollowerCounts(counter, mirror, edges, profile, jobs)


def celebrity(
    lab: labs.Lab,
    drill: Drill,
    say: Callable[[str], None],
    *,
    users: int,
    before: float,
    during: float,
    after: float,
) -> ScenarioReport:
    """Locust adds users for ``before + during`` s (the reads grow), then holds them
    ``after`` s; then the jobs drain and the follower count is checked."""
    layout = lab.layout
    front = layout.url("haproxy")
    out_dir = _out_dir(layout, drill.name)
    say(f"drill {drill.name}: {drill.what}")
    ramp = max(before + during, 1.0)
    options = LoadOptions(
        target=front,
        users=users,
        spawn_rate=users / ramp,
        duration=before + during + after + 60,  # stopped by us: a ceiling
        out_dir=out_dir,
        celebrities=1,
        locustfile=LOCUSTFILES / "celebrity.py",
    )
    run = start_load(options, say)
    sampler: Sampler | None = None
    try:
        star = json.loads((out_dir / SEED_FILE).read_text())["celebrities"][0]
        star_id = int(_profile(front, star)["id"])
        patroni = _cluster_of(layout, star_id)
        say(f"  the celebrity {star} is on logical shard {shard_of(star_id)}, in {patroni.cluster}")
        sampler = Sampler(layout, patroni, Path(f"{out_dir / 'locust'}_stats_history.csv"))
        sampler.start()
        _load_on(lambda: run.running, before + during + after, out_dir)
    finally:
        try:
            if sampler is not None:
                sampler.stop()
        finally:
            summary = run.stop()
    assert sampler is not None
    say("  waiting for the jobs to drain and the follower count to settle…")
    deadline = time.monotonic() + SETTLE_SECONDS
    counts = follower_counts(layout, front, star, star_id)
    while not counts.settled and time.monotonic() < deadline:
        time.sleep(0.5)  # the follow_mirror jobs are running
        counts = follower_counts(layout, front, star, star_id)
    say("  reading back every acknowledged write…")
    check = verify_writes(front, summary.writes)
    mirror_jobs = sum(counts.mirror_jobs.values())
    mirror_lost = mirror_jobs - counts.mirror_jobs.get("done", 0)
    followed = {
        str(e["user"])
        for e in _acknowledged(summary.writes)
        if e["kind"] == "follow" and e["id"] == star
    }
    reads = {r.name: r.requests for r in summary.rows if r.name.startswith("GET /api")}
    of_star = sum(n for name, n in reads.items() if CELEBRITY in name)
    exact_text = (
        f"follower count exact: counter {counts.counter} = mirror {counts.mirror} "
        f"(edges {counts.edges}, the profile shows {counts.profile})"
    )
    details = [
        f"reads of the celebrity     {of_star} of {sum(reads.values())} API reads",
        f"new followers              {len(followed)} acknowledged, "
        f"{mirror_jobs} follow_mirror jobs ({_statuses(counts.mirror_jobs)})",
        exact_text,
        f"the celebrity's cluster {patroni.cluster} while the reads grew (primary "
        f"{sampler.primary}; every {SAMPLE_SECONDS:g} s):",
        *(f"  {line}" for line in sampler.table()),
        sampler.trend(),
    ]
    failed = summary.total.failures
    report = ScenarioReport(
        name=drill.name,
        title=f"{star}, logical shard {shard_of(star_id)} on {patroni.cluster}",
        summary=summary,
        requests=summary.total.requests,
        failed=failed,
        errors=dict(summary.errors),
        details=details,
        writes_checked=check.checked,
        writes_lost=len(check.lost),
        jobs_checked=check.jobs_checked + mirror_jobs,
        jobs_lost=len(check.jobs_lost) + mirror_lost,
        lost=[*check.lost, *check.jobs_lost],
    )
    report.expectations = [
        ("failed requests = 0", failed == 0),
        (exact_text, counts.exact and (counts.edges or 0) >= len(followed)),
        (f"acknowledged writes lost = 0 (of {report.writes_checked})", report.writes_lost == 0),
        (f"jobs lost = 0 (of {report.jobs_checked})", report.jobs_lost == 0),
    ]
    return report


def _acknowledged(writes: Path) -> list[dict[str, Any]]:
    from picscale.load.runner import read_writes

    return [e for e in read_writes(writes) if e.get("ok")]


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"


SCENARIOS: dict[str, Scenario] = {"shard-move": shard_move, "celebrity": celebrity}
