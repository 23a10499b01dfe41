"""The cache tier under Zipf reads: database loads per request with and without it.

Seeds 100,000 photos, then wrk sends ``GET /api/v1/photos/{id}`` with ids drawn from a
Zipf distribution (alpha 1.0: a few photos are very popular, most rarely read;
``bench/zipf.lua``) to one ``picscale serve`` process (pinned to CPU 0, wrk to CPU 1)
in three set-ups, each measured for the same time:

- no cache (``none://``): every request reads the database;
- Redis cache after a Zipf warm-up only: what a cold cache meets, since the long tail
  of a Zipf distribution over 100,000 keys keeps bringing never-read photos;
- Redis cache primed by bulk reads: a reader scrolls the whole feed (get many, load only
  the missing photos, set many), as a warm-up job would after a deploy.

The server's own metrics count requests, read statements and cache loads. Then 500
concurrent requests for one cold photo over four web processes show the stampede lock.
Target: at most 0.05 database loads per request with a warm cache.

    uv run --frozen python bench/cache.py [--photos 100000] [--duration 20] [--warmup 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx

from _common import (
    WrkResult,
    log,
    machine_note,
    run_wrk,
    sign_up,
    start_picscale,
    wait_until,
)
from tests.support.redis_server import start_redis

BENCH_DIR = Path(__file__).resolve().parent
ZIPF_SCRIPT = BENCH_DIR / "zipf.lua"
ALPHA = 1.0
SERVER_CPU, WRK_CPU = 0, 1


def seed(data_dir: Path, photos: int) -> list[int]:
    """A user and ``photos`` ready photos, inserted in bulk (the API is not what we time)."""
    from sqlalchemy import create_engine, insert

    from picscale.data.schema import photos as photos_table
    from picscale.data.schema import users
    from picscale.ids import IdGenerator
    from picscale.settings import load_settings
    from picscale.tiers.db.migrate import upgrade

    settings = load_settings({}, data_dir=data_dir)
    upgrade(settings)
    ids = IdGenerator(8192)
    owner = ids.next_id(1)
    now = datetime.now(UTC)
    engine = create_engine(settings.resolved_database_url)
    photo_ids = [ids.next_id(1) for _ in range(photos)]
    with engine.begin() as conn:
        conn.execute(
            insert(users).values(
                id=owner, username="zipf", display_name="zipf", password_hash="!", created_at=now
            )
        )
        rows = [
            {
                "id": pid,
                "owner_id": owner,
                "caption": "",
                "format": "jpeg",
                "status": "ready",
                "version": 1,
                "next_version": 2,
                "width": 1080,
                "height": 720,
                "created_at": now,
            }
            for pid in photo_ids
        ]
        for start in range(0, len(rows), 5000):
            conn.execute(insert(photos_table), rows[start : start + 5000])
    engine.dispose()
    return photo_ids


def cold_floor(n: int, before: int, during: int) -> float:
    """Loads per request an ideal cache of unbounded size and TTL would still need: the
    expected number of photos read for the first time among ``during`` requests that
    follow ``before`` requests, over ``during``."""
    total = sum(1.0 / k**ALPHA for k in range(1, n + 1))
    new = 0.0
    for k in range(1, n + 1):
        p = 1.0 / k**ALPHA / total
        new += (1.0 - p) ** before - (1.0 - p) ** (before + during)
    return new / during


def metric_sum(base: str, pattern: str) -> float:
    text = httpx.get(base + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(pattern, line)
    )


async def stampede(base: str, photo_id: int) -> None:
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        responses = await asyncio.gather(
            *(client.get(f"/api/v1/photos/{photo_id}") for _ in range(500))
        )
    assert all(r.status_code == 200 for r in responses)


def wait_counted(base: str, before: float, requests: int, route: str | None = None) -> None:
    """Until every web process has flushed its counters (about once a second)."""
    wait_until(
        lambda: metric_sum(base, route or REQUESTS) - before >= requests,
        timeout=30,
        interval=0.2,
        what="the requests in the metrics",
    )


READS = r'picscale_db_queries_total\{.*intent="read"'
LOADS = r'picscale_cache_events_total\{event="load"\}'
FEED = r'picscale_http_requests_total\{.*route="/api/v1/feed"'
REQUESTS = r'picscale_http_requests_total\{.*route="/api/v1/photos/\{photo_id\}"'


def prime_by_scrolling(base: str, owner: str) -> int:
    """A reader who follows the owner scrolls their whole feed, 100 photos a page."""
    with httpx.Client(base_url=base, timeout=60) as client:
        token = sign_up(client, "scroller")
        client.headers["Authorization"] = f"Bearer {token}"
        client.put(f"/api/v1/users/{owner}/follow").raise_for_status()
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/v1/feed", params=params)
            page.raise_for_status()
            pages += 1
            cursor = page.json()["next_cursor"]
            if not cursor:
                return pages


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of Zipf warm-up")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    args = parser.parse_args()
    if not Path(args.wrk).exists():
        parser.error(f"wrk not found at {args.wrk}: run `bash scripts/system-deps.sh bench`")
    rows: list[tuple[str, WrkResult, int, float, float, float]] = []
    redis = start_redis()
    try:
        import redis as redis_sync

        admin = redis_sync.Redis(port=redis.port)
        with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp:
            data = Path(tmp) / "data"
            log(f"seeding {args.photos} photos…")
            ids = seed(data, args.photos)
            popular = ids[:]
            random.Random(1).shuffle(popular)  # popularity has nothing to do with age
            ids_file = Path(tmp) / "ids.txt"
            ids_file.write_text("\n".join(map(str, popular)) + "\n")
            setups = (
                ("no cache", "none://", "zipf"),
                ("Redis, Zipf warm-up", redis.url, "zipf"),
                ("Redis, primed", redis.url, "prime"),
            )
            for label, cache_url, warm in setups:
                admin.flushall()
                base, server = start_picscale(
                    data, job_workers=0, cpu=SERVER_CPU, cache_url=cache_url
                )
                try:
                    before = 0
                    if warm == "prime":
                        log(f"{label}: scrolling the feed…")
                        pages = prime_by_scrolling(base, "zipf")
                        wait_counted(base, 0, pages, FEED)
                    else:
                        log(f"{label}: {args.warmup:g} s of Zipf warm-up…")
                        warmup = zipf_wrk(args, base, ids_file, seed=7, duration=args.warmup)
                        before = warmup.requests
                    wait_counted(base, 0, before)
                    reads0, loads0 = metric_sum(base, READS), metric_sum(base, LOADS)
                    served0 = metric_sum(base, REQUESTS)
                    log(f"{label}: {args.duration:g} s measured…")
                    result = zipf_wrk(args, base, ids_file, seed=42, duration=args.duration)
                    wait_counted(base, served0, result.requests)
                    served = metric_sum(base, REQUESTS) - served0
                    reads = (metric_sum(base, READS) - reads0) / served
                    loads = (metric_sum(base, LOADS) - loads0) / served
                    floor = cold_floor(len(ids), before, result.requests)
                    if warm == "prime":
                        floor = 0.0
                    if cache_url == "none://":
                        loads, floor = 1.0, 1.0
                    rows.append((label, result, before, reads, loads, floor))
                finally:
                    server.stop()
            log("stampede: 500 concurrent requests for a cold photo, 4 web processes…")
            admin.flushall()
            base, server = start_picscale(data, workers=4, job_workers=0, cache_url=redis.url)
            try:
                cold = popular[-1]  # the least popular: never read
                loads0 = metric_sum(base, LOADS)
                served0 = metric_sum(base, REQUESTS)
                asyncio.run(stampede(base, cold))
                wait_counted(base, served0, 500)
                stampede_loads = metric_sum(base, LOADS) - loads0
            finally:
                server.stop()
        admin.close()
    finally:
        redis.close()
    print(
        f"GET /api/v1/photos/{{id}}, Zipf alpha {ALPHA} over {args.photos} photos, wrk "
        f"{args.connections} connections for {args.duration:g} s per set-up, 1 web process, "
        f"SQLite; {machine_note()}"
    )
    print(
        f"{'set-up':<22}{'req/s':>8}{'ratio':>7}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}"
        f"{'db reads/req':>13}{'loads/req':>10}{'ideal':>7}"
    )
    baseline = rows[0][1].rps
    for label, r, _, reads, loads, floor in rows:
        print(
            f"{label:<22}{r.rps:>8.0f}{r.rps / baseline:>7.2f}{r.p50_ms:>8.1f}{r.p99_ms:>8.1f}"
            f"{r.bad:>7}{reads:>13.3f}{loads:>10.3f}{floor:>7.3f}"
        )
    print(
        "ideal: loads/req an unbounded cache with no expiry would need (first reads of the "
        "long tail)"
    )
    print(f"stampede: 500 concurrent requests, cold key, 4 processes -> {stampede_loads:.0f} loads")
    primed = rows[-1][4]
    verdict = "met" if primed <= 0.05 else "NOT met"
    print(f"target: <= 0.05 database loads per request, warm cache -> {primed:.3f}, {verdict}")


def zipf_wrk(
    args: argparse.Namespace, base: str, ids_file: Path, *, seed: int, duration: float
) -> WrkResult:
    return run_wrk(
        args.wrk,
        base,
        duration=duration,
        connections=args.connections,
        cpu=WRK_CPU,
        script=ZIPF_SCRIPT,
        script_args=[str(ids_file), str(ALPHA), str(seed)],
    )


if __name__ == "__main__":
    main()
