"""Test support: free ports, real `picscale` processes, and images made in memory."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

START_TIMEOUT = 60.0
POLL_INTERVAL = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
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
        time.sleep(interval)  # polling interval of a wait loop, not a fixed sleep
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or condition}: {last_error}"
    )


async def async_wait_until(
    condition: Callable[[], Awaitable[Any]], *, within: float = 30.0, what: str = ""
) -> Any:
    """``wait_until`` for coroutines: poll until truthy, fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(POLL_INTERVAL)
    raise AssertionError(f"timed out after {within}s waiting for {what or condition}")


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


# -- images ------------------------------------------------------------------------------


def image_bytes(
    width: int = 640,
    height: int = 480,
    fmt: str = "JPEG",
    *,
    exif: Image.Exif | None = None,
    color: tuple[int, int, int] = (200, 80, 40),
) -> bytes:
    img = Image.new("RGB", (width, height), color)
    # some structure, so crops and blurs change something
    for x in range(0, width, max(1, width // 16)):
        for y in range(height):
            img.putpixel((x, y), (0, 0, 0))
    out = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if exif is not None:
        kwargs["exif"] = exif
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def gps_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PicscaleTestCamera"
    gps = {1: "N", 2: (37.0, 33.0, 58.0), 3: "E", 4: (126.0, 58.0, 40.0)}
    exif[0x8825] = gps
    return exif


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size
