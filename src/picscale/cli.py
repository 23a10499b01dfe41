"""The ``picscale`` command: serve, worker, jobs, migrate, media, version."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click

from picscale import __version__
from picscale.settings import Settings, SettingsError, load_settings

T = TypeVar("T")


def _settings(*, database: bool = False, **overrides: Any) -> Settings:
    """The settings, every tier URL among them checked before anything starts; with
    ``database``, the database must exist (``serve`` and ``migrate`` create it). A
    mistake stops the command with one line saying what to fix."""
    from picscale.services import check_tier_urls
    from picscale.tiers.db.migrate import DatabaseMissing, require_database

    try:
        settings = load_settings(**overrides)
        check_tier_urls(settings)
        if database:
            require_database(settings)
    except (SettingsError, DatabaseMissing) as exc:
        raise click.ClickException(str(exc)) from None
    return settings


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the embedded tiers keep their state [env PICSCALE_DATA_DIR; default ./data].",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="picscale")
def main() -> None:
    """Picscale: a photo-sharing service built along the scaling path.

    Every setting is read from PICSCALE_* environment variables (see the README);
    command-line options override them.
    """


@main.command()
@click.option("--host", default=None, help="Address to listen on [default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [default 8000].")
@click.option("--workers", type=click.IntRange(1), default=None, help="Web processes [1].")
@click.option(
    "--job-workers", type=click.IntRange(0), default=None, help="Job worker processes [1]."
)
@data_dir_option
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    job_workers: int | None,
    data_dir: Path | None,
) -> None:
    """Migrate the database, then run the web server (granian) and the job workers."""
    settings = _settings(
        host=host, port=port, workers=workers, job_workers=job_workers, data_dir=data_dir
    )
    from picscale.observability.logging import configure_logging
    from picscale.serve import PortUnavailable, Supervisor, reserve_port
    from picscale.tiers.db.migrate import upgrade

    def say(line: str) -> None:
        click.echo(line, err=True)

    try:
        held = reserve_port(settings.web.host, settings.web.port)  # first: ours, or a clear no
    except PortUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, process="serve")
    say(f"picscale {__version__}: preparing {settings.data_dir.resolve()}")
    _migrated(lambda: upgrade(settings))
    sys.exit(Supervisor(settings, say, held).run())


def _range(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    low, sep, high = value.partition(":")
    try:
        minimum, maximum = int(low), int(high if sep else low)
    except ValueError:
        minimum, maximum = 0, -1
    if not 1 <= minimum <= maximum:
        raise click.BadParameter(f"{value!r}: give MIN:MAX with 1 <= MIN <= MAX, as in 1:4")
    return minimum, maximum


@main.command()
@data_dir_option
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=None,
    help="Jobs run at once by each worker process [env PICSCALE_JOB_CONCURRENCY; 2].",
)
@click.option(
    "--autoscale",
    metavar="MIN:MAX",
    default=None,
    help="Run MIN to MAX worker processes, scaled by queue depth.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve the worker's metrics (all its processes) on 127.0.0.1:PORT/metrics.",
)
def worker(
    data_dir: Path | None,
    concurrency: int | None,
    autoscale: str | None,
    metrics_port: int | None,
) -> None:
    """Run a job worker: takes jobs from the queue until SIGTERM (in-flight jobs finish
    or go back to the queue)."""
    from picscale.worker.metrics_server import shared_metrics_dir

    bounds = _range(autoscale)
    overrides: dict[str, Any] = {"data_dir": data_dir}
    if concurrency is not None:
        overrides["job_concurrency"] = concurrency
    settings = _settings(database=True, **overrides)
    with contextlib.nullcontext() if metrics_port is None else shared_metrics_dir():
        if bounds is not None:
            from picscale.worker.autoscale import run_autoscaler

            asyncio.run(run_autoscaler(settings, *bounds, metrics_port))
            return
        from picscale.worker import run_worker

        asyncio.run(run_worker(settings, metrics_port=metrics_port))


@main.command()
@data_dir_option
@click.option("--revision", default="head", show_default=True, help="Upgrade to this revision.")
@click.option("--downgrade", "down_to", default=None, help="Downgrade to this revision instead.")
def migrate(data_dir: Path | None, revision: str, down_to: str | None) -> None:
    """Apply the database migrations (Alembic)."""
    from picscale.tiers.db.migrate import downgrade, upgrade

    settings = _settings(data_dir=data_dir)
    if down_to is not None:
        downgrade(settings, down_to)
        click.echo(f"downgraded to {down_to}")
    else:
        _migrated(lambda: upgrade(settings, revision))
        click.echo(f"database at {revision}")


def _migrated(run: Callable[[], None]) -> None:
    from picscale.tiers.db.migrate import MigrationRefused

    try:
        run()
    except MigrationRefused as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def jobs() -> None:
    """Inspect the job queue and requeue dead jobs."""


@jobs.group()
def dead() -> None:
    """Jobs that ran out of attempts (the dead-letter queue)."""


def _with_queue(data_dir: Path | None, action: Callable[[Any], Awaitable[T]]) -> T:
    from picscale.services import build_services

    settings = _settings(database=True, data_dir=data_dir)

    async def run() -> T:
        services = build_services(settings)
        try:
            await services.start(mint_ids=False)
            return await action(services.queue)
        finally:
            await services.close()

    return asyncio.run(run())


@dead.command("list")
@data_dir_option
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
def dead_list(data_dir: Path | None, limit: int) -> None:
    """List dead jobs, most recent first: id, kind, attempts, when, last error."""
    found = _with_queue(data_dir, lambda queue: queue.dead(limit))
    if not found:
        click.echo("no dead jobs")
        return
    click.echo(f"{'id':<20} {'kind':<16} {'attempts':>8}  {'failed at (UTC)':<19}  last error")
    for job in found:
        when = job.failed_at.strftime("%Y-%m-%d %H:%M:%S")
        error = (job.error or "").replace("\n", " ")[:100]
        click.echo(f"{job.id:<20} {job.kind:<16} {job.attempts:>8}  {when:<19}  {error}")


@dead.command("retry")
@data_dir_option
@click.argument("job_id", type=int, required=False)
@click.option("--all", "every", is_flag=True, help="Retry every dead job.")
def dead_retry(data_dir: Path | None, job_id: int | None, every: bool) -> None:
    """Queue a dead job (or --all of them) again, with fresh attempts."""
    if (job_id is None) == (not every):
        raise click.UsageError("give a JOB_ID or --all (not both)")
    count = _with_queue(data_dir, lambda queue: queue.retry_dead(job_id))
    if job_id is not None and count == 0:
        raise click.ClickException(f"job {job_id} is not dead (see `picscale jobs dead list`)")
    click.echo(f"queued {count} job(s) again")


@dead.command("purge")
@data_dir_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_purge(data_dir: Path | None, yes: bool) -> None:
    """Forget every dead job."""
    if not yes:
        click.confirm("Forget every dead job for good?", abort=True)
    count = _with_queue(data_dir, lambda queue: queue.purge_dead())
    click.echo(f"purged {count} dead job(s)")


@main.group()
def media() -> None:
    """Media storage: move it between stores."""


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # not reached


@media.command("migrate")
@data_dir_option
@click.option(
    "--to",
    "to_url",
    required=True,
    metavar="URL",
    help="Where to copy the media: s3://bucket?endpoint=http://host:9000&region=us-east-1.",
)
@click.option(
    "--from",
    "from_url",
    default=None,
    metavar="URL",
    help="Where the media are [the configured PICSCALE_STORAGE_URL; default file://<data>/media].",
)
@click.option(
    "--jobs", type=click.IntRange(1, 64), default=4, show_default=True, help="Copies at once."
)
def media_migrate(data_dir: Path | None, to_url: str, from_url: str | None, jobs: int) -> None:
    """Copy every media object to another store, verifying each copy's checksum.

    Objects already there with the same SHA-256 are skipped, so an interrupted run can be
    run again. Exits non-zero if any object could not be copied and verified. Point
    PICSCALE_STORAGE_URL at the new store once it succeeds.
    """
    from picscale.tiers.storage import open_media_store
    from picscale.tiers.storage.migrate import MigrationReport, Progress, migrate_media

    settings = _settings(data_dir=data_dir)
    source_url = from_url or settings.resolved_storage_url
    if source_url.rstrip("/") == to_url.rstrip("/"):
        raise click.UsageError("--from and --to name the same store")
    try:
        source = open_media_store(source_url, setting="--from")
        target = open_media_store(to_url, setting="--to")
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None

    def show(p: Progress) -> None:
        line = (
            f"[{p.done}/{p.total}] {p.outcome:<7} {p.key} ({_size(p.size)}); "
            f"{_size(p.bytes_done)} of {_size(p.bytes_total)}"
        )
        click.echo(line + (f": {p.detail}" if p.detail else ""), err=p.outcome == "failed")

    async def run() -> MigrationReport:
        try:
            try:
                await target.ping()
            except Exception as exc:
                raise click.ClickException(f"the destination is not usable: {exc}") from None
            return await migrate_media(source, target, progress=show, concurrency=jobs)
        finally:
            await source.close()
            await target.close()

    report = asyncio.run(run())
    click.echo(
        f"{report.total} object(s), {_size(report.total_bytes)}: "
        f"copied {report.copied} ({_size(report.copied_bytes)}), "
        f"already there {report.skipped} ({_size(report.skipped_bytes)}), "
        f"gone from the source meanwhile {report.gone}, failed {len(report.failed)}"
    )
    if report.failed:
        for key, detail in report.failed:
            click.echo(f"failed: {key}: {detail}", err=True)
        raise click.ClickException(
            f"{len(report.failed)} object(s) were not copied and verified; "
            "run the same command again to retry them"
        )


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


@main.group()
def edge() -> None:
    """The CDN edge (Varnish)."""


@edge.command("vcl")
@click.option(
    "--origin",
    default="127.0.0.1:8000",
    show_default=True,
    help="HOST:PORT of the origin (`picscale serve`, or the load balancer in front).",
)
@click.option(
    "--purger",
    "purgers",
    multiple=True,
    help="An address or network (10.0.0.0/8) allowed to PURGE [default: loopback].",
)
def edge_vcl(origin: str, purgers: tuple[str, ...]) -> None:
    """Print the Varnish configuration for an origin:
    `picscale edge vcl > picscale.vcl; varnishd -a :6081 -f $PWD/picscale.vcl`."""
    from picscale.tiers.edge.varnish import render_vcl

    host, _, port = origin.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter("use HOST:PORT, e.g. 127.0.0.1:8000", param_hint="--origin")
    vcl = render_vcl(host, int(port), purgers=purgers) if purgers else render_vcl(host, int(port))
    click.echo(vcl, nl=False)


# -- the lab ----------------------------------------------------------------------------

lab_dir_option = click.option(
    "--dir",
    "lab_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".lab"),
    show_default=True,
    help="Where the lab keeps all its state.",
)


def _lab_call(action: Callable[[], T]) -> T:
    from picscale.lab.engine import LabError
    from picscale.load.runner import LoadError

    try:
        return action()
    except (LabError, LoadError) as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def lab() -> None:
    """The real engines of each stage of the scaling path, on this machine."""


@lab.command("up")
@lab_dir_option
@click.option("--stage", type=click.IntRange(1), default=1, show_default=True)
def lab_up(lab_dir: Path, stage: int) -> None:
    """Bring a stage up (or resume it); ends when every component is healthy."""
    from picscale.lab import lab as labs

    started = _lab_call(lambda: labs.up(lab_dir, stage, lambda line: click.echo(line, err=True)))
    for name, url in labs.urls(started).items():
        click.echo(f"{name:<16} {url}")


@lab.command("status")
@lab_dir_option
def lab_status(lab_dir: Path) -> None:
    """A table of the lab's components."""
    from picscale.lab import lab as labs

    rows = _lab_call(lambda: labs.status(lab_dir))
    columns = ["component", "role", "address", "pid", "state", "health", "figure"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())


