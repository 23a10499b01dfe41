"""Sharding: how evenly a mixed journey spreads over 1, 2 and 4 clusters, and a shard
move under write load (rows copied per second, the write pause, acknowledged writes lost).

One PostgreSQL server (the test harness's, fsync off; wal_retrieve_retry_interval 100 ms
so that a move's subscription starts at once) holds a database per cluster; the CPUs are
shared, so throughput is not the point: the figures are per cluster, from PostgreSQL's
own statistics (``pg_stat_database``, ``pg_stat_user_tables``), read before the journey
and after ``picscale serve`` (1 web process, 1 job worker, Redis cache) has stopped.

1. Journey, per layout: ``--seeded`` accounts with 2 ready photos each are bulk-loaded
   (the accounts others look at), and the ``--users`` members of the journey but
   ``--signups`` of them (the members' password hash made once, as the service makes it:
   argon2 costs CPU that is not the point here). Members log in (or sign up, then log
   in) over HTTP, in random order, and each makes ``--actions`` requests, with
   ``--concurrency`` in flight at once: 30% home feed, 20% a profile, 20% a gallery, 10%
   a photo, 10% a follow (of a seeded account), 10% an upload.
   Per cluster: queries on sharded tables (index + sequential scans; not ``jobs``, whose
   claim polls visit every cluster), rows written to sharded tables, and commits per
   second (all of them: plumbing too). Spread: the largest gap of a cluster's share from
   1/N, as a share of 1/N (0.10 = within 10% of even); random placement of the members
   alone gives a gap of the order of sqrt((N-1)/members).
2. Moves, on 2 clusters: ``--move-rows`` rows (accounts and photos) on logical shards
   0-2047 (a quarter of the ids, on c1), writers uploading without pause (half of them
   with accounts on the moving shards), and ``--moves`` moves of 0-2047, c1 -> c2 and
   back, by ``ShardMover`` in this process. Per move: rows copied a second and the
   fence-to-flip pause (``MoveReport``), and the longest upload of a moving account in
   flight across the fence (client side). Then every acknowledged upload is read back
   over the API and looked up on both clusters: lost, duplicated, or on the wrong one.

    .venv/bin/python bench/shards.py [--users 150] [--actions 6] [--seeded 2000]
                                     [--moves 4] [--move-rows 20000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from _common import (
    InProcess,
    layout_url,
    log,
    machine_note,
    percentile,
    seed_accounts,
    start_picscale,
    tiny_jpeg,
)
from tests.support.pg import PostgresDatabase, PostgresServer, start_postgres
from tests.support.redis_server import start_redis

PASSWORD = "shards-bench-1"
MOVING = (0, 2047)  # on c1 in the even map of two clusters (c1 0-4095, c2 4096-8191)
WEIGHTS = {"feed": 30, "profile": 20, "gallery": 20, "photo": 10, "follow": 10, "upload": 10}


# -- statistics of one database -----------------------------------------------------------


@dataclass
class Stats:
    commits: int = 0
    queries: int = 0  # index + sequential scans on sharded tables but jobs
    written: int = 0  # rows inserted, updated, deleted in sharded tables
    other_queries: int = 0  # on global tables and jobs (plumbing)
    users: int = 0

    def minus(self, before: Stats) -> Stats:
        return Stats(
            self.commits - before.commits,
            self.queries - before.queries,
            self.written - before.written,
            self.other_queries - before.other_queries,
            self.users,
        )


def read_stats(db: PostgresDatabase) -> Stats:
    from picscale.data.schema import SHARDED

    stats = Stats()
    stats.commits = int(
        db.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    )
    rows = db.sql(
        "SELECT relname, coalesce(seq_scan, 0) + coalesce(idx_scan, 0), "
        "n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables"
    )
    for line in rows.splitlines():
        name, scans, written = line.split("|")
        if name in SHARDED and name != "jobs":
            stats.queries += int(scans)
        else:
            stats.other_queries += int(scans)
        if name in SHARDED:
            stats.written += int(written)
    stats.users = int(db.sql("SELECT count(*) FROM users"))
    return stats


def spread(values: list[float]) -> float:
    """The largest gap of a share from 1/N, over 1/N."""
    total = sum(values)
    if total <= 0:
        return 0.0
    even = 1 / len(values)
    return max(abs(v / total - even) for v in values) / even


# -- the journey --------------------------------------------------------------------------


@dataclass
class Outcomes:
    codes: Counter[tuple[str, int]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def add(self, action: str, status: int, seconds: float) -> None:
        self.codes[(action, status)] += 1
        self.latencies.setdefault(action, []).append(seconds)


async def sign_up(client: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """(id, bearer token) of a new member."""
    body = {"username": name, "password": PASSWORD}
    created = await client.post("/api/v1/users", json=body)
    created.raise_for_status()
    session = await client.post("/api/v1/sessions", json=body)
    session.raise_for_status()
    client.cookies.clear()  # a bearer token from here: a session cookie would want CSRF
    return created.json()["id"], session.json()["token"]


async def log_in(client: httpx.AsyncClient, name: str) -> str:
    body = {"username": name, "password": PASSWORD}
    session = await client.post("/api/v1/sessions", json=body)
    session.raise_for_status()
    client.cookies.clear()
    token: str = session.json()["token"]
    return token


async def member(
    base: str,
    name: str,
    signs_up: bool,
    actions: int,
    gate: asyncio.Semaphore,
    seeded: list[str],
    photos: list[int],
    out: Outcomes,
) -> None:
    rng = random.Random(name)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        async with gate:
            start = time.perf_counter()
            token = (await sign_up(client, name))[1] if signs_up else await log_in(client, name)
            out.add("sign up" if signs_up else "log in", 200, time.perf_counter() - start)
        client.headers["Authorization"] = f"Bearer {token}"
        for i in range(actions):
            action = rng.choices(kinds, weights)[0]
            other = rng.choice(seeded)
            async with gate:
                start = time.perf_counter()
                if action == "feed":
                    r = await client.get("/api/v1/feed", params={"limit": 20})
                elif action == "profile":
                    r = await client.get(f"/api/v1/users/{other}")
                elif action == "gallery":
                    r = await client.get(f"/api/v1/users/{other}/photos", params={"limit": 10})
                elif action == "photo":
                    r = await client.get(f"/api/v1/photos/{rng.choice(photos)}")
                elif action == "follow":
                    r = await client.put(f"/api/v1/users/{other}/follow")
                else:
                    r = await client.post(
                        "/api/v1/photos",
                        files={
                            "file": ("p.jpg", tiny_jpeg(rng.randrange(1 << 16) + i), "image/jpeg")
                        },
                    )
                out.add(action, r.status_code, time.perf_counter() - start)


async def seed(
    data_dir: Path, url: str, count: int, photos_each: int, prefix: str = "", **kw: Any
) -> Any:
    """Accounts bulk-loaded through the router of a process of our own (closed after)."""
    async with InProcess(data_dir / "seeder", database_url=url) as services:
        return await seed_accounts(
            services.shards.cluster_for,
            services.shards.home,
            count,
            photos_each=photos_each,
            prefix=prefix or f"s{uuid.uuid4().hex[:5]}_",
            **kw,
        )


async def seed_all(
    data_dir: Path, url: str, args: argparse.Namespace
) -> tuple[list[str], list[int], list[tuple[int, str]]]:
    """The accounts looked at (2 photos each), and the members who will log in (with a
    password hash made as the service makes it: one hash, many accounts)."""
    from argon2 import PasswordHasher

    accounts, photo_ids = await seed(data_dir, url, args.seeded, 2)
    members, _ = await seed(
        data_dir,
        url,
        args.users - args.signups,
        0,
        prefix=f"m{uuid.uuid4().hex[:5]}_",
        password_hash=PasswordHasher().hash(PASSWORD),
    )
    return [name for _, name in accounts], photo_ids, members


@dataclass
class LayoutResult:
    clusters: int
    stats: list[Stats]
    seconds: float
    outcomes: Outcomes
    members: list[int]  # journey members per cluster


def run_layout(
    server: PostgresServer, redis_url: str, root: Path, n: int, args: argparse.Namespace
) -> LayoutResult:
    dbs = [server.new_database() for _ in range(n)]
    url = layout_url([db.url for db in dbs])
    data_dir = root / f"layout{n}"
    base, process = start_picscale(data_dir, job_workers=1, database_url=url, cache_url=redis_url)
    try:
        seeded, photo_ids, logging_in = asyncio.run(seed_all(data_dir, url, args))
        time.sleep(1.5)  # the seeder's backends have gone: their statistics are in
        before = [read_stats(db) for db in dbs]
        outcomes = Outcomes()
        tag = uuid.uuid4().hex[:5]
        cast = [(name, False) for _, name in logging_in]
        cast += [(f"j{tag}_{i}", True) for i in range(args.signups)]
        random.shuffle(cast)
        log(f"{n} cluster(s): {args.users} members x {args.actions} requests…")

        async def journey() -> None:
            gate = asyncio.Semaphore(args.concurrency)
            await asyncio.gather(
                *(
                    member(base, name, new, args.actions, gate, seeded, photo_ids, outcomes)
                    for name, new in cast
                )
            )

        start = time.perf_counter()
        asyncio.run(journey())
        seconds = time.perf_counter() - start
        process.check_alive()
    finally:
        process.stop()  # its backends exit: every statistic is flushed
        show_errors(process, f"{n} cluster(s)")
    time.sleep(0.5)
    after = [read_stats(db) for db in dbs]
    prefixes = {name.rsplit("_", 1)[0] + "_" for name, _ in cast}
    where = " OR ".join(f"username LIKE '{p}%'" for p in sorted(prefixes))
    members = [int(db.sql(f"SELECT count(*) FROM users WHERE {where}")) for db in dbs]
    return LayoutResult(
        n, [a.minus(b) for a, b in zip(after, before, strict=True)], seconds, outcomes, members
    )


# -- moves under load ---------------------------------------------------------------------


@dataclass
class Write:
    in_range: bool
    start: float
    end: float
    status: int
    photo_id: int | None


async def writer(
    base: str, token: str, in_range: bool, stop: asyncio.Event, writes: list[Write]
) -> None:
    async with httpx.AsyncClient(
        base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        n = 0
        while not stop.is_set():
            n += 1
            start = time.monotonic()
            try:
                r = await client.post(
                    "/api/v1/photos", files={"file": ("p.jpg", tiny_jpeg(n), "image/jpeg")}
                )
                status = r.status_code
                photo = int(r.json()["id"]) if status == 201 else None
            except httpx.HTTPError:
                status, photo = 0, None
            writes.append(Write(in_range, start, time.monotonic(), status, photo))


@dataclass
class MoveResult:
    reports: list[Any]
    windows: list[tuple[float, float]]  # (fence raised, flip) per move, monotonic
    spans: list[tuple[float, float]]  # (start, end) per move
    writes: list[Write]
    api_missing: int
    lost: int
    duplicated: int
    misplaced: int
    left_on_source: int
    writers: tuple[int, int]
    failures: list[str]


async def moves_under_load(
    url: str, data_dir: Path, base: str, args: argparse.Namespace
) -> MoveResult:
    from sqlalchemy import text

    from picscale.ids import shard_of
    from picscale.resharding.mover import MoveError, ShardMover
    from picscale.settings import load_settings
    from picscale.tiers.db.shards import open_sharding

    # writers: members with accounts on the moving shards, and as many elsewhere
    inside: list[str] = []
    outside: list[str] = []
    tag = uuid.uuid4().hex[:5]
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for i in range(64):
            if (
                len(inside) >= args.writers // 2
                and len(outside) >= args.writers - args.writers // 2
            ):
                break
            user_id, token = await sign_up(client, f"w{tag}_{i}")
            mine = MOVING[0] <= shard_of(int(user_id)) <= MOVING[1]
            group = inside if mine else outside
            if len(group) < (args.writers // 2 if mine else args.writers - args.writers // 2):
                group.append(token)
    if not inside:
        raise RuntimeError("no writer landed on the moving shards in 64 sign-ups")

    settings = load_settings({}, data_dir=data_dir, database_url=url)
    lines: list[tuple[float, str]] = []
    writes: list[Write] = []
    stop = asyncio.Event()
    tasks = [asyncio.create_task(writer(base, t, True, stop, writes)) for t in inside]
    tasks += [asyncio.create_task(writer(base, t, False, stop, writes)) for t in outside]
    reports, windows, spans = [], [], []
    failures: list[str] = []
    async with open_sharding(settings) as (clusters, home, store):
        mover = ShardMover(
            clusters, home, store, progress=lambda line: lines.append((time.monotonic(), line))
        )
        try:
            await asyncio.sleep(args.settle)  # writes before the first move
            for i in range(args.moves):
                target = "c2" if i % 2 == 0 else "c1"
                log(f"move {i + 1}/{args.moves}: shards {MOVING[0]}-{MOVING[1]} to {target}…")
                lines.clear()
                start = time.monotonic()
                try:
                    reports.append(await mover.move(MOVING[0], MOVING[1], target))
                except MoveError as exc:
                    failures.append(f"move {i + 1}: {str(exc).splitlines()[0]}")
                    log(failures[-1])
                    break
                spans.append((start, time.monotonic()))
                fence = [t for t, line in lines if line.startswith("fence: raised")]
                flip = [t for t, line in lines if line.startswith("flip:")]
                windows.append((fence[-1] if fence else start, flip[-1] if flip else start))
                await asyncio.sleep(args.settle)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

        acked = [w.photo_id for w in writes if w.photo_id is not None]
        current = await store.load()
        assert current is not None
        found: dict[int, list[str]] = {}
        for name, db in clusters.items():
            async with db.read_on_primary() as conn:
                rows = await conn.execute(
                    text("SELECT id FROM photos WHERE id = ANY(:ids)"), {"ids": acked}
                )
                for (photo_id,) in rows:
                    found.setdefault(int(photo_id), []).append(name)
        source = "c1" if len(reports) % 2 == 1 else "c2"  # what the last move left
        async with clusters[source].read_on_primary() as conn:
            left = int(
                await conn.scalar(
                    text("SELECT count(*) FROM photos WHERE ((id >> 10) & 8191) BETWEEN :a AND :b"),
                    {"a": MOVING[0], "b": MOVING[1]},
                )
            )
    lost = sum(1 for p in acked if p not in found)
    duplicated = sum(1 for p in acked if len(found.get(p, [])) > 1)
    misplaced = sum(
        1 for p in acked if p in found and current.cluster_of(shard_of(p)) not in found[p]
    )

    # and over the API, as a client would look for them
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def seen(photo_id: int) -> bool:
            async with gate:
                return (await client.get(f"/api/v1/photos/{photo_id}")).status_code == 200

        api = await asyncio.gather(*(seen(p) for p in acked))
    return MoveResult(
        reports,
        windows,
        spans,
        writes,
        api.count(False),
        lost,
        duplicated,
        misplaced,
        left,
        (len(inside), len(outside)),
        failures,
    )


def run_moves(
    server: PostgresServer, redis_url: str, root: Path, args: argparse.Namespace
) -> MoveResult:
    dbs = [server.new_database() for _ in range(2)]
    url = layout_url([db.url for db in dbs])
    data_dir = root / "moves"
    base, process = start_picscale(data_dir, job_workers=1, database_url=url, cache_url=redis_url)
    try:
        users = args.move_rows // 5
        log(f"moves: seeding {users} accounts x 4 photos on shards {MOVING[0]}-{MOVING[1]}…")
        asyncio.run(seed(data_dir, url, users, 4, shards=range(MOVING[0], MOVING[1] + 1)))
        result = asyncio.run(moves_under_load(url, data_dir, base, args))
        process.check_alive()
    finally:
        process.stop()
        show_errors(process, "moves")
    return result


def show_errors(process: Any, what: str) -> None:
    """The server's errors, in short, on stderr (its log goes with the temporary dir)."""
    import json

    seen: Counter[str] = Counter()
    for line in process.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") not in ("error", "critical"):
            continue
        where = ""
        for exc in entry.get("exception") or []:
            frames = [
                f"{Path(f['filename']).name}:{f['lineno']} {f['name']}"
                for f in exc.get("frames", [])
                if "/picscale/" in f["filename"] or "/litestar/" in f["filename"]
            ]
            where = f"{exc.get('exc_type')}: {exc.get('exc_value')} at " + " < ".join(
                reversed(frames[-4:])
            )
        seen[f"{entry.get('process')} {entry.get('event')}: {where}"] += 1
    for text_, n in seen.most_common(8):
        log(f"{what}: server error x{n}: {text_[:700]}")


