"""Typed settings, one section per tier, read from ``PICSCALE_*`` environment variables.

Every tier is chosen by the scheme of one URL. The defaults are the embedded backends,
all kept under one data directory, so that ``picscale serve`` needs nothing installed.

Each field names its environment variable (``variable("CACHE_URL", ...)`` is read from
``PICSCALE_CACHE_URL``); overrides given in code or on the command line use the same
name in lower case (``load_settings(cache_url="redis://...")``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "PICSCALE_"
MB = 1024 * 1024


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable to fix."""


def variable(name: str, default: Any) -> Any:
    """A field read from ``PICSCALE_<name>``."""
    return field(default=default, metadata={"env": name})


@dataclass(frozen=True, slots=True)
class WebSettings:
    host: str = variable("HOST", "127.0.0.1")
    port: int = variable("PORT", 8000)
    workers: int = variable("WORKERS", 1)  # granian processes
    max_json_bytes: int = variable("MAX_JSON_BYTES", 64 * 1024)


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = variable("DATABASE_URL", "")  # sqlite:///path | postgresql://... ('' embedded)
    replica_urls: str = variable("DATABASE_REPLICA_URLS", "")  # comma-separated postgresql:// URLs
    patroni_url: str = variable("DATABASE_PATRONI_URL", "")  # Patroni REST API(s): replicas found
    pool_size: int = variable("DB_POOL_SIZE", 10)
    pool_timeout_seconds: float = variable("DB_POOL_TIMEOUT_SECONDS", 10.0)
    statement_timeout_seconds: float = variable("DB_STATEMENT_TIMEOUT_SECONDS", 10.0)
    # writes wait this long for a new primary
    failover_wait_seconds: float = variable("DB_FAILOVER_WAIT_SECONDS", 20.0)
    # replicas: left out when further behind than this; a user's reads stay on caught-up
    # nodes for ``sticky_seconds`` after the user wrote
    replica_max_lag_seconds: float = variable("REPLICA_MAX_LAG_SECONDS", 60.0)
    replica_max_lag_bytes: int = variable("REPLICA_MAX_LAG_BYTES", 8 * MB)
    sticky_seconds: int = variable("STICKY_SECONDS", 30)


@dataclass(frozen=True, slots=True)
class ShardSettings:
    # fixed for the life of the data: every id carries its logical shard
    logical: int = variable("LOGICAL_SHARDS", 8192)


@dataclass(frozen=True, slots=True)
class CacheSettings:
    url: str = variable("CACHE_URL", "memory://")  # memory:// | redis://host:port/db | none://
    max_entries: int = variable("CACHE_MAX_ENTRIES", 50_000)
    ttl_seconds: int = variable("CACHE_TTL_SECONDS", 300)
    timeout_seconds: float = variable("CACHE_TIMEOUT_SECONDS", 0.5)  # a slower Redis call is a miss
    # hot keys: read this often in a second by one process, kept in it for near_ttl
    # (Redis only; dropped at once through pub/sub when invalidated; 0 turns it off)
    hot_reads_per_second: int = variable("CACHE_HOT_READS_PER_SECOND", 50)
    near_ttl_seconds: float = variable("CACHE_NEAR_TTL_SECONDS", 1.0)
    near_max_entries: int = variable("CACHE_NEAR_MAX_ENTRIES", 1000)


@dataclass(frozen=True, slots=True)
class SessionSettings:
    url: str = variable("SESSION_URL", "database://")  # sessions table | redis://host:port/db
    ttl_seconds: int = variable("SESSION_TTL_SECONDS", 14 * 24 * 3600)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    url: str = variable("QUEUE_URL", "lease://")  # lease table in the database | amqp://...
    lease_seconds: float = variable("JOB_LEASE_SECONDS", 30.0)
    max_attempts: int = variable("JOB_MAX_ATTEMPTS", 5)  # failures a job may report before dead
    max_crashes: int = variable("JOB_MAX_CRASHES", 10)  # worker deaths under it before dead
    poll_seconds: float = variable("JOB_POLL_SECONDS", 1.0)  # same-host workers are woken at once


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    processes: int = variable("JOB_WORKERS", 1)  # started by `picscale serve`
    concurrency: int = variable("JOB_CONCURRENCY", 2)  # jobs one worker process runs at once
    time_limit_seconds: float = variable("JOB_TIME_LIMIT_SECONDS", 120.0)
    # threads per image pipeline: processes give the parallelism
    vips_threads: int = variable("VIPS_THREADS", 1)
    # picscale worker --autoscale MIN:MAX
    autoscale_jobs_per_worker: int = variable("AUTOSCALE_JOBS_PER_WORKER", 10)
    # readings in a row that want more before growing
    autoscale_up_samples: int = variable("AUTOSCALE_UP_SAMPLES", 2)
    autoscale_cooldown_seconds: float = variable("AUTOSCALE_COOLDOWN_SECONDS", 30.0)
    autoscale_interval_seconds: float = variable("AUTOSCALE_INTERVAL_SECONDS", 1.0)


