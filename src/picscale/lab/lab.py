"""The lab's commands: up, status, scale, start, kill, logs, down. What each engine runs,
writes and checks is its module's (``engines/``); which engines a stage runs is ``stages``."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

from picscale.lab.engine import START_TIMEOUT_SECONDS, Component, LabError
from picscale.lab.engines.haproxy import MAX_WEB_SERVERS, HAProxy, drained, haproxy_command
from picscale.lab.engines.prometheus import Prometheus, write_targets
from picscale.lab.engines.worker import MAX_WORKERS, Workers
from picscale.lab.layout import Layout
from picscale.lab.stages import MAX_STAGE, PORT_NAMES, STAGES
from picscale.lab.supervisor import Supervisor, render_config
from picscale.procs import alive, group_members

STATE = "lab.json"


@cache
def _ephemeral_low() -> int:
    """Where the kernel's ephemeral ports (outgoing connections, ``bind(0)``) begin."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port(taken: set[int]) -> int:
    """A free loopback port below the ephemeral range: a lab's ports are chosen long
    before their servers bind them, and an outgoing connection could take an ephemeral
    one in between (the server then fails with "address in use")."""
    high = max(_ephemeral_low(), 12000)
    for _ in range(1000):
        port = secrets.randbelow(high - 10000) + 10000
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise LabError(f"no free loopback port between 10000 and {high}: free some and retry")


@dataclass
class Lab:
    layout: Layout
    password: str

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.layout, self.password)

    @property
    def components(self) -> list[Component]:
        """What runs now, in the order it starts."""
        layout = self.layout
        return [c for engine in layout.stage.engines for c in engine.components(layout)]

    @property
    def programs(self) -> list[Component]:
        """What supervisord has a program for (every slot `lab scale` may fill)."""
        layout = self.layout
        return [c for engine in layout.stage.engines for c in engine.programs(layout)]

    def save(self) -> None:
        state = {
            "stage": self.layout.stage.number,
            "webs": self.layout.webs,
            "workers": self.layout.workers,
            "ports": self.layout.ports,
            "secret_key": self.layout.secret_key,
            "password": self.password,
        }
        path = self.layout.root / STATE
        path.write_text(json.dumps(state, indent=2) + "\n")
        path.chmod(0o600)

    @classmethod
    def load(cls, root: Path) -> Lab | None:
        path = root / STATE
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        ports = state["ports"]
        taken = set(ports.values())
        for name in PORT_NAMES:  # a lab made by an older version lacks some
            if name not in ports:
                ports[name] = _free_port(taken)
        layout = Layout(
            root.resolve(),
            ports,
            state["secret_key"],
            STAGES[state["stage"]],
            state.get("webs", 0),
            state.get("workers", 0),
        )
        return cls(layout, state["password"])

    @classmethod
    def create(cls, root: Path, stage: int) -> Lab:
        root.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        ports = {name: _free_port(taken) for name in PORT_NAMES}
        layout = Layout(root.resolve(), ports, secrets.token_urlsafe(48), STAGES[stage])
        lab = cls(layout, secrets.token_urlsafe(24))
        lab.save()
        return lab


def _wait_healthy(layout: Layout, c: Component) -> None:
    """Until ``c`` answers its health check; else an error with the end of its log."""
    try:
        _wait(c.healthy, START_TIMEOUT_SECONDS, f"{c.name} to be healthy")
    except LabError as exc:
        raise _with_log(layout, c.name, str(exc)) from None


def _with_log(layout: Layout, name: str, problem: str) -> LabError:
    """``problem``, with the end of the component's log and what to do next."""
    log = layout.logs / f"{name}.log"
    return LabError(
        f"{problem}; its log ({log}) ends:\n{_tail(log)}\n"
        f"`picscale lab logs {name}` shows it all; `picscale lab start {name}` retries"
    )


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)  # polling a process that is starting
    raise LabError(f"timed out after {timeout:g} s waiting for {what}")


