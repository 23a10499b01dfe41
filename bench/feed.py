"""The home feed on 4 clusters: pull versus hybrid fan-out, and the cost of one upload by
an author with 100,000 followers, fanned out or merged at read time.

One PostgreSQL server (the test harness's, fsync off) holds 4 databases: the 4 clusters
of the shard layout (the map even: 2,048 logical shards each). Timelines are the tables
on each user's shard (the default without Redis); the cache is the in-process one.
Accounts, photos and follow edges are inserted in bulk with SQL (the API is not what is
timed); the follows of the viewers go in with foreign-key triggers off (``FK_NOTE``: the
schema of stage 9 as first committed refuses follows across clusters).

1. Feed reads (first page, 20 photos) of a viewer who follows 1,000 accounts spread over
   the 4 clusters, 3 ready photos each, called in-process (``services.social.feed``),
   the modes interleaved:
   - pull only: the followees, then the newest 21 photo ids of all of them pulled from
     every cluster in parallel, then the photos (what a design without timelines does);
   - cold timeline: the timeline dropped before each read, so the service's read
     rebuilds it (a pull of up to FEED_TIMELINE_MAX ids, written back);
   - hybrid, warm timeline: the page from the timeline (what most reads are).
2. One upload by an author with 100,000 followers (the mirror rows on the author's
   shard, on random shards of theirs; 10% with warm timelines), ``fan_out`` jobs run by
   ``picscale worker`` processes: with FEED_FANOUT_MAX_FOLLOWERS above 100,000 (fanned
   out: jobs, and the time from the upload's commit until every warm follower's
   timeline holds the photo) and then at its default 10,000 (a celebrity: the first job
   marks them and pushes nothing; the cost moves to reads: feed reads of a follower of
   the celebrity, who gets their photos merged in, against one who follows none).

    .venv/bin/python bench/feed.py [--followees 1000] [--reads 200] [--followers 100000]
                                   [--warm 0.1] [--workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from _common import (
    InProcess,
    Process,
    clean_env,
    insert_bulk,
    insert_routed,
    layout_url,
    log,
    machine_note,
    migrate,
    past_id,
    percentile,
    seed_accounts,
    tiny_jpeg,
)
from tests.support.pg import start_postgres

CLUSTERS = 4
PHOTOS_EACH = 3
PAGE = 20
PASSWORD = "feed-bench-1"
FK_NOTE = (
    "follows inserted with foreign-key checks off: fk_follows_followee_id_users (follows, "
    "on the follower's shard) refuses a followee on another cluster, so the API's follow "
    "fails across clusters"
)
POLL_SECONDS = 0.1  # the lease queue's poll on PostgreSQL (no wake-up across hosts)


async def seed_followees(services: Any, count: int) -> list[int]:
    """``count`` accounts on random shards, ``PHOTOS_EACH`` ready photos each."""
    accounts, _ = await seed_accounts(
        services.shards.cluster_for,
        services.shards.home,
        count,
        photos_each=PHOTOS_EACH,
        prefix=f"fe_{uuid.uuid4().hex[:6]}_",
    )
    return [user_id for user_id, _ in accounts]


async def add_follows(services: Any, viewer: Any, followees: Sequence[int]) -> None:
    """The truth of ``viewer``'s follows on their shard (and their following count)."""
    from picscale.data.schema import follows, users

    now = datetime.now(UTC)
    rows = [{"follower_id": viewer.id, "followee_id": f, "created_at": now} for f in followees]
    # no_fk: where the schema still has fk_follows_followee_id_users, it wants the
    # followee on the follower's cluster and refuses every follow across clusters (FK_NOTE)
    await insert_routed(services.shards.cluster_for, follows, rows, "follower_id", no_fk=True)
    async with services.shards.write(viewer.id) as tx:
        await tx.conn.execute(
            users.update()
            .where(users.c.id == viewer.id)
            .values(following_count=users.c.following_count + len(followees))
        )


async def timed_reads(
    modes: dict[str, Callable[[], Awaitable[Any]]],
    reads: int,
    before: dict[str, Callable[[], Awaitable[Any]]] | None = None,
) -> dict[str, list[float]]:
    """Each mode ``reads`` times, interleaved; ``before[mode]`` runs untimed first."""
    out: dict[str, list[float]] = {name: [] for name in modes}
    for name, read in modes.items():  # warm-up: connections, cache, the stars
        if before and name in before:
            await before[name]()
        await read()
    for _ in range(reads):
        for name, read in modes.items():
            if before and name in before:
                await before[name]()
            start = time.perf_counter()
            await read()
            out[name].append(time.perf_counter() - start)
    return out


