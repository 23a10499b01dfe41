"""What runs at each stage of the lab: components, their commands, ports and health."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PG_BIN = Path("/usr/lib/postgresql/15/bin")
HAPROXY = "/usr/sbin/haproxy"
VARNISHD = "/usr/sbin/varnishd"
RABBITMQ = "/usr/lib/rabbitmq/bin/rabbitmq-server"
DATABASE = "picscale"
REDIS_MASTER = "picscale"  # the name the Sentinels know the cache's master by

STAGES = {
    1: "one server: `picscale serve` with embedded SQLite, cache, queue and media",
    2: "a separate database: PostgreSQL on its own, one web server",
    3: "a load balancer: HAProxy in front of 2 stateless web servers",
    4: "replicas and failover: Patroni + etcd, a primary and 2 streaming replicas",
    5: "cache and CDN: Redis with a replica and 3 Sentinels, Varnish as the media edge",
    6: "shared sessions (in Redis) and an autoscaled web tier (`lab autoscale web=MIN:MAX`)",
    7: "a message queue and separate workers: RabbitMQ, autoscaled `picscale worker`s",
    8: "metrics and logs: Prometheus scraping every component, one log stream",
}
PATRONI_NODES = 3
SENTINELS = 3
MAX_WORKERS = 4  # worker slots: `lab scale workers=M` fills them
MAX_STAGE = max(STAGES)


@dataclass(frozen=True)
class Component:
    name: str
    role: str
    command: list[str]
    port: int
    # "http://…" answered 200; "pg" (pg_isready), "redis" (PING), "amqp";
    # "patroni+http://…" (its REST API): the primary, or a replica the primary streams to
    health: str
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    stop_signal: str = "TERM"


@dataclass
class Layout:
    """Where a lab keeps its state, and the ports it was given (kept across restarts)."""

    root: Path
    ports: dict[str, int]
    secret_key: str
    stage: int
    webs: int = 0  # web servers running now (0: the stage's own number)
    workers: int = 0  # worker components running now (0: the stage's own number)

    @property
    def web_count(self) -> int:
        return self.webs or web_servers(self.stage)

    @property
    def worker_count(self) -> int:
        return self.workers or (2 if self.stage >= 7 else 0)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def database_url(self) -> str:
        if self.stage >= 4:  # every node: the driver finds the one that takes writes
            hosts = ",".join(
                f"127.0.0.1:{self.ports[f'pg{n}']}" for n in range(1, PATRONI_NODES + 1)
            )
            return f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs=read-write"
        return f"postgresql://postgres@127.0.0.1:{self.ports['postgres']}/{DATABASE}"

    @property
    def patroni_url(self) -> str:
        return ",".join(self.url(f"patroni{n}") for n in range(1, PATRONI_NODES + 1))

    @property
    def redis_url(self) -> str:
        """The cache (and from stage 6 the sessions): the master the Sentinels name."""
        hosts = ",".join(f"127.0.0.1:{self.ports[f'sentinel{n}']}" for n in range(1, SENTINELS + 1))
        return f"redis+sentinel://{hosts}/{REDIS_MASTER}/0"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.ports['rabbitmq']}/"

    def app_env(self) -> dict[str, str]:
        """What every web server and worker of the stage is configured with."""
        env = {
            "PICSCALE_DATA_DIR": str(self.data),  # one machine: the media directory is shared
            "PICSCALE_SECRET_KEY": self.secret_key,
            "PICSCALE_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
        if self.stage >= 2:
            env["PICSCALE_DATABASE_URL"] = self.database_url
        if self.stage >= 4:  # reads go to the replicas Patroni reports
            env["PICSCALE_DATABASE_PATRONI_URL"] = self.patroni_url
        if self.stage >= 5:
            env["PICSCALE_CACHE_URL"] = self.redis_url
            # media URLs point at the edge's front (HAProxy: Varnish, the origin as backup);
            # purges go to Varnish itself
            env["PICSCALE_CDN_URL"] = self.url("edge")
            env["PICSCALE_CDN_PURGE_URL"] = self.url("varnish")
        if self.stage >= 6:
            env["PICSCALE_SESSION_URL"] = self.redis_url
        if self.stage >= 7:
            env["PICSCALE_QUEUE_URL"] = self.amqp_url
        return env


MAX_WEB_SERVERS = 8  # slots behind the load balancer: `lab scale web=N` fills them


def web_servers(stage: int) -> int:
    """How many web servers a stage starts with."""
    return 2 if stage >= 3 else 1


def components(layout: Layout, *, every_slot: bool = False) -> list[Component]:
    """Everything stage ``layout.stage`` runs now, in the order it starts (``every_slot``:
    with every web server the load balancer has a slot for, for supervisord's config)."""
    stage = layout.stage
    out: list[Component] = []
    as_postgres = "postgres" if os.geteuid() == 0 else None
    if stage >= 4:
        etcd = layout.ports["etcd"]
        peer = layout.ports["etcd_peer"]
        out.append(
            Component(
                name="etcd",
                role="consensus store (Patroni's leader key)",
                command=[
                    "etcd",
                    "--name=e1",
                    f"--data-dir={layout.root / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{etcd}",
                    f"--advertise-client-urls=http://127.0.0.1:{etcd}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-cluster=e1=http://127.0.0.1:{peer}",
                    "--log-level=warn",
                ],
                port=etcd,
                health=f"http://127.0.0.1:{etcd}/health",
            )
        )
        for n in range(1, PATRONI_NODES + 1):
            out.append(
                Component(
                    name=f"patroni{n}",
                    role="PostgreSQL under Patroni",
                    command=["patroni", str(layout.root / f"patroni{n}" / "patroni.yml")],
                    port=layout.ports[f"pg{n}"],
                    health=f"patroni+{layout.url(f'patroni{n}')}",
                    user=as_postgres,
                )
            )
    elif stage >= 2:
        out.append(
            Component(
                name="postgres",
                role="database primary",
                command=[
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(layout.pgdata),
                    "-p",
                    str(layout.ports["postgres"]),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={layout.pgdata}",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "log_line_prefix=%m [%p] ",
                ],
                port=layout.ports["postgres"],
                health="pg",
                user=as_postgres,
                stop_signal="INT",  # PostgreSQL's fast shutdown
            )
        )
    if stage >= 5:
        out += _cache(layout)
    if stage >= 7:
        out.append(_rabbitmq(layout))
    count = MAX_WEB_SERVERS if every_slot and stage >= 3 else layout.web_count
    job_workers = "0" if stage >= 7 else "1"  # from stage 7 jobs run on separate workers
    for n in range(1, count + 1):
        name = f"web{n}"
        out.append(
            Component(
                name=name,
                role="web server",
                command=[
                    sys.executable,
                    "-m",
                    "picscale",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(layout.ports[name]),
                    "--workers",
                    "1",
                    "--job-workers",
                    job_workers,
                ],
                port=layout.ports[name],
                health=f"http://127.0.0.1:{layout.ports[name]}/readyz",
                env=layout.app_env(),
            )
        )
    count = MAX_WORKERS if every_slot and stage >= 7 else layout.worker_count
    for n in range(1, count + 1):
        name = f"worker{n}"
        out.append(
            Component(
                name=name,
                role="job worker (1 to 2 processes, by queue depth)",
                command=[
                    sys.executable,
                    "-m",
                    "picscale",
                    "worker",
                    "--autoscale",
                    "1:2",
                    "--metrics-port",
                    str(layout.ports[name]),
                ],
                port=layout.ports[name],
                health=f"http://127.0.0.1:{layout.ports[name]}/metrics",
                env=layout.app_env(),
            )
        )
    if stage >= 3:
        out.append(
            Component(
                name="haproxy",
                role="load balancer",
                command=[HAPROXY, "-db", "-f", str(layout.root / "haproxy.cfg")],
                port=layout.ports["haproxy"],
                health=f"http://127.0.0.1:{layout.ports['haproxy']}/healthz",
            )
        )
    if stage >= 5:
        varnish = layout.ports["varnish"]
        out.append(
            Component(
                name="varnish",
                role="media edge (HAProxy sends to the origin while it is down)",
                command=[
                    VARNISHD,
                    "-F",  # in the foreground, under supervisord
                    "-j",
                    "none",  # a lab's files, a lab's user
                    "-a",
                    f"127.0.0.1:{varnish}",
                    "-T",
                    f"127.0.0.1:{layout.ports['varnish_admin']}",
                    "-n",
                    str(layout.root / "varnish"),
                    "-f",
                    str(layout.root / "picscale.vcl"),
                    "-s",
                    "malloc,256m",
                ],
                port=varnish,
                health=f"http://127.0.0.1:{varnish}/.edge/health",
            )
        )
    if stage >= 8:
        out += _observability(layout)
    return out


def _cache(layout: Layout) -> list[Component]:
    """Redis, a replica and 3 Sentinels; the configuration files are Redis's own, which
    it and the Sentinels rewrite as roles change, so a restart keeps the roles."""
    out = [
        Component(
            name=f"redis{n}",
            role="cache (Redis)",
            command=["redis-server", str(layout.root / "redis" / f"redis{n}.conf")],
            port=layout.ports[f"redis{n}"],
            health="redis",
        )
        for n in (1, 2)
    ]
    out += [
        Component(
            name=f"sentinel{n}",
            role="Redis Sentinel (fails the cache's master over)",
            command=[
                "redis-server",
                str(layout.root / "redis" / f"sentinel{n}.conf"),
                "--sentinel",
            ],
            port=layout.ports[f"sentinel{n}"],
            health="redis",
        )
        for n in range(1, SENTINELS + 1)
    ]
    return out


def _rabbitmq(layout: Layout) -> Component:
    root = layout.root / "rabbitmq"
    return Component(
        name="rabbitmq",
        role="message queue",
        command=[RABBITMQ],
        port=layout.ports["rabbitmq"],
        health="amqp",
        env={
            "HOME": str(root),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": f"picscale{layout.ports['rabbitmq']}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(layout.ports["rabbitmq"]),
            "RABBITMQ_DIST_PORT": str(layout.ports["rabbitmq_dist"]),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
        },
    )


def _observability(layout: Layout) -> list[Component]:
    p = layout.ports
    dsn = ",".join(
        f"postgresql://postgres@127.0.0.1:{p[f'pg{n}']}/{DATABASE}?sslmode=disable"
        for n in range(1, PATRONI_NODES + 1)
    )
    exporters = [
        Component(
            name="node_exporter",
            role="machine metrics",
            command=[
                "prometheus-node-exporter",
                f"--web.listen-address=127.0.0.1:{p['node_exporter']}",
            ],
            port=p["node_exporter"],
            health=f"http://127.0.0.1:{p['node_exporter']}/metrics",
        ),
        Component(
            name="pg_exporter",
            role="PostgreSQL metrics (every node)",
            command=[
                "prometheus-postgres-exporter",
                f"--web.listen-address=127.0.0.1:{p['pg_exporter']}",
                # these two collectors cannot tell several servers apart; the classic
                # metrics carry a `server` label
                "--no-collector.database",
                "--no-collector.bgwriter",
            ],
            port=p["pg_exporter"],
            health=f"http://127.0.0.1:{p['pg_exporter']}/metrics",
            env={"DATA_SOURCE_NAME": dsn},
        ),
        Component(
            name="redis_exporter",
            role="Redis metrics (each node, by /scrape?target=)",
            command=[
                "prometheus-redis-exporter",
                "-web.listen-address",
                f"127.0.0.1:{p['redis_exporter']}",
                "-redis.addr",
                "",
            ],
            port=p["redis_exporter"],
            health=f"http://127.0.0.1:{p['redis_exporter']}/health",
        ),
        Component(
            name="varnish_exporter",
            role="Varnish metrics (varnishstat)",
            command=[
                "prometheus-varnish-exporter",
                "-n",
                str(layout.root / "varnish"),
                "-web.listen-address",
                f"127.0.0.1:{p['varnish_exporter']}",
            ],
            port=p["varnish_exporter"],
            health=f"http://127.0.0.1:{p['varnish_exporter']}/metrics",
        ),
        Component(
            name="prometheus",
            role="metrics: scrapes every component",
            command=[
                "prometheus",
                f"--config.file={layout.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={layout.root / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{p['prometheus']}",
                "--storage.tsdb.retention.time=2d",
                "--log.level=warn",
            ],
            port=p["prometheus"],
            health=f"http://127.0.0.1:{p['prometheus']}/-/ready",
        ),
    ]
    return exporters


# every port a lab may need, given once at its first `up` and kept
PORT_NAMES = (
    "supervisor",
    *(f"web{n}" for n in range(1, MAX_WEB_SERVERS + 1)),
    "postgres",
    "haproxy",
    "haproxy_stats",
    "etcd",
    "etcd_peer",
    *(f"pg{n}" for n in range(1, PATRONI_NODES + 1)),
    *(f"patroni{n}" for n in range(1, PATRONI_NODES + 1)),
    "redis1",
    "redis2",
    *(f"sentinel{n}" for n in range(1, SENTINELS + 1)),
    "varnish",
    "varnish_admin",
    "edge",
    "rabbitmq",
    "rabbitmq_dist",
    "rabbitmq_metrics",
    *(f"worker{n}" for n in range(1, MAX_WORKERS + 1)),
    "prometheus",
    "node_exporter",
    "pg_exporter",
    "redis_exporter",
    "varnish_exporter",
)

# quick failover for a demonstration: the leader key lives 10 s, nodes look every second
PATRONI_DCS = {
    "ttl": 10,
    "loop_wait": 1,
    "retry_timeout": 5,
    "maximum_lag_on_failover": 1048576,
    "synchronous_mode": True,  # an acknowledged commit is on a standby too
    "postgresql": {
        "use_pg_rewind": True,
        "use_slots": True,
        "parameters": {
            "wal_level": "replica",
            "hot_standby": "on",
            "wal_log_hints": "on",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "max_connections": 200,
        },
    },
}


def patroni_node_config(
    *,
    scope: str,
    name: str,
    node_dir: Path,
    pg_port: int,
    api_port: int,
    etcd_port: int,
    log_level: str = "INFO",
) -> dict[str, Any]:
    """One Patroni node's configuration: PostgreSQL on loopback, trust inside the machine,
    its data under ``node_dir`` (the lab and the tests' clusters use the same)."""
    return {
        "scope": scope,
        "name": name,
        "log": {"level": log_level},
        "restapi": {"listen": f"127.0.0.1:{api_port}", "connect_address": f"127.0.0.1:{api_port}"},
        "etcd3": {"hosts": f"127.0.0.1:{etcd_port}"},
        "bootstrap": {
            "dcs": PATRONI_DCS,
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
            "pg_hba": [
                "local all all trust",
                "host replication all 127.0.0.1/32 trust",
                "host all all 127.0.0.1/32 trust",
            ],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{pg_port}",
            "connect_address": f"127.0.0.1:{pg_port}",
            "data_dir": str(node_dir / "data"),
            "bin_dir": str(PG_BIN),
            "pgpass": str(node_dir / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": "postgres"},
                "replication": {"username": "replicator", "password": "replicator"},
                "rewind": {"username": "postgres", "password": "postgres"},
            },
            "parameters": {"unix_socket_directories": str(node_dir)},
            # a new replica copies the primary at once, not after a spread checkpoint
            "basebackup": [{"checkpoint": "fast"}],
        },
    }


def prepare_patroni(layout: Layout) -> None:
    """Each node's directory (owned by postgres when we are root) and configuration."""
    for n in range(1, PATRONI_NODES + 1):
        node = layout.root / f"patroni{n}"
        node.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            layout.root.chmod(0o755)
            shutil.chown(node, "postgres", "postgres")
        config = patroni_node_config(
            scope="picscale-lab",
            name=f"pg{n}",
            node_dir=node,
            pg_port=layout.ports[f"pg{n}"],
            api_port=layout.ports[f"patroni{n}"],
            etcd_port=layout.ports["etcd"],
        )
        (node / "patroni.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML


def prepare_postgres(layout: Layout) -> None:
    """initdb once, as the postgres user when we are root (PostgreSQL refuses root)."""
    if (layout.pgdata / "PG_VERSION").exists():
        return
    layout.pgdata.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (layout.root, layout.pgdata):
            path.chmod(0o755 if path == layout.root else 0o700)
        shutil.chown(layout.pgdata, entry.pw_uid, entry.pw_gid)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(layout.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,  # type: ignore[call-overload]
    )


def haproxy_config(layout: Layout) -> str:
    # a slot for every web server `lab scale` may start; those not running are in
    # maintenance until the runtime API makes them ready
    servers = "\n".join(
        f"    server web{n} 127.0.0.1:{layout.ports[f'web{n}']}"
        + ("" if n <= layout.web_count else " disabled")
        for n in range(1, MAX_WEB_SERVERS + 1)
    )
    return f"""# rendered by `picscale lab up`: HAProxy in front of the stateless web servers
global
    log stdout format raw local0 info
    stats socket {layout.run}/haproxy.sock mode 600 level admin

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # a connection to a server lasts one request: otherwise a client's idle keep-alive
    # connection stays tied to a server connection, and is closed when that server is
    # killed; a request the client sends on it meanwhile ends in a connection error that
    # HAProxy never saw (a web-server drill with 5 users: 2 such errors in 1 of 4 runs
    # without this, none in 6 runs with it)
    option http-server-close
    # a request to a server that dies is retried, once, on another one
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend web
    bind 127.0.0.1:{layout.ports["haproxy"]}
    default_backend webs

frontend stats
    bind 127.0.0.1:{layout.ports["haproxy_stats"]}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
    stats refresh 2s

backend webs
    # no stickiness: any web server serves any user (sessions live in the database, or
    # from stage 6 in Redis)
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    # a busy server answers its check late: give it 5 s and 3 misses before it leaves the
    # pool (checks that time out under load would empty the pool when it is needed most);
    # a server that refuses connections (dead) leaves at once
    timeout check 5s
    default-server inter 1s fall 3 rise 2 check {_MARK_DOWN_AT_ONCE}
{servers}
{edge_config(layout) if layout.stage >= 5 else ""}"""


_MARK_DOWN_AT_ONCE = "observe layer4 error-limit 1 on-error mark-down"


def edge_config(layout: Layout) -> str:
    return f"""
frontend edge
    # media and static URLs point here: Varnish, or the origin while Varnish is down
    # (what a CDN's failover does); a request to a Varnish that just died marks it down
    # at once and is retried on the origin
    bind 127.0.0.1:{layout.ports["edge"]}
    default_backend edges

backend edges
    option httpchk GET /.edge/health
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
    server varnish 127.0.0.1:{layout.ports["varnish"]} check {_MARK_DOWN_AT_ONCE}
    server origin 127.0.0.1:{layout.ports["haproxy"]} backup
"""


def _write_once(path: Path, text: str) -> None:
    """A configuration its server rewrites as it runs (Redis, Sentinel): written only the
    first time, so a restart keeps what the server learnt (who is master now)."""
    if not path.exists():
        path.write_text(text)


def prepare_cache(layout: Layout) -> None:
    folder = layout.root / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    for n in (1, 2):
        lines = [
            f"port {layout.ports[f'redis{n}']}",
            "bind 127.0.0.1",
            f"dir {folder}",
            f"dbfilename redis{n}.rdb",
            'save ""',
            "appendonly no",
            "maxmemory 256mb",
            # cache entries and sessions both carry a TTL: only those are ever evicted
            "maxmemory-policy volatile-lru",
        ]
        if n == 2:
            lines.append(f"replicaof 127.0.0.1 {layout.ports['redis1']}")
        _write_once(folder / f"redis{n}.conf", "\n".join(lines) + "\n")
    for n in range(1, SENTINELS + 1):
        _write_once(
            folder / f"sentinel{n}.conf",
            f"port {layout.ports[f'sentinel{n}']}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor {REDIS_MASTER} 127.0.0.1 {layout.ports['redis1']} 2\n"
            # a lab shows failover in seconds: down after 1 s, 2 of 3 agreeing
            f"sentinel down-after-milliseconds {REDIS_MASTER} 1000\n"
            f"sentinel failover-timeout {REDIS_MASTER} 5000\n"
            f"sentinel parallel-syncs {REDIS_MASTER} 1\n",
        )


def prepare_rabbitmq(layout: Layout) -> None:
    root = layout.root / "rabbitmq"
    root.mkdir(parents=True, exist_ok=True)
    (root / "enabled_plugins").write_text("[rabbitmq_prometheus].\n")
    (root / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{layout.ports['rabbitmq']}\n"
        "log.console = true\nlog.console.level = warning\nlog.file = false\n"
        # one small machine: do not refuse publishes over a nearly full disk
        "disk_free_limit.absolute = 50MB\n"
        f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {layout.ports['rabbitmq_metrics']}\n"
        "prometheus.return_per_object_metrics = true\n"
    )


def prepare_varnish(layout: Layout) -> None:
    from picscale.tiers.edge.varnish import render_vcl

    # Varnish's origin is the load balancer: any web server fills the edge
    vcl = render_vcl("127.0.0.1", layout.ports["haproxy"], purgers=("127.0.0.1",))
    (layout.root / "picscale.vcl").write_text(vcl)


def scrape_targets(layout: Layout) -> None:
    """The web servers and workers Prometheus scrapes now (file-based discovery: the
    lab rewrites these when it scales, Prometheus reads them again)."""
    folder = layout.root / "prometheus-targets"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("web", layout.web_count), ("worker", layout.worker_count)):
        targets = [f"127.0.0.1:{layout.ports[f'{name}{n}']}" for n in range(1, count + 1)]
        text = json.dumps([{"targets": targets, "labels": {"tier": name}}], indent=2)
        path = folder / f"{name}.json"
        partial = path.with_suffix(".tmp")
        partial.write_text(text + "\n")
        partial.replace(path)  # Prometheus never reads half a file


def prometheus_config(layout: Layout) -> str:
    p = layout.ports
    targets = layout.root / "prometheus-targets"

    def static(job: str, port: str, path: str = "/metrics") -> str:
        return (
            f"  - job_name: {job}\n    metrics_path: {path}\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{p[port]}']}}]\n"
        )

    redis_targets = ", ".join(f"'redis://127.0.0.1:{p[f'redis{n}']}'" for n in (1, 2))
    return (
        "# rendered by `picscale lab up`: every component of the lab, every 5 s\n"
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
        "scrape_configs:\n"
        "  - job_name: picscale_web\n"
        f"    file_sd_configs: [{{files: ['{targets}/web.json'], refresh_interval: 5s}}]\n"
        "  - job_name: picscale_worker\n"
        f"    file_sd_configs: [{{files: ['{targets}/worker.json'], refresh_interval: 5s}}]\n"
        + static("haproxy", "haproxy_stats")
        + static("postgres", "pg_exporter")
        + "  - job_name: redis\n    metrics_path: /scrape\n"
        f"    static_configs: [{{targets: [{redis_targets}]}}]\n"
        "    relabel_configs:\n"
        "      - {source_labels: [__address__], target_label: __param_target}\n"
        "      - {source_labels: [__param_target], target_label: instance}\n"
        f"      - {{target_label: __address__, replacement: '127.0.0.1:{p['redis_exporter']}'}}\n"
        + static("rabbitmq", "rabbitmq_metrics")
        + static("varnish", "varnish_exporter")
        + static("node", "node_exporter")
        + static("prometheus", "prometheus")
    )
