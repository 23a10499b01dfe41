"""supervisord (from PyPI) runs the lab's processes: its configuration is rendered into
the lab directory, and the lab talks to it over XML-RPC on a loopback port with a
password only the lab directory holds."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
import xmlrpc.client
from typing import Any

from picscale.lab.engine import Component
from picscale.lab.layout import Layout
from picscale.procs import alive


def render_config(layout: Layout, components: list[Component], password: str) -> str:
    port = layout.ports["supervisor"]
    parts = [
        "; rendered by `picscale lab up`",
        "[supervisord]",
        f"logfile={layout.logs / 'supervisord.log'}",
        f"pidfile={layout.root / 'supervisord.pid'}",
        f"childlogdir={layout.logs}",
        "loglevel=info",
        "",
        "[inet_http_server]",
        f"port=127.0.0.1:{port}",
        "username=lab",
        f"password={password}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=http://127.0.0.1:{port}",
        "username=lab",
        f"password={password}",
    ]
    for c in components:
        # supervisord expands %(name)s in these: a literal % is written %%
        env = ",".join(f'{k}="{v}"' for k, v in sorted(c.env.items())).replace("%", "%%")
        parts += [
            "",
            f"[program:{c.name}]",
            f"command={shlex.join(c.command).replace('%', '%%')}",
            f"directory={layout.root}",
            "autostart=false",  # the lab starts them in order, each once the last is healthy
            "autorestart=false",  # a drill's kill stays a kill until `lab start`
            "startsecs=1",
            f"stopsignal={c.stop_signal}",
            "stopwaitsecs=30",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={layout.logs / (c.name + '.log')}",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=2",
        ]
        if env:
            parts.append(f"environment={env}")
        if c.user:
            parts.append(f"user={c.user}")
    return "\n".join(parts) + "\n"


class Supervisor:
    def __init__(self, layout: Layout, password: str) -> None:
        self.layout = layout
        self.config = layout.root / "supervisord.conf"
        port = layout.ports["supervisor"]
        self.rpc: Any = xmlrpc.client.ServerProxy(
            f"http://lab:{password}@127.0.0.1:{port}/RPC2"
        ).supervisor

    def pid(self) -> int | None:
        """supervisord's pid while it runs, else None."""
        try:
            pid = int((self.layout.root / "supervisord.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def start(self, timeout: float = 30.0) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.config)],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"supervisord did not start: {result.stderr.strip()[-2000:]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.rpc.getState()["statename"] == "RUNNING":
                    return
            except (OSError, xmlrpc.client.Error):
                pass
            time.sleep(0.1)  # supervisord is starting; nothing to wait on but its answer
        raise RuntimeError(f"supervisord did not answer; see {self.layout.logs}/supervisord.log")

    def processes(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.rpc.getAllProcessInfo()}

    def start_process(self, name: str) -> None:
        self.rpc.startProcess(name, True)

    def stop_process(self, name: str) -> None:
        self.rpc.stopProcess(name, True)

    def shutdown(self) -> None:
        self.rpc.shutdown()
