"""The cache (from stage 5): Redis, a replica and 3 Sentinels that fail the master over.
From stage 6 it holds the sessions too."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from picscale.lab.engine import Component, Engine
from picscale.lab.layout import Layout
from picscale.lab.probes import ask

REDIS_MASTER = "picscale"  # the name the Sentinels know the cache's master by
NODES = ("redis1", "redis2")  # the master to begin with, and its replica
SENTINELS = 3


def _sentinels() -> range:
    return range(1, SENTINELS + 1)


def _folder(layout: Layout) -> Path:
    return layout.root / "redis"


def _pings(port: int) -> bool:
    return ask(port, b"PING\r\n").startswith(b"+PONG")


def master(layout: Layout, sentinel_port: int) -> str:
    """The node the Sentinel at ``sentinel_port`` names master (its port if no node of
    the lab has it)."""
    reply = ask(sentinel_port, f"SENTINEL get-master-addr-by-name {REDIS_MASTER}\r\n".encode())
    port = int(reply.split(b"\r\n")[4])
    return next((node for node in NODES if layout.ports[node] == port), str(port))


def _info(port: int, section: str) -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while b"\r\n" not in data or len(data) < _bulk_length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    text = data.split(b"\r\n", 1)[1].decode(errors="replace")
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: v.strip() for k, v in pairs}


def _bulk_length(data: bytes) -> int:
    """How long a RESP bulk string reply is, header and trailer included."""
    header, _, _ = data.partition(b"\r\n")
    return len(header) + 2 + int(header[1:]) + 2


def _node_figure(port: int) -> str:
    """Its role, its replicas or its link to the master, and its hit ratio."""
    info = _info(port, "replication") | _info(port, "stats")
    role = info.get("role", "?").replace("master", "primary")
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    ratio = f", hit ratio {hits / (hits + misses):.0%}" if hits + misses else ""
    if role == "slave":
        return f"replica, link {info.get('master_link_status', '?')}{ratio}"
    return f"{role}, {info.get('connected_slaves', '0')} replicas{ratio}"


def _sentinel_figure(layout: Layout, port: int) -> str:
    return f"master is {master(layout, port)}"


def _write_once(path: Path, text: str) -> None:
    """A configuration its server rewrites as it runs (Redis, Sentinel): written only the
    first time, so a restart keeps what the server learnt (who is master now)."""
    if not path.exists():
        path.write_text(text)


def _url(layout: Layout) -> str:
    """The master the Sentinels name."""
    hosts = ",".join(f"127.0.0.1:{layout.ports[f'sentinel{n}']}" for n in _sentinels())
    return f"redis+sentinel://{hosts}/{REDIS_MASTER}/0"


@dataclass(frozen=True)
class Redis(Engine):
    sessions: bool = False  # the sessions live in it too, shared by every web server

    def port_names(self) -> tuple[str, ...]:
        return (*NODES, *(f"sentinel{n}" for n in _sentinels()))

    def components(self, layout: Layout) -> list[Component]:
        out = [
            Component(
                name=node,
                role="cache (Redis)",
                command=["redis-server", str(_folder(layout) / f"{node}.conf")],
                port=layout.ports[node],
                healthy=partial(_pings, layout.ports[node]),
                figure=partial(_node_figure, layout.ports[node]),
            )
            for node in NODES
        ]
        for n in _sentinels():
            port = layout.ports[f"sentinel{n}"]
            out.append(
                Component(
                    name=f"sentinel{n}",
                    role="Redis Sentinel (fails the cache's master over)",
                    command=[
                        "redis-server",
                        str(_folder(layout) / f"sentinel{n}.conf"),
                        "--sentinel",
                    ],
                    port=port,
                    healthy=partial(_pings, port),
                    figure=partial(_sentinel_figure, layout, port),
                )
            )
        return out

    def prepare(self, layout: Layout, say: Callable[[str], None]) -> None:
        """Redis's own configuration files, which it and the Sentinels rewrite as roles
        change, so a restart keeps the roles."""
        folder = _folder(layout)
        folder.mkdir(parents=True, exist_ok=True)
        master_port = layout.ports[NODES[0]]
        for node in NODES:
            lines = [
                f"port {layout.ports[node]}",
                "bind 127.0.0.1",
                f"dir {folder}",
                f"dbfilename {node}.rdb",
                'save ""',
                "appendonly no",
                "maxmemory 256mb",
                # cache entries and sessions both carry a TTL: only those are ever evicted
                "maxmemory-policy volatile-lru",
            ]
            if node != NODES[0]:
                lines.append(f"replicaof 127.0.0.1 {master_port}")
            _write_once(folder / f"{node}.conf", "\n".join(lines) + "\n")
        for n in _sentinels():
            _write_once(
                folder / f"sentinel{n}.conf",
                f"port {layout.ports[f'sentinel{n}']}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {REDIS_MASTER} 127.0.0.1 {master_port} 2\n"
                # a lab shows failover in seconds: down after 1 s, 2 of 3 agreeing
                f"sentinel down-after-milliseconds {REDIS_MASTER} 1000\n"
                f"sentinel failover-timeout {REDIS_MASTER} 5000\n"
                f"sentinel parallel-syncs {REDIS_MASTER} 1\n",
            )

    def app_env(self, layout: Layout) -> dict[str, str]:
        env = {"PICSCALE_CACHE_URL": _url(layout)}
        if self.sessions:
            env["PICSCALE_SESSION_URL"] = _url(layout)
        return env

    def urls(self, layout: Layout) -> dict[str, str]:
        return {"Redis": _url(layout)}
