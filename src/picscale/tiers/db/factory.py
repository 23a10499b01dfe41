"""The databases of the settings: each cluster of the shard layout, its primary, and
replicas listed or found by Patroni; the router over them (``create_shards``)."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from picscale.observability.metrics import Metrics
from picscale.settings import Settings, SettingsError
from picscale.tiers.db.database import Database
from picscale.tiers.db.engines import async_url, create_engines, observed, postgres_engine
from picscale.tiers.db.replicas import Replica, ReplicaSet, node_name
from picscale.tiers.db.shards import Shards


def create_shards(settings: Settings, metrics: Metrics) -> Shards:
    layout = settings.database_layout()
    clusters = {
        name: create_database(settings, metrics, name=name, url=url) for name, url in layout.items()
    }
    dialects = {db.dialect for db in clusters.values()}
    if len(dialects) > 1:
        raise SettingsError(
            "PICSCALE_DATABASE_URL mixes SQLite and PostgreSQL clusters: use one kind"
        )
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
