"""A celebrity's follower count under 2,000 concurrent follows: one hot row versus slots.

One PostgreSQL server (the test harness's: fsync off), picscale's tiers built in this
process. Each design gets a celebrity of its own, and 2,000 follows of it run at once
through the router (``shards.write(celebrity)``), at most ``--concurrency`` (32) at a
time, the size of the connection pool (16 + 16 overflow): the mirror transaction as the
``follow_mirror`` job runs it (pair lock, the followee's-side row, the count, the
profile's cache invalidation), with

- ``slots=1``: the single-row counter (every follow updates one row: the baseline);
- ``slots=16``: the chosen design (``PICSCALE_COUNTER_SLOTS``, a random slot of 16);
- the request-path design of stages 1-8, for reference: the followee's row and
  ``UPDATE users SET follower_count = follower_count + 1`` in one transaction.

A follow's latency runs from taking a pool slot to its commit. Exactness: the profile's
count (the sum of the slots, or the row) == 2,000 and 2,000 mirror rows, after a
replay of every seventh follow (the job delivered twice) that must change nothing.
Designs run in turn, ``--rounds`` times in alternating order, their latencies pooled.

    .venv/bin/python bench/hot_counter.py [--follows 2000] [--concurrency 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text, update

from _common import InProcess, log, machine_note, migrate, percentile
from tests.support.pg import start_postgres

PASSWORD = "hot-counter-1"
SLOTS = 16


@dataclass
class Design:
    name: str
    slots: int | None  # None: the old request-path UPDATE of the user's row
    latencies: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    mirrors: list[int] = field(default_factory=list)
    errors: int = 0


def follower_ids(n: int) -> list[int]:
    """Ids of ``n`` followers on random shards (the mirror has no key on them)."""
    from picscale.ids import EPOCH_MS, compose

    ms = time.time_ns() // 1_000_000 - EPOCH_MS
    return [compose(ms - i // 1024, random.randrange(8192), i % 1024) for i in range(n)]


async def run_design(services: Any, design: Design, follows: int, concurrency: int) -> None:
    from picscale.data.counters import FollowerCounter
    from picscale.data.follows import FollowRepository
    from picscale.data.schema import followers, users
    from picscale.domain.cache_keys import profile_key

    shards = services.shards
    name = f"celeb_{uuid.uuid4().hex[:10]}"
    celebrity = await services.users.sign_up(name, PASSWORD, None)
    repo = FollowRepository(shards)
    counter = FollowerCounter(shards.dialect, design.slots or 1)
    fans = follower_ids(follows)
    gate = asyncio.Semaphore(concurrency)

    async def mirror(fan: int) -> None:
        # as jobs/follow_mirror.py does it (the truth on the follower's shard is assumed)
        async with shards.write(celebrity.id) as tx:
            await repo.lock_pair(tx, celebrity.id, fan)
            if await repo.mirror_add(tx, celebrity.id, fan):
                await counter.add(tx, celebrity.id, +1)
                await services.cache.invalidate(tx, [profile_key(name)])

    async def request_path(fan: int) -> None:
        # stages 1-8: the followee's count on its row, in the follow's transaction
        async with shards.write(celebrity.id) as tx:
            if await repo.mirror_add(tx, celebrity.id, fan):
                await tx.conn.execute(
                    update(users)
                    .where(users.c.id == celebrity.id)
                    .values(follower_count=users.c.follower_count + 1)
                )
                await services.cache.invalidate(tx, [profile_key(name)])

    work: Callable[[int], Awaitable[None]] = mirror if design.slots else request_path

    async def timed(fan: int, record: bool) -> None:
        async with gate:
            start = time.perf_counter()
            try:
                await work(fan)
            except Exception as exc:
                design.errors += 1
                log(f"{design.name}: {type(exc).__name__}: {str(exc)[:200]}")
                return
            if record:
                design.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(timed(fan, True) for fan in fans))
    design.totals.append(time.perf_counter() - start)
    # the job delivered twice: nothing may change
    await asyncio.gather(*(timed(fan, False) for fan in fans[::7]))

    profile = await services.users.profile(name)
    design.counts.append(profile.follower_count if profile else -1)
    async with shards.read_on_primary(celebrity.id) as conn:
        design.mirrors.append(
            int(
                await conn.scalar(
                    select(func.count()).where(followers.c.followee_id == celebrity.id)
                )
            )
        )


def report(designs: list[Design], args: argparse.Namespace, busy: bool) -> None:
    base = designs[0]
    base_p99 = percentile(base.latencies, 0.99)
    base_total = sum(base.totals) / len(base.totals)
    print(
        f"{args.follows} concurrent follows of one account x {args.rounds} round(s), "
        f"{args.concurrency} at a time (pool 16+16), PostgreSQL 15 (fsync off), "
        f"in-process; {machine_note()}"
    )
    if busy:
        print("note: the machine is busy (load average above its CPUs): ratios only")
    head = (
        f"{'design':<34}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'total s':>9}"
        f"{'p99 x':>7}{'total x':>8}{'count':>11}{'mirror':>11}{'exact':>7}"
    )
    print(head)
    for d in designs:
        p50 = percentile(d.latencies, 0.5) * 1000
        p99 = percentile(d.latencies, 0.99)
        total = sum(d.totals) / len(d.totals)
        exact = all(c == args.follows for c in d.counts) and all(
            m == args.follows for m in d.mirrors
        )
        count = "/".join(str(c) for c in d.counts)
        mirror = "/".join(str(m) for m in d.mirrors)
        print(
            f"{d.name:<34}{p50:>8.1f}{p99 * 1000:>8.1f}{max(d.latencies) * 1000:>8.1f}"
            f"{total:>9.2f}{p99 / base_p99:>7.2f}{total / base_total:>8.2f}"
            f"{count:>11}{mirror:>11}{'yes' if exact and not d.errors else 'NO':>7}"
        )
    print(
        f"baseline ({base.name}): p99 {base_p99 * 1000:.1f} ms, "
        f"{args.follows / base_total:.0f} follows/s; ratios are to it (lower is better); "
        "count/mirror per round; fsync off: commits are cheap and a hot row's lock short, "
        "so the single row's queue is shorter here than on a durable server"
    )
    errors = sum(d.errors for d in designs)
    if errors:
        print(f"errors: {errors} follows failed (see stderr)")


async def bench(url: str, data_dir: Path, args: argparse.Namespace) -> list[Design]:
    designs = [
        Design("single-row counter (slots=1)", 1),
        Design(f"slot counter (slots={SLOTS}, chosen)", SLOTS),
    ]
    if not args.no_request_path:
        designs.append(Design("request path: UPDATE users (old)", None))
    async with InProcess(data_dir, database_url=url, db_pool_size=16) as services:
        for round_ in range(args.rounds):
            order = designs if round_ % 2 == 0 else designs[::-1]
            for design in order:
                log(f"round {round_ + 1}: {design.name}…")
                await run_design(services, design, args.follows, args.concurrency)
                async with services.shards.home.write() as tx:  # keep the table small
                    await tx.conn.execute(text("DELETE FROM cache_invalidations"))
    return designs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--follows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32, help="follows at once")
    parser.add_argument("--rounds", type=int, default=2, help="each design this many times")
    parser.add_argument("--quick", action="store_true", help="500 follows, one round")
    parser.add_argument(
        "--no-request-path", action="store_true", help="skip the old design's reference row"
    )
    args = parser.parse_args()
    if args.quick:
        args.follows, args.rounds = 500, 1

    import os

    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    log("starting PostgreSQL…")
    server = start_postgres()
    try:
        with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp:
            data_dir = Path(tmp) / "data"
            url = server.new_database().url
            migrate(data_dir, database_url=url)
            designs = asyncio.run(bench(url, data_dir, args))
    finally:
        server.close()
    report(designs, args, busy)


if __name__ == "__main__":
    main()
