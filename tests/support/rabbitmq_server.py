"""A real RabbitMQ node for tests (Debian's rabbitmq-server), on free loopback ports, with
its data in a temporary directory, stopped by its pid. It keeps its data across
``stop()``/``start()``, so a test can restart the broker under queued jobs.

A node started once for the whole run hands each test its own virtual host
(``RabbitServer.vhost()``): queues and exchanges of one vhost are invisible to another, so
tests share the node's start-up without sharing any queue."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port
from tests.support.waiting import wait_until

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
PRESET_VHOSTS = 24  # made at boot; more, if a run needs them, with rabbitmqctl (slower)


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _definitions(vhosts: list[str]) -> dict[str, object]:
    """The guest user, with every permission on ``/`` and on each of ``vhosts``."""
    names = ["/", *vhosts]
    return {
        "users": [
            {
                "name": "guest",
                "password_hash": _password_hash("guest"),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator"],
            }
        ],
        "vhosts": [{"name": name} for name in names],
        "permissions": [
            {"user": "guest", "vhost": name, "configure": ".*", "write": ".*", "read": ".*"}
            for name in names
        ],
    }


@dataclass
class RabbitServer:
    root: Path
    port: int
    dist_port: int
    proc: subprocess.Popen[bytes] | None = None
    preset_vhosts: list[str] = field(default_factory=list)
    _handed_out: itertools.count[int] = field(
        default_factory=lambda: itertools.count(1), repr=False
    )

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
        conf = (
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "log.console = true\nlog.console.level = warning\nlog.file = false\n"
            # a small machine: do not refuse publishes over a full disk or memory
            "disk_free_limit.absolute = 50MB\n"
        )
        if self.preset_vhosts:
            definitions = self.root / "definitions.json"
            definitions.write_text(json.dumps(_definitions(self.preset_vhosts)))
            conf += (
                "definitions.import_backend = local_filesystem\n"
                f"definitions.local.path = {definitions}\n"
            )
        (self.root / "rabbitmq.conf").write_text(conf)
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

    def vhost(self) -> RabbitVhost:
        """A virtual host no one has used yet, on this (shared) node."""
        n = next(self._handed_out)
        if n <= len(self.preset_vhosts):
            return RabbitVhost(self, self.preset_vhosts[n - 1])
        name = f"picscale-extra-{n}"
        for args in (
            ["add_vhost", name],
            ["set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        ):
            subprocess.run(
                [CTL, "-n", self.node, *args],
                env=self.env(),
                check=True,
                capture_output=True,
                timeout=120,
            )
        return RabbitVhost(self, name)


@dataclass
class RabbitVhost:
    """One virtual host of a shared node (a test that stops the broker starts its own)."""

    node: RabbitServer
    name: str

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.node.port}/{self.name}"


def start_rabbitmq(vhosts: int = 0) -> RabbitServer:
    """A node; with ``vhosts``, that many virtual hosts made at boot for ``vhost()``."""
    server = RabbitServer(
        Path(tempfile.mkdtemp(prefix="picscale-rabbitmq-")),
        free_port(),
        free_port(),
        preset_vhosts=[f"picscale-{n}" for n in range(1, vhosts + 1)],
    )
    server.start()
    return server
