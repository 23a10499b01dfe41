"""The databases of the settings: each cluster of the shard layout, its primary, and
replicas listed or found by Patroni; the router over them (``create_shards``)."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from picscale.observability.metrics import Metrics
from picscale.settings import Settings, SettingsError, checked_url
from picscale.tiers.db.database import Database
from picscale.tiers.db.engines import async_url, create_engines, observed, postgres_engine
from picscale.tiers.db.replicas import Replica, ReplicaSet, node_name
from picscale.tiers.db.shards import Shards

DATABASE_SCHEMES = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgres", "postgresql+asyncpg")
DATABASE_FORMS = (
    "sqlite:///path/to/file.db or postgresql://user:password@host:5432/db "
    "(several clusters: c1=URL;c2=URL)"
)
POSTGRES_FORMS = "postgresql://user:password@host:5432/db, comma-separated"


def check_database_urls(settings: Settings) -> None:
    """The URLs of the database tier (each cluster's, its replicas', its Patroni's), as
    ``create_shards`` will read them."""
    layout = settings.database_layout()
    dialects: set[str] = set()
    for name, url in layout.items():
        variable = "PICSCALE_DATABASE_URL" + (f" (cluster {name})" if len(layout) > 1 else "")
        parts = checked_url(variable, url, DATABASE_SCHEMES, DATABASE_FORMS)
        dialects.add("sqlite" if parts.scheme.startswith("sqlite") else "postgresql")
        try:
            async_url(url)
        except (ArgumentError, ValueError):  # SQLAlchemy's own parser refused it
            raise SettingsError(f"{variable} is not a database URL: use {DATABASE_FORMS}") from None
        for setting, variable, schemes, forms in (
            (
                settings.database.replica_urls,
                "PICSCALE_DATABASE_REPLICA_URLS",
                ("postgresql", "postgres", "postgresql+asyncpg"),
                POSTGRES_FORMS,
            ),
            (
                settings.database.patroni_url,
                "PICSCALE_DATABASE_PATRONI_URL",
                ("http", "https"),
                "http://host:8008 (Patroni's REST API), comma-separated",
            ),
        ):
            for each in settings.cluster_setting(setting, name, variable).split(","):
                if each.strip():
                    checked_url(variable, each, schemes, forms)
    if len(dialects) > 1:
        raise SettingsError(
            "PICSCALE_DATABASE_URL mixes SQLite and PostgreSQL clusters: use one kind"
        )


def create_shards(settings: Settings, metrics: Metrics) -> Shards:
    check_database_urls(settings)
    layout = settings.database_layout()
    clusters = {
        name: create_database(settings, metrics, name=name, url=url) for name, url in layout.items()
    }
    return Shards(clusters, settings.shards.logical)


def create_database(
    settings: Settings, metrics: Metrics, *, name: str = "c1", url: str | None = None
) -> Database:
    """One cluster (``url``, else the layout's first)."""
    if url is None:
        name, url = next(iter(settings.database_layout().items()))
    primary, reader, dialect = create_engines(settings, url)
    replicas = None
    patroni_url = settings.cluster_setting(
        settings.database.patroni_url, name, "PICSCALE_DATABASE_PATRONI_URL"
    )
    replica_urls = settings.cluster_setting(
        settings.database.replica_urls, name, "PICSCALE_DATABASE_REPLICA_URLS"
    )
    if patroni_url:
        if dialect != "postgresql":
            raise SettingsError(
                "PICSCALE_DATABASE_PATRONI_URL needs PICSCALE_DATABASE_URL=postgresql://..."
            )
        from picscale.tiers.db.patroni import PatroniDiscovery

        template = make_url(async_url(url))
        template = template.set(
            query={
                k: v for k, v in template.query.items() if k not in ("host", "target_session_attrs")
            }
        )
        replicas = ReplicaSet(
            [],
            primary,
            max_lag_seconds=settings.database.replica_max_lag_seconds,
            max_lag_bytes=settings.database.replica_max_lag_bytes,
            metrics=metrics,
        )
        discovery = PatroniDiscovery(
            [u.strip() for u in patroni_url.split(",") if u.strip()],
            replicas,
            template,
            lambda url: observed(postgres_engine(url, settings), "replica", dialect, metrics),
        )
        replicas.refresh = discovery.refresh_if_due
    elif replica_urls:
        if dialect != "postgresql":
            raise SettingsError(
                "PICSCALE_DATABASE_REPLICA_URLS needs PICSCALE_DATABASE_URL=postgresql://..."
            )
        replicas = ReplicaSet(
            [
                Replica(node_name(engine), engine)
                for engine in (
                    postgres_engine(async_url(u.strip()), settings)
                    for u in replica_urls.split(",")
                    if u.strip()
                )
            ],
            primary,
            max_lag_seconds=settings.database.replica_max_lag_seconds,
            max_lag_bytes=settings.database.replica_max_lag_bytes,
            metrics=metrics,
        )
    for engine in {primary, reader}:
        observed(engine, "primary", dialect, metrics)
    for replica in replicas.replicas if replicas else []:
        observed(replica.engine, "replica", dialect, metrics)
    return Database(
        primary,
        reader,
        dialect,
        replicas,
        failover_wait=settings.database.failover_wait_seconds,
        name=name,
        dsn=libpq_url(url) if dialect == "postgresql" else "",
    )


def libpq_url(url: str) -> str:
    """The URL as libpq reads it (``CREATE SUBSCRIPTION … CONNECTION``)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgres") else url