@lab.command("scale")
@lab_dir_option
@click.argument("specs", metavar="web=N workers=M", nargs=-1, required=True)
def lab_scale(lab_dir: Path, specs: tuple[str, ...]) -> None:
    """Grow or shrink the web tier behind HAProxy (without restarting it) or the workers."""
    from picscale.lab import lab as labs

    def say(line: str) -> None:
        click.echo(line, err=True)

    for spec in specs:
        tier, _, count = spec.partition("=")
        if tier not in ("web", "workers") or not count.isdigit():
            raise click.BadParameter("use web=N or workers=M, e.g. web=4", param_hint=spec)
        _lab_call(partial(labs.scale, lab_dir, tier, int(count), say))
        click.echo(f"{'web servers' if tier == 'web' else 'workers'}: {count}")


@lab.command("autoscale")
@lab_dir_option
@click.argument("spec", metavar="web=MIN:MAX")
@click.option("--for", "duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--target-ms", type=float, default=100.0, show_default=True, help="Mean latency.")
@click.option("--target-cpu", type=float, default=0.6, show_default=True, help="Of one core.")
@click.option(
    "--cooldown", type=float, default=30.0, show_default=True, help="Seconds before shrinking."
)
def lab_autoscale(
    lab_dir: Path,
    spec: str,
    duration: float | None,
    target_ms: float,
    target_cpu: float,
    cooldown: float,
) -> None:
    """Grow and shrink the web tier by latency and CPU (until Ctrl-C, or --for S)."""
    from picscale.lab.autoscale import autoscale_web

    tier, _, bounds = spec.partition("=")
    limits = _range(bounds) if tier == "web" else None
    if limits is None:
        raise click.BadParameter("use web=MIN:MAX, e.g. web=2:6", param_hint="web=MIN:MAX")

    def say(line: str) -> None:
        click.echo(line)

    with contextlib.suppress(KeyboardInterrupt):
        _lab_call(
            partial(
                autoscale_web,
                lab_dir,
                *limits,
                say,
                duration=duration,
                target_ms=target_ms,
                target_cpu=target_cpu,
                cooldown=cooldown,
            )
        )