async def count_across(services: Any, sql: str, **params: Any) -> int:
    async def one(db: Any) -> int:
        async with db.read_on_primary() as conn:
            return int(await conn.scalar(text(sql), params) or 0)

    return sum(await services.shards.across(one))


def start_workers(data_dir: Path, url: str, count: int, max_followers: int) -> list[Process]:
    env = clean_env(
        PICSCALE_DATA_DIR=str(data_dir),
        PICSCALE_DATABASE_URL=url,
        PICSCALE_LOG_LEVEL="info",  # "worker_started" says it claims
        PICSCALE_FEED_FANOUT_MAX_FOLLOWERS=str(max_followers),
        PICSCALE_JOB_POLL_SECONDS=str(POLL_SECONDS),
    )
    args = [sys.executable, "-m", "picscale", "worker", "--concurrency", "2"]
    return [Process(args, env, data_dir / f"worker-{max_followers}-{i}.log") for i in range(count)]


def stop_all(processes: list[Process]) -> None:
    for p in processes:
        p.stop()


async def fan_out_run(
    services: Any,
    author: Any,
    warm: int,
    *,
    data_dir: Path,
    url: str,
    workers: int,
    max_followers: int,
    within: float,
) -> dict[str, Any]:
    """Upload one photo by ``author`` with workers set to ``max_followers``; until every
    ``fan_out`` job of it is done (and, when it fans out, every warm timeline has it)."""
    processes = start_workers(data_dir, url, workers, max_followers)
    try:
        for p in processes:  # started: imports, the map, a node, the render pool
            while "worker_started" not in p.log():
                p.check_alive()
                await asyncio.sleep(0.1)
        photo = await services.photos.upload(author, tiny_jpeg(random.randrange(1 << 16)), "")
        start = time.perf_counter()
        pushed_at = None
        done_at = None
        pushed = jobs = finished = 0
        while time.perf_counter() - start < within:
            pushed = await count_across(
                services, "SELECT count(*) FROM timelines WHERE photo_id = :p", p=photo.id
            )
            # one statement: the next batch is queued in the transaction that ends this one
            async with services.shards.read_on_primary(author.id) as conn:
                jobs, finished = (
                    await conn.execute(
                        text(
                            "SELECT count(*), count(*) FILTER (WHERE status IN ('done', 'dead')) "
                            "FROM jobs WHERE kind = 'fan_out' AND photo_id = :p"
                        ),
                        {"p": photo.id},
                    )
                ).one()
            now = time.perf_counter() - start
            if pushed >= warm and pushed_at is None:
                pushed_at = now
            if jobs and finished == jobs:
                done_at = now
                break
            await asyncio.sleep(0.05)
        # the photo rendered too (not timed): a merged feed shows ready photos only
        for _ in range(int(within / 0.1)):
            found = await services.photos.get_many([photo.id])
            if photo.id in found and found[photo.id].status != "processing":
                break
            await asyncio.sleep(0.1)
        for p in processes:
            p.check_alive()
        dead = await count_across(
            services,
            "SELECT count(*) FROM jobs WHERE kind = 'fan_out' AND photo_id = :p "
            "AND status = 'dead'",
            p=photo.id,
        )
        return {
            "photo": photo.id,
            "jobs": jobs,
            "dead": dead,
            "pushed": pushed,
            "all_warm_at": pushed_at,
            "jobs_done_at": done_at,
        }
    finally:
        stop_all(processes)