def up(root: Path, stage: int, say: Callable[[str], None]) -> Lab:
    """Bring stage ``stage`` up, or resume it; refuse another stage while one is up."""
    if stage not in STAGES:
        raise LabError(f"stage {stage} is not built yet: choose 1 to {MAX_STAGE}")
    lab = Lab.load(root)
    if lab is not None and lab.supervisor.pid() is not None and lab.layout.stage.number != stage:
        other = lab.layout.stage.number
        raise LabError(
            f"the lab in {root} is up at stage {other}: `picscale lab down "
            f"--dir {root}` first, or `lab up --stage {other}` to resume it"
        )
    if lab is None:
        lab = Lab.create(root, stage)
    if lab.supervisor.pid() is None:
        lab.layout.webs = 0  # a fresh start: the stage's own number of servers
        lab.layout.workers = 0
    lab.layout.stage = STAGES[stage]
    lab.save()
    layout = lab.layout
    for folder in (layout.logs, layout.run, layout.data):
        folder.mkdir(parents=True, exist_ok=True)
    say(f"stage {stage}: {layout.stage.what}")
    for engine in layout.stage.engines:
        engine.prepare(layout, say)
    supervisor = lab.supervisor
    if supervisor.pid() is None:
        config = render_config(layout, lab.programs, lab.password)
        (layout.root / "supervisord.conf").write_text(config)
        say("  starting supervisord…")
        try:
            supervisor.start()
        except RuntimeError as exc:
            raise LabError(str(exc)) from None
    running = supervisor.processes()
    for c in lab.components:
        state = running.get(c.name, {}).get("statename")
        if state == "RUNNING" and c.healthy():
            say(f"  {c.name:<16} {c.role}: already up")
            continue
        say(f"  {c.name:<16} {c.role}: starting on 127.0.0.1:{c.port}…")
        if state != "RUNNING":
            try:
                supervisor.start_process(c.name)
            except Exception as exc:
                raise _with_log(layout, c.name, f"{c.name} did not start ({exc})") from exc
        _wait_healthy(layout, c)
        if c.provision is not None:
            c.provision()
        say(f"  {c.name:<16} healthy")
    return lab


def scale(root: Path, tier: str, count: int, say: Callable[[str], None]) -> None:
    """``web=N``: grow or shrink the web tier behind HAProxy through its runtime API (no
    restart): a new server starts, becomes healthy, then ready; a server leaving is
    drained of its connections first, then stopped. ``workers=M``: start or stop worker
    components (each stops by SIGTERM: its jobs finish or go back to the queue)."""
    lab = require(root)
    layout = lab.layout
    if tier == "web":
        if not layout.stage.runs(HAProxy):
            raise LabError("web servers scale behind the load balancer: stage 3 and up")
        if not 1 <= count <= MAX_WEB_SERVERS:
            raise LabError(f"web=N: N from 1 to {MAX_WEB_SERVERS}")
        _scale_slots(lab, "web", count, say)
    elif tier == "workers":
        if not layout.stage.runs(Workers):
            raise LabError("separate workers come at stage 7")
        if not 1 <= count <= MAX_WORKERS:
            raise LabError(f"workers=M: M from 1 to {MAX_WORKERS}")
        _scale_slots(lab, "worker", count, say)
    else:
        raise LabError(f"{tier}=…: scale web=N or workers=M")
    if layout.stage.runs(Prometheus):
        write_targets(layout)


def _scale_slots(lab: Lab, tier: str, count: int, say: Callable[[str], None]) -> None:
    """Start slots ``current+1..count`` (each healthy, then, for web servers, ready in
    HAProxy) or stop ``count+1..current`` (web servers drained first)."""
    layout = lab.layout
    web = tier == "web"
    current = layout.web_count if web else layout.worker_count

    def record(n: int) -> None:
        if web:
            layout.webs = n
        else:
            layout.workers = n

    for n in range(current + 1, count + 1):
        record(n)
        c = component(lab, f"{tier}{n}")
        say(f"  {c.name}: starting on 127.0.0.1:{c.port}…")
        lab.supervisor.start_process(c.name)
        _wait_healthy(layout, c)
        if web:
            haproxy_command(layout, f"set server webs/{c.name} state ready")
        lab.save()
        say(f"  {c.name}: {'in the pool' if web else 'taking jobs'}")
    for n in range(current, count, -1):
        name = f"{tier}{n}"
        if web:
            say(f"  {name}: draining…")
            haproxy_command(layout, f"set server webs/{name} state drain")
            _wait(partial(drained, layout, name), 60, f"{name}'s requests to finish")
            haproxy_command(layout, f"set server webs/{name} state maint")
        else:
            say(f"  {name}: stopping (its jobs finish or go back to the queue)…")
        lab.supervisor.stop_process(name)
        record(n - 1)
        lab.save()
        say(f"  {name}: stopped")


def urls(lab: Lab) -> dict[str, str]:
    """The lab's front door (its load balancer, else its web server), then each engine's
    addresses."""
    layout = lab.layout
    out = {"Picscale": layout.url("haproxy" if layout.stage.runs(HAProxy) else "web1")}
    for engine in layout.stage.engines:
        out |= engine.urls(layout)
    return out


def require(root: Path) -> Lab:
    lab = Lab.load(root)
    if lab is None or lab.supervisor.pid() is None:
        raise LabError(f"no lab is up in {root}: `picscale lab up --stage N --dir {root}`")
    return lab


