"""The stages of the scaling path, and the engines each runs, in the order they start.
Each stage runs the one before it and more (from stage 4 Patroni's cluster replaces the
single PostgreSQL; from stage 9 a second Patroni cluster holds half the shards)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from picscale.lab.engine import Engine
from picscale.lab.engines.etcd import Etcd
from picscale.lab.engines.exporters import Exporters
from picscale.lab.engines.haproxy import HAProxy
from picscale.lab.engines.patroni import Patroni
from picscale.lab.engines.postgres import Postgres
from picscale.lab.engines.prometheus import Prometheus
from picscale.lab.engines.rabbitmq import RabbitMQ
from picscale.lab.engines.redis import Redis
from picscale.lab.engines.varnish import Varnish
from picscale.lab.engines.web import WebServers
from picscale.lab.engines.worker import Workers

E = TypeVar("E", bound=Engine)


@dataclass(frozen=True)
class Stage:
    """A step of the scaling path: what it adds, and the engines it runs."""

    number: int
    what: str
    engines: tuple[Engine, ...]  # in the order they start

    def find(self, kind: type[E]) -> E | None:
        """The stage's engine of this kind, if it runs one."""
        return next((e for e in self.engines if isinstance(e, kind)), None)

    def runs(self, kind: type[Engine]) -> bool:
        return self.find(kind) is not None

    @property
    def web_servers(self) -> int:
        """How many web servers it starts with."""
        web = self.find(WebServers)
        return web.servers if web else 0

    @property
    def workers(self) -> int:
        """How many separate workers it starts with."""
        workers = self.find(Workers)
        return workers.count if workers else 0


# fmt: off
STAGES = {stage.number: stage for stage in (
    Stage(1, "one server: `picscale serve` with embedded SQLite, cache, queue and media",
          (WebServers(servers=1),)),
    Stage(2, "a separate database: PostgreSQL on its own, one web server",
          (Postgres(), WebServers(servers=1))),
    Stage(3, "a load balancer: HAProxy in front of 2 stateless web servers",
          (Postgres(), WebServers(servers=2), HAProxy())),
    Stage(4, "replicas and failover: Patroni + etcd, a primary and 2 streaming replicas",
          (Etcd(), Patroni(), WebServers(servers=2), HAProxy())),
    Stage(5, "cache and CDN: Redis with a replica and 3 Sentinels, Varnish as the media edge",
          (Etcd(), Patroni(), Redis(), WebServers(servers=2), HAProxy(), Varnish())),
    Stage(6, "shared sessions (in Redis) and an autoscaled web tier "
             "(`lab autoscale web=MIN:MAX`)",
          (Etcd(), Patroni(), Redis(sessions=True), WebServers(servers=2, autoscaled=True),
           HAProxy(), Varnish())),
    Stage(7, "a message queue and separate workers: RabbitMQ, autoscaled `picscale worker`s",
          (Etcd(), Patroni(), Redis(sessions=True), RabbitMQ(),
           WebServers(servers=2, autoscaled=True), Workers(count=2), HAProxy(), Varnish())),
    Stage(8, "metrics and logs: Prometheus scraping every component, one log stream",
          (Etcd(), Patroni(), Redis(sessions=True), RabbitMQ(),
           WebServers(servers=2, autoscaled=True), Workers(count=2), HAProxy(), Varnish(),
           Exporters(), Prometheus())),
    Stage(9, "sharding: a second PostgreSQL cluster (c2, Patroni) holds half the logical "
             "shards; the shard map in etcd; `drill shard-move` moves shards under load",
          (Etcd(), Patroni(), Patroni(cluster="c2", nodes=2), Redis(sessions=True),
           RabbitMQ(), WebServers(servers=2, autoscaled=True), Workers(count=2), HAProxy(),
           Varnish(), Exporters(), Prometheus())),
)}
# fmt: on
MAX_STAGE = max(STAGES)

# every port a lab may need, given once at its first `up` and kept: supervisord's, and
# those of every engine of every stage
PORT_NAMES = (
    "supervisor",
    *dict.fromkeys(
        name
        for stage in STAGES.values()
        for engine in stage.engines
        for name in engine.port_names()
    ),
)
