"""Redis with a replica and three Sentinels, for failover tests (same binaries, sentinel
mode), on free loopback ports, stopped by pid."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

MASTER = "picscale"


def _ask(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(command)
        return s.recv(4096)


@dataclass
class SentinelGroup:
    root: Path
    master: RedisServer
    replica: RedisServer
    sentinel_ports: list[int] = field(default_factory=list)
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def master_port(self) -> int:
        reply = _ask(
            self.sentinel_ports[0],
            b"SENTINEL get-master-addr-by-name " + MASTER.encode() + b"\r\n",
        )
        return int(reply.split(b"\r\n")[4])

    def close(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        self.master.close()
        self.replica.close()
        shutil.rmtree(self.root, ignore_errors=True)


def start_sentinel_group() -> SentinelGroup:
    root = Path(tempfile.mkdtemp(prefix="picscale-sentinel-"))
    master = RedisServer(root / "master", free_port(), maxmemory="0")
    master.root.mkdir()
    master.start()
    replica = RedisServer(root / "replica", free_port(), maxmemory="0")
    replica.root.mkdir()
    replica.extra = ["--replicaof", "127.0.0.1", str(master.port)]
    replica.start()
    wait_until(
        lambda: b"master_link_status:up" in _ask(replica.port, b"INFO replication\r\n"),
        what="the replica to sync",
    )
    group = SentinelGroup(root, master, replica)
    for i in range(3):
        port = free_port()
        conf = root / f"sentinel-{i}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {root}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        log = (root / f"sentinel-{i}.log").open("ab")
        group.sentinels.append(
            subprocess.Popen(
                ["redis-server", str(conf), "--sentinel"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()
        group.sentinel_ports.append(port)
    for port in group.sentinel_ports:
        wait_until(lambda p=port: _ask(p, b"PING\r\n").startswith(b"+PONG"), what="sentinel")
    return group