def status(root: Path) -> list[dict[str, Any]]:
    lab = require(root)
    running = lab.supervisor.processes()

    def row(c: Component) -> dict[str, Any]:
        info = running.get(c.name, {})
        state = info.get("statename", "UNKNOWN")
        return {
            "component": c.name,
            "role": c.role,
            "address": f"127.0.0.1:{c.port}",
            "pid": info.get("pid") or "-",
            "state": state.lower(),
            "health": "healthy" if state == "RUNNING" and c.healthy() else "down",
            "figure": _figure(c) if state == "RUNNING" else "",
        }

    # each check and figure asks its server over the network: all at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(row, lab.components))


def _figure(c: Component) -> str:
    if c.figure is None:
        return ""
    try:
        return c.figure()
    except (OSError, ValueError, IndexError, KeyError, subprocess.SubprocessError):
        return "?"


def component(lab: Lab, name: str) -> Component:
    for c in lab.components:
        if c.name == name:
            return c
    names = ", ".join(c.name for c in lab.components)
    raise LabError(f"no component {name!r} at stage {lab.layout.stage.number}: choose from {names}")


def kill(root: Path, name: str) -> int:
    """SIGKILL a component (and its process group); returns the pid it had."""
    lab = require(root)
    c = component(lab, name)
    info = lab.supervisor.processes().get(name, {})
    if info.get("statename") != "RUNNING":
        raise LabError(f"{name} is not running ({str(info.get('statename', '?')).lower()})")
    pid = int(info["pid"])
    detached = c.detached() if c.detached is not None else None
    # the whole process group supervisord made for it (a web server's granian and job
    # workers too): supervisord's own signalProcess reaches the first process only, and
    # children left behind would go on serving
    os.killpg(pid, signal.SIGKILL)
    if detached is not None and alive(detached):
        # Patroni runs PostgreSQL in a session of its own: the machine dies with both
        os.kill(detached, signal.SIGKILL)
    _wait(lambda: not group_members(pid), 30, f"{name} (pid {pid}) and its children to die")
    return pid


def start(root: Path, name: str) -> None:
    lab = require(root)
    c = component(lab, name)
    if lab.supervisor.processes().get(name, {}).get("statename") != "RUNNING":
        lab.supervisor.start_process(name)
    _wait_healthy(lab.layout, c)


def down(root: Path, say: Callable[[str], None]) -> list[int]:
    """Stop everything the lab started; returns the pids that were stopped (all gone)."""
    lab = Lab.load(root)
    if lab is None:
        raise LabError(f"there is no lab in {root}")
    supervisor = lab.supervisor
    main_pid = supervisor.pid()
    if main_pid is None:
        say("the lab is not running")
        return []
    pids = [int(p["pid"]) for p in supervisor.processes().values() if p.get("pid")]
    detached = [pid for c in lab.components if c.detached is not None and (pid := c.detached())]
    say(f"stopping {len(pids)} processes and supervisord (pid {main_pid})…")
    supervisor.shutdown()
    everything = [main_pid, *pids, *detached]
    _wait(lambda: not any(alive(p) for p in [main_pid, *pids]), 90, "every lab process to end")
    # Patroni stopped its PostgreSQL; one whose Patroni was killed is ended here
    for pid in detached:
        if alive(pid):
            os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
    _wait(lambda: not any(alive(p) for p in everything), 90, "every lab process to end")
    return everything


# -- logs ---------------------------------------------------------------------------------

_PG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC")
_HAPROXY_TIME = re.compile(r"\[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\]")


def _timestamp(line: str) -> float | None:
    if line.startswith("{"):
        try:
            value = json.loads(line).get("timestamp")
        except ValueError:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        return None
    if m := _PG_TIME.match(line):
        return datetime.fromisoformat(m.group(1)).replace(tzinfo=UTC).timestamp()
    if m := _HAPROXY_TIME.search(line):
        when = datetime.strptime(m.group(1), "%d/%b/%Y:%H:%M:%S.%f")
        return when.astimezone(UTC).timestamp()
    return None


def log_lines(root: Path, names: list[str]) -> Iterator[tuple[float, str, str]]:
    """(time, component, line) of the components' logs, in time order; a line without a
    time of its own goes with the line before it."""
    lab = Lab.load(root)
    if lab is None:
        raise LabError(f"there is no lab in {root}")
    wanted = names or [c.name for c in lab.components]
    entries: list[tuple[float, int, str, str]] = []
    for name in wanted:
        component(lab, name)
        path = lab.layout.logs / f"{name}.log"
        if not path.exists():
            continue
        last = 0.0
        for n, line in enumerate(path.read_text(errors="replace").splitlines()):
            when = _timestamp(line)
            last = when if when is not None else last
            entries.append((last, n, name, line))
    entries.sort(key=lambda e: (e[0], e[2], e[1]))
    for when, _, name, line in entries:
        yield when, name, line


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
