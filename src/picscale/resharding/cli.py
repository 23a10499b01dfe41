"""``picscale shards``: status, move, rebalance.

The clusters, the global database and the map store come from the settings through
``picscale.tiers.db.shards.open_sharding`` (an async context manager yielding
``(clusters, global_db, store)``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from picscale.resharding.mover import MoveError, ShardMover
from picscale.settings import Settings, SettingsError, load_settings
from picscale.tiers.db.database import Database
from picscale.tiers.db.shard_map import ShardMapError, parse_shards

if TYPE_CHECKING:
    from picscale.tiers.db.map_store import MapStore

T = TypeVar("T")
Sharding = tuple[dict[str, Database], Database, "MapStore"]
Action = Callable[[dict[str, Database], Database, "MapStore"], Awaitable[T]]


def _open_sharding(settings: Settings) -> AbstractAsyncContextManager[Sharding]:
    from picscale.tiers.db.shards import open_sharding

    return open_sharding(settings)


def _run(data_dir: Path | None, action: Action[T]) -> T:
    from picscale.services import check_tier_urls
    from picscale.tiers.db.migrate import DatabaseMissing, require_database

    try:
        settings = load_settings(data_dir=data_dir)
        check_tier_urls(settings)  # a mistake is one line, before anything is opened
        require_database(settings)
    except (SettingsError, DatabaseMissing) as exc:
        raise click.ClickException(str(exc)) from None

    async def main() -> T:
        async with _open_sharding(settings) as (clusters, global_db, store):
            return await action(clusters, global_db, store)

    try:
        return asyncio.run(main())
    except (MoveError, ShardMapError) as exc:
        raise click.ClickException(str(exc)) from None


def _say(line: str) -> None:
    click.echo(line)


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the embedded tiers keep their state [env PICSCALE_DATA_DIR].",
)


@click.group()
def shards() -> None:
    """The shard map: where logical shards live, moving them, spreading the load."""


@shards.command()
@data_dir_option
def status(data_dir: Path | None) -> None:
    """The map, rows and bytes per cluster, the hottest shards, the move under way."""
    from picscale.resharding.status import format_status, shard_status

    async def show(clusters: dict[str, Database], global_db: Database, store: Any) -> str:
        return format_status(await shard_status(clusters, global_db, store))

    click.echo(_run(data_dir, show))


def _unknown(target: str, clusters: dict[str, Database]) -> None:
    if target not in clusters:
        raise click.ClickException(
            f"no cluster named {target!r}: the layout has {', '.join(clusters)}"
        )


@shards.command()
@click.argument("shard_range", metavar="SHARDS", required=False)
@click.option("--to", "target", metavar="CLUSTER", help="The cluster to move the shards to.")
@click.option("--resume", is_flag=True, help="Continue the move under way.")
@click.option("--abort", is_flag=True, help="Roll back the move under way (before its flip).")
@click.option(
    "--fence-timeout",
    type=click.FloatRange(0.05),
    default=1.5,
    show_default=True,
    help="Seconds the writes in flight may take once the fence is up.",
)
@data_dir_option
def move(
    shard_range: str | None,
    target: str | None,
    resume: bool,
    abort: bool,
    fence_timeout: float,
    data_dir: Path | None,
) -> None:
    """Move logical SHARDS (12 or 4096-8191) to CLUSTER while the service runs.

    PostgreSQL clusters only (logical replication). Writes to the moving shards pause
    for a moment at the switch; reads never do. A move that stopped half-way keeps the
    map on its source: --resume finishes it, --abort rolls it back.
    """
    if resume and abort:
        raise click.UsageError("--resume and --abort exclude each other")
    if (resume or abort) and (shard_range or target):
        raise click.UsageError("--resume and --abort act on the move under way: no SHARDS, no --to")
    first = last = 0
    if not (resume or abort):
        if not shard_range:
            raise click.UsageError("SHARDS is missing (a logical shard or a range like 0-511)")
        if not target:
            raise click.UsageError("--to CLUSTER is missing")
        try:
            first, last = parse_shards(shard_range)
        except ShardMapError as exc:
            raise click.BadParameter(str(exc), param_hint="SHARDS") from None

    async def act(clusters: dict[str, Database], global_db: Database, store: Any) -> None:
        mover = ShardMover(clusters, global_db, store, fence_timeout=fence_timeout, progress=_say)
        if abort:
            await mover.abort()
        elif resume:
            await mover.resume()
        else:
            assert target is not None
            _unknown(target, clusters)
            await mover.move(first, last, target)

    _run(data_dir, act)


@shards.command()
@click.option(
    "--clusters", "n", type=click.IntRange(1), required=True, help="Spread over the first N."
)
@click.option("--dry-run", is_flag=True, help="Print the plan, move nothing.")
@data_dir_option
def rebalance(n: int, dry_run: bool, data_dir: Path | None) -> None:
    """Plan and run moves, one at a time, that spread rows and recent traffic evenly over
    the first N clusters of the layout (the others are drained)."""
    from picscale.resharding.rebalance import rebalance as run_rebalance

    async def act(clusters: dict[str, Database], global_db: Database, store: Any) -> None:
        await run_rebalance(clusters, global_db, store, n, dry_run=dry_run, progress=_say)

    _run(data_dir, act)