@lab.command("kill")
@lab_dir_option
@click.argument("name")
def lab_kill(lab_dir: Path, name: str) -> None:
    """SIGKILL a component (it stays down until `lab start`)."""
    from picscale.lab import lab as labs

    pid = _lab_call(lambda: labs.kill(lab_dir, name))
    click.echo(f"killed {name} (pid {pid})")


@lab.command("start")
@lab_dir_option
@click.argument("name")
def lab_start(lab_dir: Path, name: str) -> None:
    """Start a component again; ends when it is healthy."""
    from picscale.lab import lab as labs

    _lab_call(lambda: labs.start(lab_dir, name))
    click.echo(f"{name} is healthy")


@lab.command("logs")
@lab_dir_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.argument("names", nargs=-1)
def lab_logs(lab_dir: Path, follow: bool, names: tuple[str, ...]) -> None:
    """Every component's lines (or those named) in one time-ordered stream."""
    from picscale.lab import lab as labs

    seen: dict[str, int] = {}
    for _, name, line in _lab_call(lambda: list(labs.log_lines(lab_dir, list(names)))):
        seen[name] = seen.get(name, 0) + 1
        click.echo(f"{name:<9} | {line}")
    while follow:
        time.sleep(0.5)  # following files as they grow
        counts: dict[str, int] = {}
        for _, name, line in labs.log_lines(lab_dir, list(names)):
            counts[name] = counts.get(name, 0) + 1
            if counts[name] > seen.get(name, 0):
                click.echo(f"{name:<9} | {line}")
        seen.update(counts)


