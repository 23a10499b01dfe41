"""``picscale shards`` as an operator runs it: separate processes, on a layout of two
real PostgreSQL servers (the map in the first's table), with data signed up through the
service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.pg import PostgresServer, start_postgres


@dataclass
class Layout:
    env: dict[str, str]
    servers: tuple[PostgresServer, PostgresServer]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "picscale", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    first, second = start_postgres(), start_postgres()
    for server in (first, second):
        # a subscription's workers start this soon after CREATE SUBSCRIPTION (5 s default)
        server.sql("ALTER SYSTEM SET wal_retrieve_retry_interval = '100ms'", database="postgres")
        server.sql("SELECT pg_reload_conf()", database="postgres")
    data_dir = tmp_path_factory.mktemp("shards-cli")
    env = {
        **os.environ,
        "PICSCALE_DATA_DIR": str(data_dir),
        "PICSCALE_DATABASE_URL": f"c1={first.url};c2={second.url}",
        "PICSCALE_LOG_LEVEL": "warning",
    }
    made = Layout(env, (first, second))
    migrated = made.run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    yield made
    for server in (first, second):
        server.close()


STATUS_LINE = re.compile(r"^(c\d)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+(.+)$", re.M)


def clusters(status: str) -> dict[str, tuple[int, str]]:
    """{cluster: (logical shards, ranges)} from ``shards status``."""
    return {m[1]: (int(m[2]), m[4].strip()) for m in STATUS_LINE.finditer(status)}


def test_status_move_and_rebalance(layout: Layout) -> None:
    status = layout.run("shards", "status")
    assert status.returncode == 0, status.stderr
    assert "shard map v1" in status.stdout
    assert clusters(status.stdout) == {"c1": (4096, "0-4095"), "c2": (4096, "4096-8191")}

    moved = layout.run("shards", "move", "4096-8191", "--to", "c1")
    assert moved.returncode == 0, moved.stderr
    out = moved.stdout + moved.stderr
    assert "moved shards 4096-8191 from c2 to c1" in out and "write pause" in out
    after = clusters(layout.run("shards", "status").stdout)
    assert after["c1"] == (8192, "0-8191") and after.get("c2", (0, ""))[0] == 0

    plan = layout.run("shards", "rebalance", "--clusters", "2", "--dry-run")
    assert plan.returncode == 0 and "dry run: nothing moved" in plan.stdout + plan.stderr
    assert clusters(layout.run("shards", "status").stdout)["c1"][0] == 8192  # dry: no change

    done = layout.run("shards", "rebalance", "--clusters", "2")
    assert done.returncode == 0, done.stderr
    spread = clusters(layout.run("shards", "status").stdout)
    assert spread["c1"][0] > 0 and spread["c2"][0] > 0
    again = layout.run("shards", "rebalance", "--clusters", "2")
    assert "spread evenly already" in again.stdout + again.stderr


def test_errors_say_what_to_do(layout: Layout) -> None:
    resume = layout.run("shards", "move", "--resume")
    assert resume.returncode == 1 and "no move is under way" in resume.stderr
    unknown = layout.run("shards", "move", "0-10", "--to", "c9")
    assert unknown.returncode == 1 and "c1, c2" in unknown.stderr
    outside = layout.run("shards", "move", "9000", "--to", "c1")
    assert outside.returncode == 2 and "SHARDS" in outside.stderr
