"""The ``picscale load`` command (added to the ``picscale`` group by picscale.cli)."""

from __future__ import annotations

import time
from pathlib import Path

import click


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    from picscale.load.runner import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _run_dir(lab_dir: Path) -> Path:
    """A new directory per run, named by the time it started."""
    base = lab_dir / "load" / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


@click.command("load")
@click.option(
    "--users", type=click.IntRange(1), default=20, show_default=True, help="Simulated members."
)
@click.option(
    "--spawn-rate",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Members started per second.",
)
@click.option(
    "--duration",
    default="30s",
    callback=_duration,
    show_default=True,
    help="How long the load runs: seconds, or 30s, 2m, 1m30s.",
)
@click.option(
    "--target",
    default=None,
    metavar="URL",
    help="The service's base URL [default: the front door of the lab up in --dir, "
    "else http://127.0.0.1:8000].",
)
@click.option(
    "--dir",
    "lab_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".lab"),
    show_default=True,
    help="The lab's directory; each run's files go to DIR/load/<time>/.",
)
@click.option(
    "--celebrities",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Accounts seeded to get most of the reads.",
)
def load(
    users: int,
    spawn_rate: float,
    duration: float,
    target: str | None,
    lab_dir: Path,
    celebrities: int,
) -> None:
    """Simulated members sign up, read (Zipf-popular photos and profiles), upload, edit
    and follow; prints Locust's figures per route, and where its files are."""
    from picscale.load.runner import (
        LoadError,
        LoadOptions,
        default_target,
        format_summary,
        run_load,
    )

    options = LoadOptions(
        target=target or default_target(lab_dir),
        users=users,
        spawn_rate=spawn_rate,
        duration=duration,
        out_dir=_run_dir(lab_dir),
        celebrities=celebrities,
    )
    try:
        summary = run_load(options, lambda line: click.echo(line, err=True))
    except LoadError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_summary(summary))
    click.echo("")
    click.echo(f"statistics: {summary.csv_prefix}_stats.csv (and _stats_history, _failures)")
    click.echo(f"report:     {summary.html}")
    click.echo(f"writes:     {summary.writes}")