async def bench(url: str, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from picscale.data.follows import FollowRepository
    from picscale.data.photos import PhotoRepository
    from picscale.data.schema import followers, timeline_state, user_counters
    from picscale.domain.social import STARS_TTL_SECONDS

    result: dict[str, Any] = {}
    async with InProcess(data_dir, database_url=url) as services:
        shards = services.shards
        social = services.social
        log(f"seeding {args.followees} accounts x {PHOTOS_EACH} photos…")
        followees = await seed_followees(services, args.followees)
        tag = uuid.uuid4().hex[:6]
        viewer = await services.users.sign_up(f"viewer_{tag}", PASSWORD, None)
        await add_follows(services, viewer, followees)
        async with shards.home.read_on_primary() as conn:
            result["fk_bug"] = bool(
                await conn.scalar(
                    text("SELECT count(*) FROM pg_constraint WHERE conname = :n"),
                    {"n": "fk_follows_followee_id_users"},
                )
            )
        spread = {db.name: len(ids) for db, ids in shards.grouped(followees).items()}
        result["spread"] = dict(sorted(spread.items()))

        # -- 1. reads ------------------------------------------------------------------
        follows = FollowRepository(shards)
        rows = PhotoRepository(shards)

        async def pull_only() -> None:
            owners = await follows.followees(viewer.id)
            ids = await rows.recent_ids_across_shards([viewer.id, *owners], None, PAGE + 1)
            await services.photos.get_many(ids[:PAGE])

        async def feed() -> None:
            page = await social.feed(viewer, None, PAGE)
            assert len(page.items) == PAGE, len(page.items)

        async def drop() -> None:
            await services.timelines.drop(viewer.id)

        log(f"{args.reads} feed reads in each mode…")
        result["reads"] = await timed_reads(
            {
                "pull only (no timeline)": pull_only,
                "cold timeline (rebuilt)": feed,
                "hybrid, warm timeline": feed,
            },
            args.reads,
            before={"cold timeline (rebuilt)": drop},
        )

        # -- 2. fan-out ----------------------------------------------------------------
        log(f"seeding an author with {args.followers} followers ({args.warm:.0%} warm)…")
        author = await services.users.sign_up(f"author_{tag}", PASSWORD, None)
        fan = await services.users.sign_up(f"fan_{tag}", PASSWORD, None)
        await add_follows(services, fan, [*followees, author.id])
        fans = [fan.id] + [
            past_id(random.randrange(shards.logical)) for _ in range(args.followers - 1)
        ]
        now = datetime.now(UTC)
        await insert_bulk(
            shards.cluster_for(author.id),
            followers,
            [{"followee_id": author.id, "follower_id": f, "created_at": now} for f in fans],
        )
        await insert_bulk(
            shards.cluster_for(author.id),
            user_counters,
            [{"user_id": author.id, "slot": 0, "followers": len(fans)}],
        )
        # ids sort by time: the warm ones drawn at random, not the first pages
        warm_ids = random.sample(fans[1:], int(len(fans) * args.warm) - 1)
        await insert_routed(
            shards.cluster_for,
            timeline_state,
            [{"user_id": u, "built_at": now} for u in warm_ids],
            "user_id",
        )
        await feed_of(social, fan)  # the fan's timeline: built by a read, warm
        warm = len(warm_ids) + 1
        result["warm"] = warm
        result["author_cluster"] = shards.cluster_for(author.id).name

        log("upload, fanned out (threshold above the author's followers)…")
        result["fanned"] = await fan_out_run(
            services,
            author,
            warm,
            data_dir=data_dir,
            url=url,
            workers=args.workers,
            max_followers=args.followers * 10,
            within=args.timeout,
        )
        log("upload, as a celebrity (threshold 10,000)…")
        result["celebrity"] = await fan_out_run(
            services,
            author,
            warm,
            data_dir=data_dir,
            url=url,
            workers=args.workers,
            max_followers=10_000,
            within=args.timeout,
        )
        async with shards.home.read_on_primary() as conn:
            result["marked"] = bool(
                await conn.scalar(
                    text("SELECT count(*) FROM celebrities WHERE user_id = :u"), {"u": author.id}
                )
            )
        await asyncio.sleep(STARS_TTL_SECONDS + 0.2)  # this process sees the new celebrity

        async def viewer_feed() -> None:
            await feed_of(social, viewer)

        async def fan_feed() -> None:
            await feed_of(social, fan)

        log(f"{args.reads} feed reads with and without a celebrity merged…")
        result["merge"] = await timed_reads(
            {"warm, follows no celebrity": viewer_feed, "warm + 1 celebrity merged": fan_feed},
            args.reads,
        )
        first = (await feed_of(social, fan)).items
        result["celebrity_photo_in_feed"] = any(p.id == result["celebrity"]["photo"] for p in first)
        async with shards.read_on_primary(author.id) as conn:
            result["author_followers"] = int(
                await conn.scalar(select(func.count()).where(followers.c.followee_id == author.id))
            )
    return result


async def feed_of(social: Any, user: Any) -> Any:
    return await social.feed(user, None, PAGE)


def report(r: dict[str, Any], args: argparse.Namespace, busy: bool) -> None:
    spread = ", ".join(f"{k} {v}" for k, v in r["spread"].items())
    print(
        f"home feed, first page ({PAGE} photos), a viewer following {args.followees} accounts "
        f"x {PHOTOS_EACH} photos on {CLUSTERS} clusters ({spread}); 4 PostgreSQL 15 databases "
        f"on one server (fsync off), in-process calls, {args.reads} reads a mode, "
        f"interleaved; {machine_note()}"
    )
    if busy:
        print("note: the machine is busy (load average above its CPUs): ratios only")
    reads: dict[str, list[float]] = r["reads"]
    base_name = "pull only (no timeline)"
    base = percentile(reads[base_name], 0.5)
    base99 = percentile(reads[base_name], 0.99)
    print(f"{'feed read':<32}{'p50 ms':>9}{'p99 ms':>9}{'p50 x':>8}{'p99 x':>8}")
    for name, values in reads.items():
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(
            f"{name:<32}{p50 * 1000:>9.1f}{p99 * 1000:>9.1f}{p50 / base:>8.2f}{p99 / base99:>8.2f}"
        )
    print(f"baseline ({base_name}): p50 {base * 1000:.1f} ms, p99 {base99 * 1000:.1f} ms")
    print()
    fanned, celeb = r["fanned"], r["celebrity"]
    print(
        f"one upload by an author with {args.followers} followers (on "
        f"{r['author_cluster']}; followers on random shards of all {CLUSTERS} clusters), "
        f"{r['warm']} warm timelines ({args.warm:.0%}); {args.workers} worker processes x 2 "
        f"jobs, queue lease:// polled every {POLL_SECONDS} s"
    )

    def per_job(run: dict[str, Any]) -> str:
        done = run["jobs_done_at"]
        return f"{done * 1000 / run['jobs']:.0f}" if done is not None and run["jobs"] else "-"

    def secs(v: float | None) -> str:
        return f"{v:.2f}" if v is not None else "timeout"

    print(
        f"{'author':<30}{'fan_out jobs':>13}{'pushed':>8}{'all warm s':>11}{'jobs done s':>12}"
        f"{'ms a job':>10}"
    )
    for name, run, all_warm in (
        ("below threshold (fanned out)", fanned, secs(fanned["all_warm_at"])),
        ("above threshold (celebrity)", celeb, "-"),
    ):
        print(
            f"{name:<30}{run['jobs']:>13}{run['pushed']:>8}{all_warm:>11}"
            f"{secs(run['jobs_done_at']):>12}{per_job(run):>10}"
        )
    print(
        "(seconds from the upload's commit; the batches run one after another: each job "
        "queues the next as it ends)"
    )
    print(
        f"(the celebrity's one job only decides: marked a celebrity: {r['marked']}; "
        f"dead jobs: {fanned['dead'] + celeb['dead']}; the fan's page shows the photo: "
        f"{r['celebrity_photo_in_feed']})"
    )
    print()
    merge: dict[str, list[float]] = r["merge"]
    names = list(merge)
    m_base, m_base99 = percentile(merge[names[0]], 0.5), percentile(merge[names[0]], 0.99)
    print(f"{'read-time merge (feed read)':<32}{'p50 ms':>9}{'p99 ms':>9}{'p50 x':>8}{'p99 x':>8}")
    for name in names:
        p50, p99 = percentile(merge[name], 0.5), percentile(merge[name], 0.99)
        print(
            f"{name:<32}{p50 * 1000:>9.1f}{p99 * 1000:>9.1f}{p50 / m_base:>8.2f}"
            f"{p99 / m_base99:>8.2f}"
        )
    print(f"baseline ({names[0]}): p50 {m_base * 1000:.1f} ms, p99 {m_base99 * 1000:.1f} ms")
    if r["fk_bug"]:
        print(f"note: {FK_NOTE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--followees", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=200, help="feed reads a mode")
    parser.add_argument("--followers", type=int, default=100_000)
    parser.add_argument("--warm", type=float, default=0.1, help="share of warm timelines")
    parser.add_argument("--workers", type=int, default=2, help="picscale worker processes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for a fan-out")
    parser.add_argument("--quick", action="store_true", help="50 reads a mode, 20,000 followers")
    args = parser.parse_args()
    if args.quick:
        args.reads, args.followers = 50, 20_000
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    log("starting PostgreSQL (4 databases)…")
    server = start_postgres()
    try:
        with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp:
            data_dir = Path(tmp) / "data"
            url = layout_url([server.new_database().url for _ in range(CLUSTERS)])
            migrate(data_dir, database_url=url)
            result = asyncio.run(bench(url, data_dir, args))
    finally:
        server.close()
    report(result, args, busy)


if __name__ == "__main__":
    main()
