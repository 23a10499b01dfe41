"""An operator's mistakes get one clear line, before anything starts: a port already
served, a malformed tier URL, a data directory without a database; and ``serve`` says
it serves once it does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.picscale_server import Process, base_env, running_server, start_process
from tests.support.ports import free_port
from tests.support.waiting import wait_until

# every command that reads the settings: each must stop on a malformed tier URL
COMMANDS = [
    ["serve", "--port", "0"],  # (the port is never reached: the URL stops it first)
    ["worker"],
    ["migrate"],
    ["jobs", "dead", "list"],
    ["jobs", "dead", "retry", "--all"],
    ["jobs", "dead", "purge", "--yes"],
    ["shards", "status"],
    ["media", "migrate", "--to", "file:///tmp/nowhere"],
]

# one malformed value of every tier URL, and what its message must offer instead
BAD_URLS = {
    "database_url": ("bogus://x", "sqlite:///"),
    "database_replica_urls": ("mysql://h/db", "postgresql://"),
    "database_patroni_url": ("ftp://h:8008", "http://"),
    "shard_map_url": ("zk://h:2181/map", "etcd://"),
    "cache_url": ("redis://h:notaport/0", "memory://"),
    "session_url": ("memcached://h:11211", "database://"),
    "queue_url": ("sqs://queue", "amqp://"),
    "storage_url": ("ftp://h/media", "s3://"),
    "cdn_url": ("varnish://h", "http"),
    "cdn_purge_url": ("edge", "http"),
}


def _run_all(
    runs: list[tuple[list[str], dict[str, str]]], cwd: Path
) -> list[subprocess.CompletedProcess[str]]:
    """The commands run at once (each is a Python start-up: seconds on a busy machine)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "picscale", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, env in runs
    ]
    done = []
    for (args, _), proc in zip(runs, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += "\n(still running after 120 s: killed)"
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def _one_line_error(result: subprocess.CompletedProcess[str], *wanted: str) -> str:
    what = f"picscale {' '.join(result.args)}: exit {result.returncode}\n{result.stderr}"
    assert result.returncode in (1, 2), what
    assert "Traceback" not in result.stderr, what
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, what
    for text in wanted:
        assert text in lines[0], what
    return lines[0]


def test_a_malformed_tier_url_stops_every_command_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runs = [(args, base_env(data, cache_url="bogus://x", job_workers=0)) for args in COMMANDS]
    for result in _run_all(runs, tmp_path):
        _one_line_error(result, "PICSCALE_CACHE_URL", "'bogus'", "memory://", "redis://")
    assert not data.exists()  # nothing was started, not even a database created


def test_every_tier_url_is_checked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runs = [(["migrate"], base_env(data, **{name: value})) for name, (value, _) in BAD_URLS.items()]
    results = _run_all(runs, tmp_path)
    for (name, (_, offered)), result in zip(BAD_URLS.items(), results, strict=True):
        _one_line_error(result, f"PICSCALE_{name.upper()}", offered)
    assert not data.exists()


def test_a_url_password_is_not_repeated_in_the_error(tmp_path: Path) -> None:
    env = base_env(tmp_path, queue_url="amqp://picscale:hunter2-secret@host:notaport/")
    (result,) = _run_all([(["migrate"], env)], tmp_path)
    line = _one_line_error(result, "PICSCALE_QUEUE_URL", "port")
    assert "hunter2-secret" not in line


@pytest.mark.parametrize(
    "command",
    [
        ["worker"],
        ["jobs", "dead", "list"],
        ["jobs", "dead", "retry", "--all"],
        ["jobs", "dead", "purge", "--yes"],
        ["shards", "status"],
    ],
    ids=lambda c: " ".join(c),
)
def test_a_data_directory_without_a_database_is_said_so(tmp_path: Path, command: list[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (result,) = _run_all([([*command, "--data-dir", str(empty)], base_env(empty))], tmp_path)
    _one_line_error(result, f"no database in {empty}", "picscale migrate")
    assert list(empty.iterdir()) == []  # no empty database left behind


def test_migrate_creates_the_database_the_commands_need(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = base_env(data)
    (migrated,) = _run_all([(["migrate"], env)], tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    (listed,) = _run_all([(["jobs", "dead", "list"], env)], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "no dead jobs"


def _exit_code(process: Process, timeout: float = 60.0) -> int:
    wait_until(lambda: process.proc.poll() is not None, timeout=timeout, what="serve to exit")
    code = process.proc.returncode
    assert code is not None
    return code


def test_serve_on_a_port_already_served_exits_with_a_clear_error(tmp_path: Path) -> None:
    with running_server(tmp_path / "first", job_workers=0) as first:
        port = first.url.rpartition(":")[2]
        second_dir = tmp_path / "second"
        second = start_process(
            ["serve", "--port", port, "--job-workers", "0"],
            base_env(second_dir),
            tmp_path / "second.log",
        )
        try:
            code = _exit_code(second)
        finally:
            second.stop()
        log = second.log()
        assert code == 1, log
        assert f"127.0.0.1:{port} is already in use" in log
        assert len(log.strip().splitlines()) == 1, log
        assert not (second_dir / "picscale.db").exists()  # refused before migrating
        assert first.client().get("/readyz").status_code == 200


def test_two_servers_started_at_once_on_one_port_one_refuses(tmp_path: Path) -> None:
    """Before either listens (granian takes seconds to bind, on a busy machine): the port
    is held from the first moment, so the second cannot slip in meanwhile."""
    port = str(free_port())
    servers = [
        start_process(
            ["serve", "--port", port, "--job-workers", "0"],
            base_env(tmp_path / name),
            tmp_path / f"{name}.log",
        )
        for name in ("a", "b")
    ]
    try:
        exited = wait_until(
            lambda: [s for s in servers if s.proc.poll() is not None],
            timeout=60,
            what="one of the two servers to give up",
        )
        assert len(exited) == 1, [s.log() for s in servers]
        (refused,) = exited
        assert refused.proc.returncode == 1
        assert "is already in use" in refused.log()
        (serving,) = [s for s in servers if s is not refused]

        def answering() -> bool:
            if serving.proc.poll() is not None:
                raise AssertionError(f"the other server exited too:\n{serving.log()}")
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200

        wait_until(answering, timeout=60, what="the other server to answer")
    finally:
        for server in servers:
            server.stop()


def test_serving_is_said_once_the_server_answers(tmp_path: Path) -> None:
    port = free_port()
    serve = start_process(
        ["serve", "--port", str(port), "--job-workers", "0"],
        base_env(tmp_path),
        tmp_path / "serve.log",
    )
    try:

        def said() -> bool:
            if serve.proc.poll() is not None:
                raise AssertionError(f"serve exited:\n{serve.log()}")
            return f"serving http://127.0.0.1:{port}" in serve.log()

        wait_until(said, timeout=60, what="serve to say it serves")
        # at once, without a retry: it answers by the time it says so
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        serve.stop()
