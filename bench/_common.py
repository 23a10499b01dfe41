"""Shared bits of the HTTP benchmarks: start real processes, talk to the API, report.

Every process is started in its own session (process group) and stopped by that group's
id, never by name. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# `python bench/x.py` puts bench/ on the import path, not the repository: the servers'
# harnesses are the tests' own (tests/support), imported as the tests import them
REPOSITORY = Path(__file__).resolve().parent.parent
if str(REPOSITORY) not in sys.path:
    sys.path.insert(1, str(REPOSITORY))

START_TIMEOUT = 60.0
HOST = "127.0.0.1"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}: {last_error}")


def pinned(cpu: int | None) -> list[str]:
    """A ``taskset -c CPU`` prefix, or nothing if taskset or that CPU is missing."""
    if cpu is None or shutil.which("taskset") is None or cpu >= (os.cpu_count() or 1):
        return []
    return ["taskset", "-c", str(cpu)]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICSCALE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


class Process:
    """A process this script started: its own process group, stopped by the group id."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                list(args),
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.proc.args!r} exited early:\n{self.log()}")

    def stop(self, timeout: float = 45.0) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_http_ok(process: Process, url: str, what: str) -> None:
    def ok() -> bool:
        process.check_alive()
        return httpx.get(url, timeout=2).status_code == 200

    try:
        wait_until(ok, timeout=START_TIMEOUT, interval=0.1, what=what)
    except BaseException:
        process.stop()
        raise


