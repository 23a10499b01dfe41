"""Real `picscale` processes (``serve``, ``worker``, ...) on free loopback ports, with their
data in a temporary directory, stopped by their process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port
from tests.support.waiting import POLL_INTERVAL, wait_until

START_TIMEOUT = 60.0


def base_env(data_dir: Path, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICSCALE_")}
    env["PICSCALE_DATA_DIR"] = str(data_dir)
    env["PICSCALE_LOG_LEVEL"] = "warning"
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    for key, value in settings.items():
        env["PICSCALE_" + key.upper()] = str(value)
    return env


@dataclass
class Process:
    """A process the test started; stopped by its own pid (its process group)."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 45.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._stop_leftovers()

    def _stop_leftovers(self, timeout: float = 10.0) -> None:
        """Its children can outlive it: a granian worker still starting up when the
        SIGTERM came never acts on it (seen on a busy machine, when a server took longer
        than START_TIMEOUT to be ready). What is left of the group goes too."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            if not _group_alive(self.proc.pid):
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            deadline = time.monotonic() + wait
            while _group_alive(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)  # polling the group, not a fixed sleep


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> Process:
    log_file = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "picscale", *args],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped with all its children
    )
    log_file.close()
    return Process(proc, log_path)


@dataclass
class Server:
    url: str
    data_dir: Path
    process: Process
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.Client:
        c = httpx.Client(base_url=self.url, timeout=30.0, **kwargs)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.process.stop()


def start_server(
    data_dir: Path,
    *,
    workers: int = 1,
    job_workers: int = 1,
    migrate: bool = True,
    port: int | None = None,
    **settings: Any,
) -> Server:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = base_env(data_dir, **settings)
    process = start_process(
        [
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--job-workers",
            str(job_workers),
        ],
        env,
        data_dir / f"serve-{port}.log",
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(f"picscale serve exited early:\n{process.log()}")
        return httpx.get(url + "/readyz", timeout=2).status_code == 200

    try:
        wait_until(ready, timeout=START_TIMEOUT, interval=0.1, what="the server to be ready")
    except BaseException:
        process.stop()
        raise
    return Server(url, data_dir, process)


@contextmanager
def running_server(data_dir: Path, **kwargs: Any) -> Iterator[Server]:
    server = start_server(data_dir, **kwargs)
    try:
        yield server
    finally:
        server.close()
