"""Typed settings, one section per tier, read from ``PICSCALE_*`` environment variables.

Every tier is chosen by the scheme of one URL. The defaults are the embedded backends,
all kept under one data directory, so that ``picscale serve`` needs nothing installed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "PICSCALE_"
MB = 1024 * 1024


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable to fix."""


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("data")
    env: str = "development"  # "production" refuses insecure defaults
    secret_key: str = ""

    # tiers: each chosen by the scheme of one URL; empty means the embedded default
    database_url: str = ""  # sqlite:///path | postgresql://...
    database_replica_urls: str = ""  # comma-separated postgresql:// URLs of replicas
    database_patroni_url: str = ""  # Patroni REST API(s): replicas discovered from it
    cache_url: str = "memory://"  # memory:// | redis://host:port/db | none://
    session_url: str = "database://"  # sessions table in the database | redis://host:port/db
    queue_url: str = "lease://"  # lease table in the database
    storage_url: str = ""  # file:///path (default: <data_dir>/media) or s3://bucket?endpoint=…
    cdn_url: str = ""  # media and static URLs point here while the edge is healthy
    cdn_purge_url: str = ""  # where PURGE requests go (default: cdn_url)
    cdn_health_seconds: float = 2.0  # how often each process checks the edge
    cdn_shared_seconds: int = 10  # s-maxage of reads anyone may see (anonymous visitors)

    # web
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    job_workers: int = 1
    log_level: str = "info"

    # domain limits
    max_upload_bytes: int = 20 * MB
    max_pixels: int = 50_000_000
    max_json_bytes: int = 64 * 1024
    feed_page_size: int = 20
    max_page_size: int = 100

    # sessions and login protection
    session_ttl_seconds: int = 14 * 24 * 3600
    login_failures_per_account: int = 5
    login_failures_per_address: int = 20
    login_window_seconds: int = 900

    # jobs
    job_concurrency: int = 2
    job_lease_seconds: float = 30.0
    job_max_attempts: int = 5  # failures a job may report before it is dead
    job_max_crashes: int = 10  # worker deaths while running it before it is dead
    job_poll_seconds: float = 1.0  # same-host workers are woken at once by a queued job
    job_time_limit_seconds: float = 120.0
    vips_threads: int = 1  # threads per image pipeline; processes give the parallelism
    # picscale worker --autoscale MIN:MAX
    autoscale_jobs_per_worker: int = 10  # queued jobs one worker process is meant to face
    autoscale_up_samples: int = 2  # readings in a row that want more before growing
    autoscale_cooldown_seconds: float = 30.0  # wanting fewer this long before shrinking
    autoscale_interval_seconds: float = 1.0

    # cache
    cache_max_entries: int = 50_000
    cache_ttl_seconds: int = 300
    cache_timeout_seconds: float = 0.5  # a Redis call slower than this is a miss
    feed_cache_seconds: float = 15.0  # a feed's first page of ids (see the README)
    # hot keys: read this often in a second by one process, kept in it for near_ttl
    # (Redis only; dropped at once through pub/sub when invalidated; 0 turns it off)
    cache_hot_reads_per_second: int = 50
    cache_near_ttl_seconds: float = 1.0
    cache_near_max_entries: int = 1000

    # ids: the logical shard count is fixed for the life of the data (ids carry it)
    logical_shards: int = 8192

    # database pools
    db_pool_size: int = 10
    db_pool_timeout_seconds: float = 10.0
    db_statement_timeout_seconds: float = 10.0
    db_failover_wait_seconds: float = 20.0  # writes wait this long for a new primary

    # replicas: left out when further behind than this; a user's reads stay on caught-up
    # nodes for this long after the user wrote
    replica_max_lag_seconds: float = 60.0
    replica_max_lag_bytes: int = 8 * MB
    sticky_seconds: int = 30

    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'picscale.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'media').resolve()}"

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env: dict[str, str] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            env[ENV_PREFIX + f.name.upper()] = str(getattr(self, f.name))
        return env


def _coerce(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError:
        kind = type(default).__name__
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment, then apply explicit overrides (CLI flags)."""
    environ = os.environ if environ is None else environ
    base = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name == "extra":
            continue
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw != "":
            values[f.name] = _coerce(f.name, raw, getattr(base, f.name))
    settings = replace(base, **values).with_overrides(**overrides)
    return _validated(settings)


def _validated(settings: Settings) -> Settings:
    if settings.workers < 1 or settings.job_workers < 0 or settings.job_concurrency < 1:
        raise SettingsError("workers must be >= 1, job_workers >= 0, job_concurrency >= 1")
    if not 1 <= settings.logical_shards <= 8192:
        raise SettingsError(f"{ENV_PREFIX}LOGICAL_SHARDS must be within 1..8192 (13 bits)")
    if settings.is_production and len(settings.secret_key) < 32:
        raise SettingsError(
            f"{ENV_PREFIX}SECRET_KEY must be set to at least 32 random characters in production"
        )
    return settings


def secret_key_for(settings: Settings) -> str:
    """The configured secret, or one generated once and kept in the data directory."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        # O_EXCL: when several processes start at once, the first writer wins
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key
