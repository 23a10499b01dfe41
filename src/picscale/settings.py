"""Typed settings, one section per tier, read from ``PICSCALE_*`` environment variables.

Every tier is chosen by the scheme of one URL. The defaults are the embedded backends,
all kept under one data directory, so that ``picscale serve`` needs nothing installed.

Each field names its environment variable (``variable("CACHE_URL", ...)`` is read from
``PICSCALE_CACHE_URL``); overrides given in code or on the command line use the same
name in lower case (``load_settings(cache_url="redis://...")``).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

ENV_PREFIX = "PICSCALE_"
MB = 1024 * 1024


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable to fix."""


def checked_url(variable: str, url: str, schemes: Collection[str], forms: str) -> SplitResult:
    """``url`` split, when its scheme is one of ``schemes`` and every port in it a number;
    else a SettingsError naming ``variable`` and the ``forms`` it takes. The message never
    quotes the URL: it may hold a password."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise SettingsError(f"{variable} is not a URL: use {forms}") from None
    if parts.scheme not in schemes:
        what = f"scheme {parts.scheme!r}" if parts.scheme else "a URL without a scheme"
        raise SettingsError(f"{variable}: {what} is not supported: use {forms}")
    # libpq, Sentinel and etcd take several hosts: host:port,host:port
    for host in parts.netloc.rpartition("@")[2].split(","):
        port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host else ""
        if port and not (port.isdecimal() and port.isascii() and 0 < int(port) < 65536):
            raise SettingsError(f"{variable}: a port is not a number from 1 to 65535: use {forms}")
    return parts


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
    # sqlite:///path | postgresql://... ('' embedded), or a shard layout of named clusters:
    # "c1=postgresql://...;c2=postgresql://..." (the first holds the global tables)
    url: str = variable("DATABASE_URL", "")
    # comma-separated postgresql:// URLs; with several clusters "c1=url,url;c2=url"
    replica_urls: str = variable("DATABASE_REPLICA_URLS", "")
    # Patroni REST API(s), replicas found there; per cluster as above
    patroni_url: str = variable("DATABASE_PATRONI_URL", "")
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
    # where the shard map lives: '' (a table on the first cluster) | etcd://host:port/key
    map_url: str = variable("SHARD_MAP_URL", "")
    # hot counters (a celebrity's follower count) are split over this many rows
    counter_slots: int = variable("COUNTER_SLOTS", 16)


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
    # hybrid fan-out: authors with more followers than this are merged in at read time
    fanout_max_followers: int = variable("FEED_FANOUT_MAX_FOLLOWERS", 10_000)
    fanout_batch: int = variable("FEED_FANOUT_BATCH", 1000)  # followers per fan-out job
    timeline_max: int = variable("FEED_TIMELINE_MAX", 800)  # photo ids kept per timeline
    # a timeline not read for this long is cold: fan-out skips it, a read rebuilds it
    timeline_ttl_seconds: int = variable("FEED_TIMELINE_TTL_SECONDS", 3 * 24 * 3600)


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

    def database_layout(self) -> dict[str, str]:
        """The clusters of the shard layout, by name, in order (one, ``c1``, for a
        plain URL); the first holds the global tables (usernames, the map)."""
        return parse_layout(self.resolved_database_url, "PICSCALE_DATABASE_URL")

    def cluster_setting(self, value: str, cluster: str, variable_name: str) -> str:
        """A per-cluster setting's value for ``cluster`` (a plain value is the first
        cluster's when the layout has one cluster)."""
        if not value.strip():
            return ""
        if "=" not in value.split(",")[0].split("://")[0]:
            names = list(self.database_layout())
            if len(names) > 1:
                raise SettingsError(
                    f"{variable_name} must name its cluster with several clusters "
                    f"(e.g. {names[0]}=...;{names[1]}=...)"
                )
            return value if cluster == names[0] else ""
        return parse_layout(value, variable_name).get(cluster, "")

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


def parse_layout(value: str, variable_name: str) -> dict[str, str]:
    """``"c1=url;c2=url"`` as {name: url}; a lone URL is the cluster ``c1``."""
    value = value.strip()
    head = value.split(";")[0]
    if "=" not in head.split("://")[0]:
        return {"c1": value}
    out: dict[str, str] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        name, sep, url = part.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not url.strip():
            raise SettingsError(f"{variable_name}: {part!r} is not name=URL (write c1=...;c2=...)")
        if name in out:
            raise SettingsError(f"{variable_name}: cluster {name!r} is named twice")
        out[name] = url.strip()
    if not out:
        raise SettingsError(f"{variable_name} names no cluster")
    return out


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
