"""The Prometheus exporters (stage 8) of what has no metrics endpoint of its own: the
machine, PostgreSQL (every Patroni node of every cluster), Redis (each node) and Varnish."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from picscale.lab.engine import Component, Engine, ScrapeJob
from picscale.lab.engines.patroni import shard_clusters
from picscale.lab.engines.postgres import DATABASE
from picscale.lab.engines.redis import NODES as REDIS_NODES
from picscale.lab.engines.varnish import work_dir
from picscale.lab.layout import Layout
from picscale.lab.probes import http_ok


def _exporter(
    layout: Layout,
    name: str,
    role: str,
    command: list[str],
    health: str,
    env: dict[str, str] | None = None,
) -> Component:
    port = layout.ports[name]
    return Component(
        name=name,
        role=role,
        command=command,
        port=port,
        healthy=partial(http_ok, f"http://127.0.0.1:{port}{health}"),
        env=env or {},
    )


@dataclass(frozen=True)
class Exporters(Engine):
    def port_names(self) -> tuple[str, ...]:
        return ("node_exporter", "pg_exporter", "redis_exporter", "varnish_exporter")

    def components(self, layout: Layout) -> list[Component]:
        def listen(name: str) -> str:
            return f"127.0.0.1:{layout.ports[name]}"

        dsn = ",".join(
            f"postgresql://postgres@127.0.0.1:{layout.ports[c.pg(n)]}/{DATABASE}?sslmode=disable"
            for c in shard_clusters(layout)
            for n in c.numbers()
        )
        return [
            _exporter(
                layout,
                "node_exporter",
                "machine metrics",
                ["prometheus-node-exporter", f"--web.listen-address={listen('node_exporter')}"],
                "/metrics",
            ),
            _exporter(
                layout,
                "pg_exporter",
                "PostgreSQL metrics (every node of every cluster)",
                [
                    "prometheus-postgres-exporter",
                    f"--web.listen-address={listen('pg_exporter')}",
                    # these two collectors cannot tell several servers apart; the classic
                    # metrics carry a `server` label
                    "--no-collector.database",
                    "--no-collector.bgwriter",
                ],
                "/metrics",
                env={"DATA_SOURCE_NAME": dsn},
            ),
            _exporter(
                layout,
                "redis_exporter",
                "Redis metrics (each node, by /scrape?target=)",
                [
                    "prometheus-redis-exporter",
                    "-web.listen-address",
                    listen("redis_exporter"),
                    "-redis.addr",
                    "",
                ],
                "/health",
            ),
            _exporter(
                layout,
                "varnish_exporter",
                "Varnish metrics (varnishstat)",
                [
                    "prometheus-varnish-exporter",
                    "-n",
                    str(work_dir(layout)),
                    "-web.listen-address",
                    listen("varnish_exporter"),
                ],
                "/metrics",
            ),
        ]

    def scrape_jobs(self, layout: Layout) -> list[ScrapeJob]:
        def at(name: str) -> tuple[str]:
            return (f"127.0.0.1:{layout.ports[name]}",)

        redis = tuple(f"redis://127.0.0.1:{layout.ports[node]}" for node in REDIS_NODES)
        return [
            ScrapeJob("postgres", at("pg_exporter")),
            ScrapeJob("redis", redis, path="/scrape", exporter=at("redis_exporter")[0]),
            ScrapeJob("varnish", at("varnish_exporter")),
            ScrapeJob("node", at("node_exporter")),
        ]