def start_picscale(
    data_dir: Path,
    *,
    workers: int = 1,
    job_workers: int = 1,
    cpu: int | None = None,
    **settings: Any,
) -> tuple[str, Process]:
    """``picscale serve`` on a free loopback port; returns (base url, process)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = clean_env(PICSCALE_DATA_DIR=str(data_dir), PICSCALE_LOG_LEVEL="warning")
    for key, value in settings.items():
        env["PICSCALE_" + key.upper()] = str(value)
    args = [
        *pinned(cpu),
        sys.executable, "-m", "picscale", "serve",
        "--host", HOST,
        "--port", str(port),
        "--workers", str(workers),
        "--job-workers", str(job_workers),
    ]  # fmt: skip
    process = Process(args, env, data_dir / f"serve-{port}.log")
    url = f"http://{HOST}:{port}"
    wait_http_ok(process, url + "/readyz", "picscale serve to be ready")
    return url, process


# -- the API ---------------------------------------------------------------------------


BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password-1"


def sign_up(client: httpx.Client, username: str = BENCH_USER) -> str:
    """Create a user and log in; returns the bearer token."""
    password = BENCH_PASSWORD
    r = client.post("/api/v1/users", json={"username": username, "password": password})
    r.raise_for_status()
    r = client.post("/api/v1/sessions", json={"username": username, "password": password})
    r.raise_for_status()
    token: str = r.json()["token"]
    client.headers["Authorization"] = f"Bearer {token}"
    return token


def upload(client: httpx.Client, data: bytes, caption: str = "bench") -> str:
    r = client.post(
        "/api/v1/photos",
        files={"file": ("photo.jpg", data, "image/jpeg")},
        data={"caption": caption},
    )
    r.raise_for_status()
    photo_id: str = r.json()["id"]
    return photo_id


def wait_photo_ready(client: httpx.Client, photo_id: str, timeout: float = 120.0) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/v1/photos/{photo_id}").raise_for_status().json()
        if body["status"] == "failed":
            raise RuntimeError(f"photo {photo_id} failed to render: {body}")
        return body if body["status"] == "ready" else None

    result: dict[str, Any] = wait_until(
        ready, timeout=timeout, interval=0.05, what=f"photo {photo_id} to be ready"
    )
    return result


# -- reporting -------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile of ``values`` (fraction in 0..1)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def machine_note() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


# -- wrk -------------------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx/3xx responses plus socket errors


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in", output, re.M)
    if not (rps and p50 and p99 and total):
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    bad = 0
    if non2xx := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        bad += int(non2xx.group(1))
    if sock := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        bad += sum(int(g) for g in sock.groups())
    return WrkResult(
        float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), int(total.group(1)), bad
    )


def run_wrk(
    wrk: str,
    url: str,
    *,
    duration: float,
    connections: int,
    cpu: int | None,
    script: Path | None = None,
    script_args: Sequence[str] = (),
) -> WrkResult:
    """One wrk run (one thread); ``script`` is a Lua file that makes the requests."""
    lua = ["-s", str(script)] if script else []
    args = [
        *pinned(cpu),
        wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", *lua, url,
        *(["--", *script_args] if script_args else []),
    ]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=duration + 60)
    return parse_wrk(out.stdout)


# -- in-process services and shard layouts (stage 9 benchmarks) -------------------------


def tiny_jpeg(seed: int, size: int = 48) -> bytes:
    """A small JPEG, different for each ``seed`` (an upload that costs little to render)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), (seed % 256, (seed // 256) % 256, 160)).save(out, "JPEG")
    return out.getvalue()


def layout_url(urls: Sequence[str]) -> str:
    """``c1=URL;c2=URL;…``: a shard layout of one cluster per URL."""
    return ";".join(f"c{i}={url}" for i, url in enumerate(urls, start=1))


def migrate(data_dir: Path, **settings: Any) -> None:
    """Every cluster of the layout upgraded to the newest schema (as ``serve`` does)."""
    from picscale.settings import load_settings
    from picscale.tiers.db.migrate import upgrade

    upgrade(load_settings({}, data_dir=data_dir, **settings))


def quiet_logs() -> None:
    """The service's log lines in this process: warnings and worse only, on stderr (the
    table goes to stdout)."""
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


class InProcess:
    """The service's tiers and domain built in this process (``build_services``), for
    benchmarks that call the domain directly: ``async with InProcess(dir, **settings)``."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        from picscale.settings import load_settings

        quiet_logs()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = load_settings({}, data_dir=data_dir, **settings)

    async def __aenter__(self) -> Any:
        from picscale.services import build_services

        self.services = build_services(self.settings)
        await self.services.start()
        return self.services

    async def __aexit__(self, *exc: object) -> None:
        await self.services.close()


# -- bulk seeding by SQL (what a benchmark does not time) ------------------------------

_minted = iter(range(1 << 62))
_minted_base_ms = 0


def past_id(shard: int) -> int:
    """A sharded id on ``shard``, as if minted an hour ago (unique within this process;
    ids minted by the service are newer, so they sort after these)."""
    from picscale.ids import EPOCH_MS, compose

    global _minted_base_ms
    if not _minted_base_ms:
        _minted_base_ms = time.time_ns() // 1_000_000 - EPOCH_MS - 3_600_000
    n = next(_minted)
    return compose(_minted_base_ms + n // 1024, shard, n % 1024)


async def insert_bulk(
    db: Any, table: Any, rows: Sequence[dict[str, Any]], *, no_fk: bool = False
) -> None:
    """``rows`` into ``table`` on cluster ``db`` (a ``Database``), 5,000 a statement;
    ``no_fk``: foreign keys unchecked (PostgreSQL's replica role, as a bulk load)."""
    from sqlalchemy import insert, text

    for start in range(0, len(rows), 5000):
        async with db.write() as tx:
            if no_fk:
                await tx.conn.execute(text("SET LOCAL session_replication_role = replica"))
            await tx.conn.execute(insert(table), list(rows[start : start + 5000]))


async def insert_routed(
    route: Callable[[int], Any],
    table: Any,
    rows: Sequence[dict[str, Any]],
    key: str,
    *,
    no_fk: bool = False,
) -> None:
    """``rows`` each on the cluster ``route(row[key])`` names, the clusters in parallel."""
    import asyncio

    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(route(row[key]), []).append(row)
    await asyncio.gather(*(insert_bulk(db, table, g, no_fk=no_fk) for db, g in groups.items()))


async def seed_accounts(
    route: Callable[[int], Any],
    home: Any,
    count: int,
    *,
    photos_each: int,
    prefix: str,
    shards: Sequence[int] | None = None,
    password_hash: str = "!",  # noqa: S107 (no password matches it)
) -> tuple[list[tuple[int, str]], list[int]]:
    """``count`` accounts with ``photos_each`` ready photos each, on random logical shards
    (of ``shards`` if given); returns ([(id, name)], photo ids). With the default
    ``password_hash`` no password logs in."""
    import random
    from datetime import UTC, datetime

    from picscale.data.schema import photos, usernames, users
    from picscale.ids import shard_of

    now = datetime.now(UTC)
    choices = list(shards) if shards is not None else list(range(8192))
    accounts = [(past_id(random.choice(choices)), f"{prefix}{i}") for i in range(count)]
    photo_rows = [
        {
            "id": past_id(shard_of(user_id)),
            "owner_id": user_id,
            "caption": "",
            "format": "jpeg",
            "status": "ready",
            "version": 1,
            "next_version": 2,
            "width": 48,
            "height": 48,
            "created_at": now,
        }
        for user_id, _ in accounts
        for _ in range(photos_each)
    ]
    await insert_bulk(
        home,
        usernames,
        [{"username": name, "user_id": i, "created_at": now} for i, name in accounts],
    )
    user_rows = [
        {
            "id": i,
            "username": name,
            "display_name": name,
            "password_hash": password_hash,
            "created_at": now,
        }
        for i, name in accounts
    ]
    await insert_routed(route, users, user_rows, "id")
    await insert_routed(route, photos, photo_rows, "owner_id")
    return accounts, [row["id"] for row in photo_rows]