@lab.command("down")
@lab_dir_option
def lab_down(lab_dir: Path) -> None:
    """Stop everything the lab started (by pid) and check that nothing is left."""
    from picscale.lab import lab as labs

    stopped = _lab_call(lambda: labs.down(lab_dir, lambda line: click.echo(line, err=True)))
    click.echo(f"stopped {len(stopped)} processes; none is left")


def _add_load_and_shards_commands() -> None:
    from picscale.load.cli import load  # click alone: neither Locust nor the app
    from picscale.resharding.cli import shards

    main.add_command(load)
    main.add_command(shards)


_add_load_and_shards_commands()


@main.command()
@lab_dir_option
@click.argument("name", metavar="NAME")
@click.option("--users", type=click.IntRange(1), default=10, show_default=True)
@click.option("--before", type=float, default=8.0, show_default=True, help="Seconds of load first.")
@click.option(
    "--down-for", type=float, default=10.0, show_default=True, help="Seconds the victim stays down."
)
@click.option(
    "--after", type=float, default=10.0, show_default=True, help="Seconds of load once it is back."
)
def drill(
    lab_dir: Path, name: str, users: int, before: float, down_for: float, after: float
) -> None:
    """Break a lab component under load and report what users felt. NAME: web-server,
    db-primary, db-replica, cache-master, worker, broker-restart or edge."""
    from picscale.lab.drills import format_report, run_drill

    def say(line: str) -> None:
        click.echo(line, err=True)

    report = _lab_call(
        partial(
            run_drill,
            lab_dir,
            name,
            say,
            users=users,
            before=before,
            down_for=down_for,
            after=after,
        )
    )
    click.echo(format_report(report))
    if not report.passed:
        sys.exit(1)
