"""``picscale shards rebalance --clusters N``: spread the load over the first N clusters
of the layout by moving contiguous ranges of logical shards, one move at a time.

Load is what a cluster carries, not how many shards it has: each logical shard weighs its
share of all rows plus its share of recent traffic (reads and writes), plus a little for
the shard itself (new users land on every shard alike, so an empty shard is not free).
Clusters after the first N are drained.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from picscale.resharding.mover import MoveRefused, MoveReport, ShardMover
from picscale.resharding.status import ShardStats, shard_status
from picscale.tiers.db.database import Database
from picscale.tiers.db.shard_map import ShardMap

if TYPE_CHECKING:
    from picscale.tiers.db.map_store import MapStore

ROWS_WEIGHT = 1.0
TRAFFIC_WEIGHT = 1.0
SHARD_WEIGHT = 0.25
TOLERANCE = 0.05  # a cluster within 5% of the even load is even
MAX_MOVES = 32
INNER_PENALTY = 0.02  # prefer taking a range's end to splitting it in three
EVENLY = "the load is spread evenly already"


@dataclass(frozen=True)
class Move:
    first: int
    last: int
    source: str
    target: str
    rows: int
    traffic: int
    share: float  # of the whole load

    @property
    def shards(self) -> str:
        return f"{self.first}-{self.last}" if self.first != self.last else str(self.first)

    def describe(self) -> str:
        return (
            f"move shards {self.shards} ({self.last - self.first + 1} shards, "
            f"{self.rows:,} rows, {self.traffic:,} recent reads+writes, "
            f"{self.share * 100:.1f}% of the load) from {self.source} to {self.target}"
        )


def shard_loads(logical: int, stats: ShardStats) -> list[float]:
    """Each logical shard's share of the load (the shares add up to the weights used)."""
    rows, traffic = sum(stats.rows.values()), sum(stats.traffic.values())
    loads = [SHARD_WEIGHT / logical] * logical
    for shard, n in stats.rows.items():
        if rows and 0 <= shard < logical:
            loads[shard] += ROWS_WEIGHT * n / rows
    for shard, n in stats.traffic.items():
        if traffic and 0 <= shard < logical:
            loads[shard] += TRAFFIC_WEIGHT * n / traffic
    return loads


def plan_rebalance(map: ShardMap, stats: ShardStats, clusters: list[str]) -> list[Move]:
    """Moves, to run in order, after which each of ``clusters`` carries about an even
    share of the load and no other cluster holds a shard."""
    if not clusters:
        raise ValueError("a rebalance needs at least one cluster")
    logical = map.logical
    loads = shard_loads(logical, stats)
    owner = [r.cluster for r in map.ranges for _ in range(r.size)]
    total = sum(loads)
    even = total / len(clusters)
    carried = {name: 0.0 for name in {*clusters, *owner}}
    for shard, name in enumerate(owner):
        carried[name] += loads[shard]
    moves: list[Move] = []

    def move(first: int, last: int, target: str) -> None:
        source = owner[first]
        weight = sum(loads[first : last + 1])
        moves.append(
            Move(
                first,
                last,
                source,
                target,
                sum(stats.rows.get(s, 0) for s in range(first, last + 1)),
                sum(stats.traffic.get(s, 0) for s in range(first, last + 1)),
                weight / total,
            )
        )
        for s in range(first, last + 1):
            owner[s] = target
        carried[source] -= weight
        carried[target] += weight

    for _ in range(MAX_MOVES):
        receiver = min(clusters, key=lambda c: (carried[c], clusters.index(c)))
        draining = [c for c in dict.fromkeys(owner) if c not in clusters]
        if draining:
            donor = draining[0]
            wanted = max(even - carried[receiver], 0.0)
            runs = _runs(owner, donor)
            if wanted <= 0 or len(clusters) == 1:
                first, last = runs[0]  # everything must go: a whole range at a time
            else:
                first, last = _window(runs, loads, wanted)
            move(first, last, receiver)
            continue
        donor = max(clusters, key=lambda c: (carried[c], -clusters.index(c)))
        if donor == receiver or carried[donor] <= even * (1 + TOLERANCE):
            break
        wanted = min(carried[donor] - even, even - carried[receiver])
        first, last = _window(_runs(owner, donor), loads, wanted)
        weight = sum(loads[first : last + 1])
        before = abs(carried[donor] - even) + abs(carried[receiver] - even)
        after = abs(carried[donor] - weight - even) + abs(carried[receiver] + weight - even)
        if after >= before - total * 1e-9:
            break  # no range of the donor's makes it better (one shard too heavy, say)
        move(first, last, receiver)
    for first, last in (
        run for c in dict.fromkeys(owner) if c not in clusters for run in _runs(owner, c)
    ):  # (more ranges to drain than moves allowed: the rest whole, to the lightest)
        move(first, last, min(clusters, key=lambda c: carried[c]))
    return moves


def _runs(owner: list[str], cluster: str) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for shard, name in enumerate(owner):
        if name != cluster:
            continue
        if runs and runs[-1][1] == shard - 1:
            runs[-1] = (runs[-1][0], shard)
        else:
            runs.append((shard, shard))
    return runs


def _window(runs: list[tuple[int, int]], loads: list[float], wanted: float) -> tuple[int, int]:
    """The contiguous range within one run whose load is closest to ``wanted``."""
    best: tuple[float, int, int] | None = None
    for a, b in runs:
        prefix = [0.0]
        for s in range(a, b + 1):
            prefix.append(prefix[-1] + loads[s])
        for i in range(b - a + 1):
            goal = prefix[i] + wanted
            k = bisect.bisect_left(prefix, goal, lo=i + 1)
            for j in (k - 1, k):  # the window i..j-1 (run offsets), either side of the goal
                if not i < j <= b - a + 1:
                    continue
                miss = abs(prefix[j] - prefix[i] - wanted)
                if i > 0 and j < b - a + 1:
                    miss += INNER_PENALTY * wanted
                if best is None or miss < best[0]:
                    best = (miss, a + i, a + j - 1)
    assert best is not None, "a donor holds at least one shard"
    return best[1], best[2]


@dataclass
class Rebalance:
    plan: list[Move]
    reports: list[MoveReport] = field(default_factory=list)


async def rebalance(
    clusters: Mapping[str, Database],
    global_db: Database,
    store: MapStore,
    n: int,
    *,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
    fence_timeout: float = 1.5,
) -> Rebalance:
    names = list(clusters)
    if not 1 <= n <= len(names):
        raise MoveRefused(
            f"--clusters {n}: the layout has {len(names)} clusters ({', '.join(names)})"
        )
    status = await shard_status(clusters, global_db, store)
    if status.map is None:
        raise MoveRefused("no shard map is published yet: start the service once")
    if status.move is not None:
        raise MoveRefused(
            f"{status.move.describe()} is under way: finish it with `picscale shards move "
            "--resume` or roll it back with `--abort` first"
        )
    result = Rebalance(plan_rebalance(status.map, status.stats, names[:n]))
    say = progress or (lambda _line: None)
    if not result.plan:
        say(EVENLY)
        return result
    for i, planned in enumerate(result.plan, 1):
        say(f"[{i}/{len(result.plan)}] {planned.describe()}")
    if dry_run:
        say("dry run: nothing moved")
        return result
    mover = ShardMover(clusters, global_db, store, fence_timeout=fence_timeout, progress=say)
    for i, planned in enumerate(result.plan, 1):
        say(f"[{i}/{len(result.plan)}] moving shards {planned.shards} to {planned.target}")
        result.reports.append(await mover.move(planned.first, planned.last, planned.target))
    return result
