"""``picscale serve``'s processes: granian (the web app) and the job workers, restarted
when a worker dies, stopped together on SIGTERM or Ctrl-C."""

from __future__ import annotations

import errno
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from picscale.procs import alive
from picscale.settings import Settings

RESTART_DELAY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 40.0
HEALTH_TIMEOUT_SECONDS = 1.0


class PortUnavailable(Exception):
    """The address to serve on cannot be had; the message says why and what to do."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to the address to serve on, held while ``picscale serve`` runs, or
    PortUnavailable.

    granian's processes bind with SO_REUSEPORT, so a second server on a port already
    served would share it silently, each answering some requests from its own database.
    A socket bound without SO_REUSEPORT fails while anything listens there (and, with
    SO_REUSEADDR, not for the connections of a last run left in TIME_WAIT): that is the
    check. The socket then held binds with SO_REUSEPORT alone and never listens: our
    granian (same user, SO_REUSEPORT) binds beside it, while the check of another
    ``picscale serve`` fails on it, even before our granian listens (seconds, on a busy
    machine)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError) as exc:
        raise PortUnavailable(f"cannot serve on {where}: {host!r} is not an address") from exc

    def bound(option: int) -> socket.socket:
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise _unavailable(where, host, exc) from None
        return sock

    bound(socket.SO_REUSEADDR).close()  # the check
    return bound(socket.SO_REUSEPORT)  # the hold


def _unavailable(where: str, host: str, exc: OSError) -> PortUnavailable:
    if exc.errno == errno.EADDRINUSE:
        return PortUnavailable(
            f"{where} is already in use (another `picscale serve`?): stop what listens "
            "there, or serve on another --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return PortUnavailable(f"cannot serve on {where}: {host} is not an address of this machine")
    return PortUnavailable(f"cannot serve on {where}: {exc.strerror}")


def answers(host: str, port: int) -> bool:
    """Whether the web server at host:port answers /healthz (on loopback when it listens
    on every address)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    conn = http.client.HTTPConnection(host, port, timeout=HEALTH_TIMEOUT_SECONDS)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Supervisor:
    """Starts granian and the job workers, restarts workers that die, stops all on signal."""

    def __init__(
        self, settings: Settings, say: Callable[[str], None], port: socket.socket | None = None
    ) -> None:
        self.settings = settings
        self.say = say
        self.port = port  # reserve_port's: held until the end
        # one directory per serve process: several may share a data directory
        self.metrics_dir = settings.data_dir.resolve() / "run" / "metrics" / str(os.getpid())
        self.stopping = False
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.settings.as_env()}
        env["PICSCALE_DATA_DIR"] = str(self.settings.data_dir.resolve())
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        return env

    def _start_web(self) -> subprocess.Popen[bytes]:
        s = self.settings
        command = [
            sys.executable, "-m", "granian",
            "--interface", "asgi",
            "--factory",
            "--host", s.web.host,
            "--port", str(s.web.port),
            "--workers", str(s.web.workers),
            "--no-ws",
            "--log-level", "warning",
            "--respawn-failed-workers",
            "picscale.web.app:create_app_from_env",
        ]  # fmt: skip
        return subprocess.Popen(command, env=self._env())

    def _start_worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "picscale", "worker"], env=self._env())

    def _stop(self, *_: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        # metrics of earlier runs would add up with this one's: drop those of the dead
        for old in self.metrics_dir.parent.glob("*"):
            if old.name.isdigit() and not alive(int(old.name)):
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.web = self._start_web()
        self.workers = [self._start_worker() for _ in range(self.settings.worker.processes)]
        s = self.settings
        announced = False
        code = 0
        while not self.stopping:
            if not announced and answers(s.web.host, s.web.port):
                announced = True  # said once it is true, not when granian was started
                self.say(
                    f"serving http://{s.web.host}:{s.web.port} with {s.web.workers} web and "
                    f"{s.worker.processes} job worker process(es); Ctrl-C stops"
                )
            if (web_code := self.web.poll()) is not None:
                self.say(f"the web server exited with code {web_code}; stopping")
                code = web_code or 1
                break
            for i, worker in enumerate(self.workers):
                if worker.poll() is not None and not self.stopping:
                    self.say(
                        f"job worker {worker.pid} exited with code {worker.returncode}; "
                        "starting another (its unfinished jobs go back to the queue)"
                    )
                    self._mark_dead(worker.pid)
                    time.sleep(RESTART_DELAY_SECONDS)
                    self.workers[i] = self._start_worker()
            time.sleep(0.2)
        self._shutdown()
        return code

    def _mark_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def _shutdown(self) -> None:
        children = [p for p in [self.web, *self.workers] if p is not None]
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for proc in children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.port is not None:
            self.port.close()
