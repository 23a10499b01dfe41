"""A real Patroni cluster for tests: one etcd, PostgreSQL nodes managed by Patroni.

Patroni (Debian's package) runs each node as the ``postgres`` user when the tests run
as root; everything listens on free loopback ports under temporary directories, and
every process is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from picscale.lab.engines.patroni import patroni_node_config
from tests.support.pg import PG_BIN, _as_postgres, _owned_dir
from tests.support.ports import free_port
from tests.support.waiting import wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as dead: it no longer serves anything
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@dataclass
class Etcd:
    root: Path
    client_port: int
    peer_port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "etcd.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "etcd",
                "--name=e1",
                f"--data-dir={self.root / 'data'}",
                f"--listen-client-urls=http://127.0.0.1:{self.client_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.client_port}",
                f"--listen-peer-urls=http://127.0.0.1:{self.peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peer_port}",
                f"--initial-cluster=e1=http://127.0.0.1:{self.peer_port}",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{self.client_port}/health").status_code == 200,
            timeout=30,
            what="etcd",
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


@dataclass
class PatroniNode:
    name: str
    root: Path
    pg_port: int
    api_port: int
    config: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        log = (self.root / "patroni.log").open("ab")
        self.proc = subprocess.Popen(
            ["patroni", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as_postgres(),
        )
        log.close()

    def state(self) -> dict[str, Any]:
        try:
            body: dict[str, Any] = httpx.get(self.api + "/patroni", timeout=2).json()
        except (httpx.HTTPError, json.JSONDecodeError):
            return {}
        return body

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL Patroni and the postmaster: the machine is gone."""
        postmaster = self.postmaster_pid()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if postmaster is not None:
            # its backends notice the postmaster's death and exit on their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGKILL)
            wait_until(lambda: not _alive(postmaster), timeout=30, what="the postmaster to die")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # Patroni stops its PostgreSQL
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        postmaster = self.postmaster_pid()
        if postmaster is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGINT)


@dataclass
class PatroniCluster:
    root: Path
    etcd: Etcd
    nodes: list[PatroniNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.pg_port}" for n in self.nodes)
        return f"postgresql://postgres@{hosts}/picscale?target_session_attrs=read-write"

    def leader(self) -> PatroniNode | None:
        for node in self.nodes:
            if (
                node.state().get("role") in ("master", "primary")
                and node.state().get("state") == "running"
            ):
                return node
        return None

    def wait_leader(self, timeout: float = 90) -> PatroniNode:
        node: PatroniNode = wait_until(self.leader, timeout=timeout, interval=0.2, what="leader")
        return node

    def wait_streaming(self, node: PatroniNode, timeout: float = 120) -> None:
        def streaming() -> bool:
            state = node.state()
            return state.get("state") in ("running", "streaming") and state.get("role") in (
                "replica",
                "sync_standby",
            )

        wait_until(streaming, timeout=timeout, interval=0.2, what=f"{node.name} replicating")

    def wait_sync_standby(self, timeout: float = 60) -> None:
        """Until synchronous mode has picked a standby: commits then wait for it."""

        def picked() -> bool:
            leader = self.leader()
            if leader is None:
                return False
            members = httpx.get(leader.api + "/cluster", timeout=2).json().get("members", [])
            return any(m.get("role") == "sync_standby" for m in members)

        wait_until(picked, timeout=timeout, interval=0.2, what="a synchronous standby")

    def psql(self, node: PatroniNode, statement: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(node.pg_port),
                "-U",
                "postgres",
                "-d",
                database,
                "-Atq",
                "-c",
                statement,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            **_as_postgres(),
        )
        return out.stdout.strip()

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        self.etcd.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_patroni_cluster(size: int = 2) -> PatroniCluster:
    root = _owned_dir("picscale-patroni-")
    etcd_root = root / "etcd"
    etcd_root.mkdir()
    etcd = Etcd(etcd_root, free_port(), free_port())
    etcd.start()
    cluster = PatroniCluster(root, etcd)
    for i in range(size):
        name = f"node{i + 1}"
        node_root = root / name
        node_root.mkdir()
        if os.geteuid() == 0:
            shutil.chown(node_root, "postgres", "postgres")
        pg_port, api_port = free_port(), free_port()
        config = patroni_node_config(
            scope="picscale",
            name=name,
            node_dir=node_root,
            pg_port=pg_port,
            api_port=api_port,
            etcd_port=etcd.client_port,
            log_level="WARNING",
        )
        path = node_root / "patroni.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        node = PatroniNode(name, node_root, pg_port, api_port, path)
        cluster.nodes.append(node)
    try:
        cluster.nodes[0].start()
        leader = cluster.wait_leader()
        for node in cluster.nodes[1:]:
            node.start()
        for node in cluster.nodes[1:]:
            cluster.wait_streaming(node)
        cluster.wait_sync_standby()
        cluster.psql(leader, "CREATE DATABASE picscale")
    except BaseException:
        for node in cluster.nodes:
            print((node.root / "patroni.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        cluster.close()
        raise
    return cluster
