"""The database of the settings: its primary, and replicas listed or found by Patroni."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from picscale.observability.metrics import Metrics
from picscale.settings import Settings, SettingsError
from picscale.tiers.db.database import Database
from picscale.tiers.db.engines import async_url, create_engines, observed, postgres_engine
from picscale.tiers.db.replicas import Replica, ReplicaSet, node_name


def create_database(settings: Settings, metrics: Metrics) -> Database:
    primary, reader, dialect = create_engines(settings)
    replicas = None
    if settings.database.patroni_url:
        if dialect != "postgresql":
            raise SettingsError(
                "PICSCALE_DATABASE_PATRONI_URL needs PICSCALE_DATABASE_URL=postgresql://..."
            )
        from picscale.tiers.db.patroni import PatroniDiscovery

        template = make_url(async_url(settings.resolved_database_url))
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
            [u.strip() for u in settings.database.patroni_url.split(",") if u.strip()],
            replicas,
            template,
            lambda url: observed(postgres_engine(url, settings), "replica", dialect, metrics),
        )
        replicas.refresh = discovery.refresh_if_due
    elif settings.database.replica_urls:
        if dialect != "postgresql":
            raise SettingsError(
                "PICSCALE_DATABASE_REPLICA_URLS needs PICSCALE_DATABASE_URL=postgresql://..."
            )
        replicas = ReplicaSet(
            [
                Replica(node_name(engine), engine)
                for engine in (
                    postgres_engine(async_url(url.strip()), settings)
                    for url in settings.database.replica_urls.split(",")
                    if url.strip()
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
        primary, reader, dialect, replicas, failover_wait=settings.database.failover_wait_seconds
    )
