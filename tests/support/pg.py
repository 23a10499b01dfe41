"""Real PostgreSQL servers for tests: initdb, a primary, streaming replicas.

Each server runs from Debian's binaries on a free loopback port, in a temporary
directory, as the ``postgres`` user when the tests run as root (PostgreSQL refuses
root), and is stopped by its pid.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.waiting import wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASE = "picscale"
_database_numbers = itertools.count(1)


def _as_postgres() -> dict[str, Any]:
    """Popen arguments that drop to the postgres user when we are root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _owned_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, check=True, capture_output=True, text=True, timeout=120, **_as_postgres(), **kwargs
    )


@dataclass
class PostgresServer:
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    replicas: list[PostgresServer] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> None:
        log = (self.root / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.root}",
                "-c",
                # test speed: durability on disk is not what these tests check (commits are
                # still flushed to WAL and streamed at once, as with the defaults)
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "wal_level=logical",  # shard moves stream rows by logical replication
                "-c",
                "hot_standby=on",
                "-c",
                "hot_standby_feedback=on",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as_postgres(),
        )
        log.close()
        wait_until(self.ready, timeout=60, interval=0.1, what=f"PostgreSQL on port {self.port}")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"postgres exited:\n{(self.root / 'postgres.log').read_text()}")
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
            timeout=10,
        )
        return result.returncode == 0

    def sql(self, statement: str, database: str = DATABASE) -> str:
        out = _run(
            [
                str(PG_BIN / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-Atq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                statement,
            ]
        )
        return out.stdout.strip()

    def stop(self, sig: signal.Signals = signal.SIGINT) -> None:
        """SIGINT is PostgreSQL's fast shutdown; SIGKILL simulates a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def add_replica(self) -> PostgresServer:
        """A streaming replica made with pg_basebackup -R, started and caught up."""
        replica = PostgresServer(_owned_dir("picscale-pg-replica-"), free_port())
        _run(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-D",
                str(replica.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ]
        )
        replica.start()
        self.replicas.append(replica)
        return replica

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> PostgresDatabase:
        """An empty database of its own on this (shared) server."""
        name = f"{DATABASE}_{next(_database_numbers)}"
        self.sql(f"CREATE DATABASE {name}", database="postgres")
        return PostgresDatabase(self, name)


@dataclass
class PostgresDatabase:
    """One database of a shared server: what a test module sees as its PostgreSQL."""

    server: PostgresServer
    name: str

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.server.port}/{self.name}"

    def sql(self, statement: str) -> str:
        return self.server.sql(statement, database=self.name)


def start_postgres() -> PostgresServer:
    server = PostgresServer(_owned_dir("picscale-pg-"), free_port())
    _run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(server.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]
    )
    server.start()
    server.sql(f"CREATE DATABASE {DATABASE}", database="postgres")
    return server
