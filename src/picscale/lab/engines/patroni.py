"""PostgreSQL under Patroni (from stage 4): a primary and 2 streaming replicas, with etcd
holding the leader key, so that a replica is promoted when the primary dies."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from picscale.lab.engine import START_TIMEOUT_SECONDS, Component, Engine, LabError
from picscale.lab.engines.postgres import DATABASE, PG_BIN, create_database, server_user
from picscale.lab.layout import Layout
from picscale.lab.probes import json_at
from picscale.procs import alive

PATRONI_NODES = 3

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


def _nodes() -> range:
    return range(1, PATRONI_NODES + 1)


def _node_dir(layout: Layout, n: int) -> Path:
    return layout.root / f"patroni{n}"


def _following(api: str) -> bool:
    """A Patroni node (its REST API at ``api``) runs PostgreSQL as the primary, or as a
    replica the primary streams to. Patroni's own /health is not enough: a former primary
    starts as a replica, then stops a moment later to be rewound before it can follow."""
    status, me = json_at(f"{api}/patroni")
    if status != 200 or me.get("state") != "running":
        return False
    if me.get("role") in ("master", "primary"):
        return True
    members = json_at(f"{api}/cluster")[1].get("members", [])
    name = next((m["name"] for m in members if m.get("api_url") == f"{api}/patroni"), None)
    leader = next((m for m in members if m.get("role") == "leader"), None)
    if name is None or leader is None:
        return False
    replication = json_at(leader["api_url"])[1].get("replication", [])
    return any(
        r.get("application_name") == name and r.get("state") == "streaming" for r in replication
    )


def _role(layout: Layout, n: int) -> str:
    """The node's role, and a replica's lag in bytes."""
    api = layout.url(f"patroni{n}")
    role = str(json_at(f"{api}/patroni")[1].get("role", "?")).replace("master", "primary")
    if role == "primary":
        return "primary"
    members = json_at(f"{api}/cluster")[1].get("members", [])
    lag = next((m.get("lag") for m in members if m.get("name") == f"pg{n}"), None)
    return f"{role}, lag {lag} bytes" if lag is not None else role


def leader_node(layout: Layout) -> int | None:
    """The number of the Patroni node that is primary now."""
    for n in _nodes():
        if json_at(layout.url(f"patroni{n}") + "/primary")[0] == 200:
            return n
    return None


def _create_database_on_leader(layout: Layout) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        leader = leader_node(layout)
        if leader is not None:
            create_database(layout.ports[f"pg{leader}"])
            return
        time.sleep(0.2)  # Patroni is electing a leader
    raise LabError(f"no Patroni leader after {START_TIMEOUT_SECONDS:g} s: see `lab logs`")


def _postmaster(layout: Layout, n: int) -> int | None:
    """The PostgreSQL the node runs (in a process session of its own), if it runs."""
    pidfile = _node_dir(layout, n) / "data" / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def _database_url(layout: Layout) -> str:
    """Every node: the driver finds the one that takes writes."""
    hosts = ",".join(f"127.0.0.1:{layout.ports[f'pg{n}']}" for n in _nodes())
    return f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs=read-write"


def _patroni_url(layout: Layout) -> str:
    return ",".join(layout.url(f"patroni{n}") for n in _nodes())


@dataclass(frozen=True)
class Patroni(Engine):
    def port_names(self) -> tuple[str, ...]:
        return (*(f"pg{n}" for n in _nodes()), *(f"patroni{n}" for n in _nodes()))

    def components(self, layout: Layout) -> list[Component]:
        return [
            Component(
                name=f"patroni{n}",
                role="PostgreSQL under Patroni",
                command=["patroni", str(_node_dir(layout, n) / "patroni.yml")],
                port=layout.ports[f"pg{n}"],
                healthy=partial(_following, layout.url(f"patroni{n}")),
                figure=partial(_role, layout, n),
                # the first node to start is the leader: the database is created on it
                provision=partial(_create_database_on_leader, layout) if n == 1 else None,
                detached=partial(_postmaster, layout, n),
                user=server_user(),
            )
            for n in _nodes()
        ]

    def prepare(self, layout: Layout, say: Callable[[str], None]) -> None:
        """Each node's directory (owned by postgres when we are root) and configuration."""
        for n in _nodes():
            node = _node_dir(layout, n)
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

    def app_env(self, layout: Layout) -> dict[str, str]:
        return {
            "PICSCALE_DATABASE_URL": _database_url(layout),
            # reads go to the replicas Patroni reports
            "PICSCALE_DATABASE_PATRONI_URL": _patroni_url(layout),
        }

    def urls(self, layout: Layout) -> dict[str, str]:
        return {"PostgreSQL": _database_url(layout), "Patroni": _patroni_url(layout)}
