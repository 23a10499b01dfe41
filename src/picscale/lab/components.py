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
DATABASE = "picscale"

STAGES = {
    1: "one server: `picscale serve` with embedded SQLite, cache, queue and media",
    2: "a separate database: PostgreSQL on its own, one web server",
    3: "a load balancer: HAProxy in front of 2 stateless web servers",
    4: "replicas and failover: Patroni + etcd, a primary and 2 streaming replicas",
}
PATRONI_NODES = 3
MAX_STAGE = max(STAGES)


@dataclass(frozen=True)
class Component:
    name: str
    role: str
    command: list[str]
    port: int
    health: str  # "http://…" answered 200, or "pg" (pg_isready)
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

    @property
    def web_count(self) -> int:
        return self.webs or web_servers(self.stage)

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
                    health=f"http://127.0.0.1:{layout.ports[f'patroni{n}']}/health",
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
    count = MAX_WEB_SERVERS if every_slot and stage >= 3 else layout.web_count
    for n in range(1, count + 1):
        name = f"web{n}"
        env = {
            "PICSCALE_DATA_DIR": str(layout.data),
            "PICSCALE_SECRET_KEY": layout.secret_key,
            "PICSCALE_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
        if stage >= 2:
            env["PICSCALE_DATABASE_URL"] = layout.database_url
        if stage >= 4:  # reads go to the replicas Patroni reports
            env["PICSCALE_DATABASE_PATRONI_URL"] = layout.patroni_url
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
                    "1",
                ],
                port=layout.ports[name],
                health=f"http://127.0.0.1:{layout.ports[name]}/readyz",
                env=env,
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
    return out


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
    # no stickiness: any web server serves any user (sessions live in the database)
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2 check
{servers}
"""