# -- the report ---------------------------------------------------------------------------


def report_layouts(results: list[LayoutResult], args: argparse.Namespace) -> None:
    print(
        f"mixed journey: {args.users} members x {args.actions} requests ({args.concurrency} in "
        f"flight), {args.seeded} seeded accounts; PostgreSQL 15 databases on one server "
        f"(fsync off), picscale serve (1 web process, 1 job worker, Redis cache); "
        f"{machine_note()}"
    )
    print(
        f"{'clusters':<9}{'cluster':<8}{'members':>8}{'queries':>9}{'share':>7}{'rows written':>13}"
        f"{'share':>7}{'commits/s':>10}{'rows/s':>8}{'plumbing q':>11}"
    )
    for r in results:
        queries = [s.queries for s in r.stats]
        written = [s.written for s in r.stats]
        for i, s in enumerate(r.stats):
            print(
                f"{r.clusters if i == 0 else '':<9}{f'c{i + 1}':<8}{r.members[i]:>8}"
                f"{s.queries:>9}{s.queries / max(1, sum(queries)):>7.2f}{s.written:>13}"
                f"{s.written / max(1, sum(written)):>7.2f}{s.commits / r.seconds:>10.0f}"
                f"{s.written / r.seconds:>8.0f}{s.other_queries:>11}"
            )
        if r.clusters > 1:
            expected = math.sqrt((r.clusters - 1) / args.users)
            q, w = spread(queries), spread(written)
            m = spread([float(x) for x in r.members])
            print(
                f"{'':<9}spread from even: queries {q:.2f}, rows written {w:.2f} "
                f"(within 0.10: {'yes' if q <= 0.10 and w <= 0.10 else 'no'}); members "
                f"{m:.2f} (random placement: ~{expected:.2f} typical)"
            )
    print(
        "(members: the journey's members on the cluster; queries: index + sequential scans "
        "of sharded tables but jobs; plumbing q: scans of global tables and jobs)"
    )
    kinds = ["sign up", "log in", *WEIGHTS]
    print(f"{'clusters':<9}{'requests/s':>11}" + "".join(f"{k:>12}" for k in kinds))
    for r in results:
        cells = []
        for kind in kinds:
            total = sum(n for (a, _), n in r.outcomes.codes.items() if a == kind)
            ok = sum(n for (a, s), n in r.outcomes.codes.items() if a == kind and s < 400)
            cells.append(f"{f'{ok}/{total}':>12}")
        requests = sum(r.outcomes.codes.values())
        print(f"{r.clusters:<9}{requests / r.seconds:>11.1f}" + "".join(cells))
    print("(requests that succeeded / all, by kind)")
    failures = Counter()
    for r in results:
        for (a, s), n in r.outcomes.codes.items():
            if s >= 400:
                failures[(r.clusters, a, s)] += n
    if failures:
        print(
            "failed requests: "
            + ", ".join(
                f"{c} cluster(s) {a} HTTP {s} x{n}" for (c, a, s), n in sorted(failures.items())
            )
        )


