"""A real RabbitMQ node for tests (Debian's rabbitmq-server), on free loopback ports, with
its data in a temporary directory, stopped by its pid. It keeps its data across
``stop()``/``start()``, so a test can restart the broker under queued jobs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from support import free_port, wait_until

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


@dataclass
class RabbitServer:
    root: Path
    port: int
    dist_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def node(self) -> str:
        return f"picscale{self.port}@localhost"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.root),  # the Erlang cookie lives here
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.root / "rabbitmq.pid"),
        )
        return env

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "log.console = true\nlog.console.level = warning\nlog.file = false\n"
            # a small machine: do not refuse publishes over a full disk or memory
            "disk_free_limit.absolute = 50MB\n"
        )
        log = (self.root / "rabbitmq.out").open("ab")
        self.proc = subprocess.Popen(
            [SERVER],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(self.ready, timeout=90, interval=0.2, what=f"RabbitMQ on port {self.port}")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError((self.root / "rabbitmq.out").read_text()[-4000:])
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(AMQP_HEADER)
                return s.recv(1) == b"\x01"  # a method frame: connection.start
        except OSError:
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_rabbitmq() -> RabbitServer:
    server = RabbitServer(
        Path(tempfile.mkdtemp(prefix="picscale-rabbitmq-")), free_port(), free_port()
    )
    server.start()
    return server
