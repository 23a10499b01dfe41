"""Alembic migrations run up and down on a real database file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support.pg import PostgresDatabase
from tests.support.picscale_server import base_env


def picscale(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "picscale", *args],
        env=base_env(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade(tmp_path: Path) -> None:
    up = picscale("migrate", "--data-dir", str(tmp_path), data_dir=tmp_path)
    assert up.returncode == 0, up.stderr
    db = tmp_path / "picscale.db"
    expected = {"users", "photos", "photo_versions", "follows", "jobs", "sessions"}
    assert expected <= tables(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    down = picscale("migrate", "--downgrade", "base", data_dir=tmp_path)
    assert down.returncode == 0, down.stderr
    assert tables(db) <= {"alembic_version", "sqlite_sequence"}

    again = picscale("migrate", data_dir=tmp_path)
    assert again.returncode == 0, again.stderr
    assert expected <= tables(db)


def test_every_command_has_help(tmp_path: Path) -> None:
    for command in ([], ["serve"], ["worker"], ["migrate"], ["version"]):
        result = picscale(*command, "--help", data_dir=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout
    serve_help = picscale("serve", "--help", data_dir=tmp_path).stdout
    for option in ("--host", "--port", "--workers", "--job-workers", "--data-dir"):
        assert option in serve_help
    from picscale import __version__

    assert picscale("version", data_dir=tmp_path).stdout.strip() == __version__


def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    env = base_env(tmp_path, port="eighty")
    result = subprocess.run(
        [sys.executable, "-m", "picscale", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "PICSCALE_PORT" in result.stderr


def test_upgrade_downgrade_upgrade_on_postgresql(
    tmp_path: Path, postgres: PostgresDatabase
) -> None:
    env = base_env(tmp_path, database_url=postgres.url)

    def migrate(*args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "picscale", "migrate", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    def pg_tables() -> set[str]:
        out = postgres.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return set(out.split())

    expected = {"users", "photos", "photo_versions", "follows", "jobs", "sessions"}
    migrate()
    assert expected <= pg_tables()
    migrate("--downgrade", "base")
    assert pg_tables() <= {"alembic_version"}
    migrate()
    assert expected <= pg_tables()
    assert postgres.sql("SELECT count(*) FROM alembic_version") == "1"