def report_moves(m: MoveResult, args: argparse.Namespace) -> None:
    print()
    print(
        f"shard moves under load: shards {MOVING[0]}-{MOVING[1]} between 2 clusters (databases "
        f"on one server), {args.moves} moves, {m.writers[0]} writers on the moving shards + "
        f"{m.writers[1]} elsewhere uploading without pause"
    )
    print(
        f"{'move':<6}{'to':<4}{'rows':>8}{'copy s':>8}{'rows/s':>8}{'pause ms':>10}"
        f"{'client max ms':>15}{'5xx':>6}{'total s':>9}"
    )
    client_pauses = []
    for i, (rep, (fence, flip), (start, end)) in enumerate(
        zip(m.reports, m.windows, m.spans, strict=True)
    ):
        crossing = [
            w.end - w.start for w in m.writes if w.in_range and w.start < flip and w.end > fence
        ]
        refused = sum(1 for w in m.writes if start <= w.start <= end and w.status >= 500)
        worst = max(crossing) if crossing else 0.0
        client_pauses.append(worst)
        pause = rep.write_pause_seconds
        print(
            f"{i + 1:<6}{rep.target:<4}{rep.rows_copied:>8}{rep.copy_seconds:>8.1f}"
            f"{rep.rows_per_second:>8.0f}"
            f"{(pause * 1000 if pause is not None else float('nan')):>10.0f}"
            f"{worst * 1000:>15.0f}{refused:>6}{end - start:>9.1f}"
        )
    pauses = [r.write_pause_seconds for r in m.reports if r.write_pause_seconds is not None]
    outside = [
        w.end - w.start
        for w in m.writes
        if w.status == 201 and not any(s <= w.start <= e for s, e in m.spans)
    ]
    acked = sum(1 for w in m.writes if w.photo_id is not None)
    failed = Counter(w.status for w in m.writes if w.photo_id is None)
    print(
        f"write pause (fence to flip): p50 {percentile(pauses, 0.5) * 1000:.0f} ms, max "
        f"{max(pauses) * 1000:.0f} ms; client side (longest upload of a moving account across "
        f"the fence): p50 {percentile(client_pauses, 0.5) * 1000:.0f} ms, max "
        f"{max(client_pauses) * 1000:.0f} ms; baseline upload outside moves: p50 "
        f"{percentile(outside, 0.5) * 1000:.0f} ms, p99 {percentile(outside, 0.99) * 1000:.0f} ms"
        if pauses and outside
        else "write pause: not measured"
    )
    print(
        f"acknowledged uploads {acked}, not acknowledged {sum(failed.values())} "
        f"({', '.join(f'HTTP {s} x{n}' for s, n in sorted(failed.items())) or 'none'}); lost "
        f"{m.lost}, duplicated {m.duplicated}, on the wrong cluster {m.misplaced}, not "
        f"readable over the API {m.api_missing}; moving-shard photos left on the source "
        f"{m.left_on_source}"
    )
    for failure in m.failures:
        print(f"FAILED: {failure}")
    print(
        "target: 0 acknowledged writes lost -> "
        + ("met" if m.lost == 0 and m.api_missing == 0 else "NOT met")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=150, help="journey members per layout")
    parser.add_argument("--signups", type=int, default=15, help="of them, signing up (API)")
    parser.add_argument("--actions", type=int, default=6, help="requests per member")
    parser.add_argument("--concurrency", type=int, default=12, help="requests in flight")
    parser.add_argument("--seeded", type=int, default=2000, help="bulk-loaded accounts")
    parser.add_argument("--layouts", default="1,2,4", help="cluster counts")
    parser.add_argument("--moves", type=int, default=4)
    parser.add_argument("--move-rows", type=int, default=20_000, help="rows on moving shards")
    parser.add_argument("--writers", type=int, default=8, help="uploaders during moves")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between moves")
    parser.add_argument("--quick", action="store_true", help="a smaller run of everything")
    args = parser.parse_args()
    if args.quick:
        args.users, args.signups, args.actions, args.seeded = 60, 6, 5, 500
        args.moves, args.move_rows, args.writers = 2, 5000, 4
    layouts = [int(n) for n in args.layouts.split(",") if n.strip()]
    args.signups = min(args.signups, args.users)

    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    log("starting PostgreSQL and Redis…")
    server = start_postgres()
    redis = None
    try:
        server.sql("ALTER SYSTEM SET wal_retrieve_retry_interval = '100ms'", database="postgres")
        server.sql("SELECT pg_reload_conf()", database="postgres")
        redis = start_redis()
        with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp:
            root = Path(tmp)
            results = [
                run_layout(server, redis.url.rsplit("/", 1)[0] + f"/{i}", root, n, args)
                for i, n in enumerate(layouts)
            ]
            moves = (
                run_moves(server, redis.url.rsplit("/", 1)[0] + "/9", root, args)
                if args.moves
                else None
            )
    finally:
        if redis is not None:
            redis.close()
        with contextlib.suppress(Exception):
            server.close()
    if busy:
        print("note: the machine was busy at the start (load average above its CPUs)")
    report_layouts(results, args)
    if moves is not None:
        report_moves(moves, args)


if __name__ == "__main__":
    main()
