"""PostgreSQL under Patroni (from stage 4): a primary and 2 streaming replicas, with etcd
holding the leader key, so that a replica is promoted when the primary dies. From stage 9
a second cluster (``c2``: a primary and a replica, its own Patroni scope in the same
etcd) holds half the logical shards: the web servers and workers get the layout of both,
and the shard map lives in etcd."""

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

from picscale.data.schema import SHARDED
from picscale.lab.engine import START_TIMEOUT_SECONDS, Component, Engine, LabError
from picscale.lab.engines.postgres import DATABASE, PG_BIN, create_database, query, server_user
from picscale.lab.layout import Layout
from picscale.lab.probes import json_at
from picscale.procs import alive

PATRONI_NODES = 3  # the first cluster's; a shard cluster added at stage 9 has 2
SHARD_MAP_KEY = "/picscale/shard-map"  # in the lab's etcd, from stage 9

# quick failover for a demonstration: the leader key lives 10 s, nodes look every second
PATRONI_DCS = {
    "ttl": 10,
    "loop_wait": 1,
    "retry_timeout": 5,
    "maximum_lag_on_failover": 1048576,
    "synchronous_mode": True,  # an acknowledged commit is on a standby too
    # a shard move's slots (its own and its table-sync workers') are made outside
    # Patroni, which drops the slots it does not know of unless told to leave them
    "ignore_slots": [{"type": "logical"}],
    "postgresql": {
        "use_pg_rewind": True,
        "use_slots": True,
        "parameters": {
            # logical: a shard move streams rows to another cluster (stage 9)
            "wal_level": "logical",
            "hot_standby": "on",
            "wal_log_hints": "on",
            # replicas, plus a move's walsender and table-sync workers (a subscriber
            # counts its replication origins against max_replication_slots too)
            "max_wal_senders": 20,
            "max_replication_slots": 20,
            "max_logical_replication_workers": 8,
            "max_worker_processes": 16,
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


def shard_clusters(layout: Layout) -> list[Patroni]:
    """The stage's Patroni clusters, in the order of the shard layout (one before
    stage 9)."""
    return [e for e in layout.stage.engines if isinstance(e, Patroni)]


def sharded(layout: Layout) -> bool:
    return len(shard_clusters(layout)) > 1


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


def cluster_rows(port: int) -> int | None:
    """The rows of the sharded tables on the server at ``port``, counted (a lab's tables
    are small; the statistics' estimates start again from nothing on a promoted replica)."""
    counts = " + ".join(f"(SELECT count(*) FROM {table})" for table in SHARDED)
    rows = query(port, f"SELECT {counts}")
    return int(rows[0]) if rows else None


def commits_per_second(layout: Layout, port: int) -> float | None:
    """Transactions committed per second in the app's database on the server at ``port``
    over the last minute, from Prometheus (its PostgreSQL exporter); None without it."""
    if "prometheus" not in layout.ports:
        return None
    selector = f'datname="{DATABASE}",server="127.0.0.1:{port}"'
    status, body = json_at(
        layout.url("prometheus")
        + "/api/v1/query?query="
        + f"rate(pg_stat_database_xact_commit%7B{selector}%7D%5B1m%5D)"
    )
    values = body.get("data", {}).get("result", []) if status == 200 else []
    return float(values[0]["value"][1]) if values else None


@dataclass(frozen=True)
class Patroni(Engine):
    """One Patroni cluster: ``c1`` (stage 4 on, 3 nodes), and from stage 9 a second shard
    cluster (``c2``, 2 nodes) with a Patroni scope of its own in the same etcd."""

    cluster: str = "c1"
    nodes: int = PATRONI_NODES

    # -- names and addresses --------------------------------------------------------------

    def node(self, n: int) -> str:
        """Node ``n``'s component (and the name of its REST API's port, and its directory)."""
        return f"patroni{n}" if self.cluster == "c1" else f"{self.cluster}-patroni{n}"

    def pg(self, n: int) -> str:
        """The name of node ``n``'s PostgreSQL port."""
        return f"pg{n}" if self.cluster == "c1" else f"{self.cluster}-pg{n}"

    @property
    def scope(self) -> str:
        return "picscale-lab" if self.cluster == "c1" else f"picscale-lab-{self.cluster}"

    def numbers(self) -> range:
        return range(1, self.nodes + 1)

    def node_dir(self, layout: Layout, n: int) -> Path:
        return layout.root / self.node(n)

    def database_url(self, layout: Layout) -> str:
        """Every node: the driver finds the one that takes writes."""
        hosts = ",".join(f"127.0.0.1:{layout.ports[self.pg(n)]}" for n in self.numbers())
        return f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs=read-write"

    def patroni_url(self, layout: Layout) -> str:
        return ",".join(layout.url(self.node(n)) for n in self.numbers())

    # -- its state ------------------------------------------------------------------------

    def leader(self, layout: Layout) -> int | None:
        """The number of the node that is primary now."""
        for n in self.numbers():
            if json_at(layout.url(self.node(n)) + "/primary")[0] == 200:
                return n
        return None

    def leader_port(self, layout: Layout) -> int | None:
        """The PostgreSQL port of the primary now."""
        n = self.leader(layout)
        return layout.ports[self.pg(n)] if n is not None else None

    def postmaster(self, layout: Layout, n: int) -> int | None:
        """The PostgreSQL node ``n`` runs (in a process session of its own), if it runs."""
        pidfile = self.node_dir(layout, n) / "data" / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def _role(self, layout: Layout, n: int) -> str:
        """The node's role and, from stage 9, a primary's load; a replica's lag in bytes."""
        api = layout.url(self.node(n))
        role = str(json_at(f"{api}/patroni")[1].get("role", "?")).replace("master", "primary")
        if role == "primary":
            if not sharded(layout):
                return "primary"
            port = layout.ports[self.pg(n)]
            commits, rows = commits_per_second(layout, port), cluster_rows(port)
            rate = f"{commits:.1f} commits/s" if commits is not None else "? commits/s"
            return f"primary of {self.cluster}, {rate}, {rows if rows is not None else '?'} rows"
        members = json_at(f"{api}/cluster")[1].get("members", [])
        lag = next((m.get("lag") for m in members if m.get("api_url") == f"{api}/patroni"), None)
        return f"{role}, lag {lag} bytes" if lag is not None else role

    def _create_database_on_leader(self, layout: Layout) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            port = self.leader_port(layout)
            if port is not None:
                create_database(port)
                return
            time.sleep(0.2)  # Patroni is electing a leader
        raise LabError(
            f"no Patroni leader in {self.cluster} after {START_TIMEOUT_SECONDS:g} s: see `lab logs`"
        )

    # -- the engine -----------------------------------------------------------------------

    def port_names(self) -> tuple[str, ...]:
        return (*(self.pg(n) for n in self.numbers()), *(self.node(n) for n in self.numbers()))

    def components(self, layout: Layout) -> list[Component]:
        role = "PostgreSQL under Patroni"
        if sharded(layout):
            role += f" (shard cluster {self.cluster})"
        return [
            Component(
                name=self.node(n),
                role=role,
                command=["patroni", str(self.node_dir(layout, n) / "patroni.yml")],
                port=layout.ports[self.pg(n)],
                healthy=partial(_following, layout.url(self.node(n))),
                figure=partial(self._role, layout, n),
                # the first node to start is the leader: the database is created on it
                provision=partial(self._create_database_on_leader, layout) if n == 1 else None,
                detached=partial(self.postmaster, layout, n),
                user=server_user(),
            )
            for n in self.numbers()
        ]

    def prepare(self, layout: Layout, say: Callable[[str], None]) -> None:
        """Each node's directory (owned by postgres when we are root) and configuration."""
        for n in self.numbers():
            node = self.node_dir(layout, n)
            node.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                layout.root.chmod(0o755)
                shutil.chown(node, "postgres", "postgres")
            config = patroni_node_config(
                scope=self.scope,
                name=f"pg{n}" if self.cluster == "c1" else f"{self.cluster}-pg{n}",
                node_dir=node,
                pg_port=layout.ports[self.pg(n)],
                api_port=layout.ports[self.node(n)],
                etcd_port=layout.ports["etcd"],
            )
            (node / "patroni.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML

    def app_env(self, layout: Layout) -> dict[str, str]:
        clusters = shard_clusters(layout)
        if len(clusters) == 1:
            return {
                "PICSCALE_DATABASE_URL": self.database_url(layout),
                # reads go to the replicas Patroni reports
                "PICSCALE_DATABASE_PATRONI_URL": self.patroni_url(layout),
            }
        # the shard layout: every cluster by name (the first holds the global tables),
        # the same from each cluster's engine
        return {
            "PICSCALE_DATABASE_URL": ";".join(
                f"{c.cluster}={c.database_url(layout)}" for c in clusters
            ),
            "PICSCALE_DATABASE_PATRONI_URL": ";".join(
                f"{c.cluster}={c.patroni_url(layout)}" for c in clusters
            ),
            "PICSCALE_SHARD_MAP_URL": shard_map_url(layout),
        }

    def urls(self, layout: Layout) -> dict[str, str]:
        if self.cluster == "c1":
            out = {"PostgreSQL": self.database_url(layout), "Patroni": self.patroni_url(layout)}
            return out | ({"Shard map": shard_map_url(layout)} if sharded(layout) else {})
        return {
            f"PostgreSQL {self.cluster}": self.database_url(layout),
            f"Patroni {self.cluster}": self.patroni_url(layout),
        }


def shard_map_url(layout: Layout) -> str:
    return f"etcd://127.0.0.1:{layout.ports['etcd']}{SHARD_MAP_KEY}"
