"""PostgreSQL on its own (stages 2 and 3): one server, initialised once."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from picscale.lab.engine import Component, Engine
from picscale.lab.layout import Layout

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASE = "picscale"


def server_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as the postgres user."""
    return "postgres" if os.geteuid() == 0 else None


def accepts_connections(port: int) -> bool:
    result = subprocess.run(
        [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"],
        check=False,
        timeout=10,
    )
    return result.returncode == 0


def query(port: int, sql: str, *, database: str = DATABASE, timeout: float = 10) -> list[str]:
    """The rows of ``sql`` on the server at ``port``, one line each (columns joined by |);
    [] if the server does not answer."""
    result = subprocess.run(
        [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
         "-d", database, "-Atqc", sql],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return result.stdout.splitlines() if result.returncode == 0 else []


def create_database(port: int) -> None:
    """The app's database on the server at ``port``, unless it is there already."""
    psql = [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-Atq"]
    exists = subprocess.run(
        [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if exists.stdout.strip() != "1":
        subprocess.run(
            [*psql, "-c", f"CREATE DATABASE {DATABASE}"],
            check=True,
            capture_output=True,
            timeout=30,
        )


def _data_dir(layout: Layout) -> Path:
    return layout.root / "postgres"


def _url(layout: Layout) -> str:
    return f"postgresql://postgres@127.0.0.1:{layout.ports['postgres']}/{DATABASE}"


@dataclass(frozen=True)
class Postgres(Engine):
    def port_names(self) -> tuple[str, ...]:
        return ("postgres",)

    def components(self, layout: Layout) -> list[Component]:
        port = layout.ports["postgres"]
        data = _data_dir(layout)
        return [
            Component(
                name="postgres",
                role="database primary",
                command=[
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={data}",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "log_line_prefix=%m [%p] ",
                ],
                port=port,
                healthy=partial(accepts_connections, port),
                provision=partial(create_database, port),
                user=server_user(),
                stop_signal="INT",  # PostgreSQL's fast shutdown
            )
        ]

    def prepare(self, layout: Layout, say: Callable[[str], None]) -> None:
        """initdb once, as the postgres user when we are root (PostgreSQL refuses root)."""
        say("  preparing PostgreSQL (initdb, once)…")
        data = _data_dir(layout)
        if (data / "PG_VERSION").exists():
            return
        data.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            layout.root.chmod(0o755)
            data.chmod(0o700)
            shutil.chown(data, entry.pw_uid, entry.pw_gid)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        subprocess.run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
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

    def app_env(self, layout: Layout) -> dict[str, str]:
        return {"PICSCALE_DATABASE_URL": _url(layout)}

    def urls(self, layout: Layout) -> dict[str, str]:
        return {"PostgreSQL": _url(layout)}