@dataclass(frozen=True, slots=True)
class StorageSettings:
    url: str = variable("STORAGE_URL", "")  # file:///path (default <data>/media) | s3://bucket?...


@dataclass(frozen=True, slots=True)
class CdnSettings:
    url: str = variable("CDN_URL", "")  # media and static URLs point here while the edge is healthy
    purge_url: str = variable("CDN_PURGE_URL", "")  # where PURGE requests go (default: url)
    health_seconds: float = variable("CDN_HEALTH_SECONDS", 2.0)  # how often each process checks
    shared_seconds: int = variable("CDN_SHARED_SECONDS", 10)  # s-maxage of reads anyone may see


@dataclass(frozen=True, slots=True)
class PhotoSettings:
    max_upload_bytes: int = variable("MAX_UPLOAD_BYTES", 20 * MB)
    max_pixels: int = variable("MAX_PIXELS", 50_000_000)


@dataclass(frozen=True, slots=True)
class FeedSettings:
    page_size: int = variable("FEED_PAGE_SIZE", 20)
    max_page_size: int = variable("MAX_PAGE_SIZE", 100)
    cache_seconds: float = variable("FEED_CACHE_SECONDS", 15.0)  # a first page of ids (README)


@dataclass(frozen=True, slots=True)
class LoginSettings:
    failures_per_account: int = variable("LOGIN_FAILURES_PER_ACCOUNT", 5)
    failures_per_address: int = variable("LOGIN_FAILURES_PER_ADDRESS", 20)
    window_seconds: int = variable("LOGIN_WINDOW_SECONDS", 900)


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = variable("DATA_DIR", Path("data"))  # noqa: RUF009 - a Path is immutable
    env: str = variable("ENV", "development")  # "production" refuses insecure defaults
    secret_key: str = variable("SECRET_KEY", "")
    log_level: str = variable("LOG_LEVEL", "info")

    web: WebSettings = field(default_factory=WebSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    shards: ShardSettings = field(default_factory=ShardSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    cdn: CdnSettings = field(default_factory=CdnSettings)
    photos: PhotoSettings = field(default_factory=PhotoSettings)
    feed: FeedSettings = field(default_factory=FeedSettings)
    login: LoginSettings = field(default_factory=LoginSettings)

    @property
    def resolved_database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.data_dir / 'picscale.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage.url or f"file://{(self.data_dir / 'media').resolve()}"

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def with_overrides(self, **changes: Any) -> Settings:
        """These settings with some changed, named as their variables in lower case
        (``job_concurrency=4``); None leaves a setting as it is."""
        wanted = {k: v for k, v in changes.items() if v is not None}
        unknown = wanted.keys() - {name.lower() for name, *_ in _variables()}
        if unknown:
            raise SettingsError(f"no such setting: {', '.join(sorted(unknown))}")
        return _assigned(self, {name: value for name, value in wanted.items()})

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        return {
            ENV_PREFIX + name: str(getattr(getattr(self, section) if section else self, attr))
            for name, section, attr, _ in _variables()
        }


def _variables() -> Iterator[tuple[str, str | None, str, Any]]:
    """Every setting: (variable name, section or None, field, default)."""
    for top in fields(Settings):
        if "env" in top.metadata:
            yield top.metadata["env"], None, top.name, top.default
            continue
        section = getattr(Settings(), top.name)
        for f in fields(section):
            yield f.metadata["env"], top.name, f.name, getattr(section, f.name)


def _assigned(settings: Settings, values: Mapping[str, Any]) -> Settings:
    """``settings`` with the variables in ``values`` (lower-case names) set."""
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for name, section, attr, _ in _variables():
        if name.lower() not in values:
            continue
        if section is None:
            top[attr] = values[name.lower()]
        else:
            sections.setdefault(section, {})[attr] = values[name.lower()]
    for section, changed in sections.items():
        top[section] = replace(getattr(settings, section), **changed)
    return replace(settings, **top)


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
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r} is not a valid {kind}") from None
    return raw


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment, then apply explicit overrides (CLI flags)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, _, _, default in _variables():
        raw = environ.get(ENV_PREFIX + name)
        if raw is not None and raw != "":
            values[name.lower()] = _coerce(name, raw, default)
    settings = _assigned(Settings(), values).with_overrides(**overrides)
    return _validated(settings)


def _validated(settings: Settings) -> Settings:
    if settings.web.workers < 1 or settings.worker.processes < 0 or settings.worker.concurrency < 1:
        raise SettingsError(
            "PICSCALE_WORKERS must be >= 1, PICSCALE_JOB_WORKERS >= 0, "
            "PICSCALE_JOB_CONCURRENCY >= 1 (web workers, job workers, job concurrency)"
        )
    if not 1 <= settings.shards.logical <= 8192:
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
