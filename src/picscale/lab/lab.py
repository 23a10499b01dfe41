"""The lab's commands: up, status, start, kill, logs, down."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

from picscale.lab.components import (
    DATABASE,
    MAX_STAGE,
    MAX_WEB_SERVERS,
    MAX_WORKERS,
    PATRONI_NODES,
    PG_BIN,
    PORT_NAMES,
    REDIS_MASTER,
    STAGES,
    Component,
    Layout,
    components,
    haproxy_config,
    prepare_cache,
    prepare_patroni,
    prepare_postgres,
    prepare_rabbitmq,
    prepare_varnish,
    prometheus_config,
    scrape_targets,
)
from picscale.lab.supervisor import Supervisor, render_config
from picscale.procs import alive, group_members

STATE = "lab.json"
START_TIMEOUT_SECONDS = 90.0


class LabError(RuntimeError):
    """Something the user can fix; the message says how."""


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
        return components(self.layout)

    def save(self) -> None:
        state = {
            "stage": self.layout.stage,
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
            state["stage"],
            state.get("webs", 0),
            state.get("workers", 0),
        )
        return cls(layout, state["password"])

    @classmethod
    def create(cls, root: Path, stage: int) -> Lab:
        root.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        ports = {name: _free_port(taken) for name in PORT_NAMES}
        layout = Layout(root.resolve(), ports, secrets.token_urlsafe(48), stage)
        lab = cls(layout, secrets.token_urlsafe(24))
        lab.save()
        return lab


def healthy(component: Component) -> bool:
    if component.health == "redis":
        return ask(component.port, b"PING\r\n").startswith(b"+PONG")
    if component.health == "amqp":  # a broker that answers the protocol header
        return ask(component.port, b"AMQP\x00\x00\x09\x01")[:1] == b"\x01"
    if component.health.startswith("patroni+"):
        return _following(component.health.removeprefix("patroni+"))
    if component.health == "pg":
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(component.port), "-q"],
            check=False,
            timeout=10,
        )
        return result.returncode == 0
    try:
        with urllib.request.urlopen(component.health, timeout=2) as response:  # noqa: S310
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _following(api: str) -> bool:
    """A Patroni node (its REST API at ``api``) runs PostgreSQL as the primary, or as a
    replica the primary streams to. Patroni's own /health is not enough: a former primary
    starts as a replica, then stops a moment later to be rewound before it can follow."""
    status, me = _json_at(f"{api}/patroni")
    if status != 200 or me.get("state") != "running":
        return False
    if me.get("role") in ("master", "primary"):
        return True
    members = _json_at(f"{api}/cluster")[1].get("members", [])
    name = next((m["name"] for m in members if m.get("api_url") == f"{api}/patroni"), None)
    leader = next((m for m in members if m.get("role") == "leader"), None)
    if name is None or leader is None:
        return False
    replication = _json_at(leader["api_url"])[1].get("replication", [])
    return any(
        r.get("application_name") == name and r.get("state") == "streaming" for r in replication
    )


def _wait_healthy(layout: Layout, c: Component) -> None:
    """Until ``c`` answers its health check; else an error with the end of its log."""
    try:
        _wait(partial(healthy, c), START_TIMEOUT_SECONDS, f"{c.name} to be healthy")
    except LabError as exc:
        raise _with_log(layout, c.name, str(exc)) from None


def _with_log(layout: Layout, name: str, problem: str) -> LabError:
    """``problem``, with the end of the component's log and what to do next."""
    log = layout.logs / f"{name}.log"
    return LabError(
        f"{problem}; its log ({log}) ends:\n{_tail(log)}\n"
        f"`picscale lab logs {name}` shows it all; `picscale lab start {name}` retries"
    )


def ask(port: int, message: bytes) -> bytes:
    """Send ``message`` to a loopback port; the first bytes of the answer (b"" if none)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(message)
            return s.recv(4096)
    except OSError:
        return b""


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
    if lab is not None and lab.supervisor.pid() is not None and lab.layout.stage != stage:
        raise LabError(
            f"the lab in {root} is up at stage {lab.layout.stage}: `picscale lab down "
            f"--dir {root}` first, or `lab up --stage {lab.layout.stage}` to resume it"
        )
    if lab is None:
        lab = Lab.create(root, stage)
    if lab.supervisor.pid() is None:
        lab.layout.webs = 0  # a fresh start: the stage's own number of servers
        lab.layout.workers = 0
    lab.layout.stage = stage
    lab.save()
    layout = lab.layout
    for folder in (layout.logs, layout.run, layout.data):
        folder.mkdir(parents=True, exist_ok=True)
    parts = lab.components
    say(f"stage {stage}: {STAGES[stage]}")
    if any(c.name == "postgres" for c in parts):
        say("  preparing PostgreSQL (initdb, once)…")
        prepare_postgres(layout)
    if any(c.name.startswith("patroni") for c in parts):
        prepare_patroni(layout)
    names = {c.name for c in parts}
    if "redis1" in names:
        prepare_cache(layout)
    if "rabbitmq" in names:
        prepare_rabbitmq(layout)
    if "varnish" in names:
        prepare_varnish(layout)
    if "prometheus" in names:
        (layout.root / "prometheus.yml").write_text(prometheus_config(layout))
        scrape_targets(layout)
    if "haproxy" in names:
        (layout.root / "haproxy.cfg").write_text(haproxy_config(layout))
    supervisor = lab.supervisor
    if supervisor.pid() is None:
        every = components(layout, every_slot=True)  # programs for every web server slot
        (layout.root / "supervisord.conf").write_text(render_config(layout, every, lab.password))
        say("  starting supervisord…")
        try:
            supervisor.start()
        except RuntimeError as exc:
            raise LabError(str(exc)) from None
    running = supervisor.processes()
    for c in parts:
        state = running.get(c.name, {}).get("statename")
        if state == "RUNNING" and healthy(c):
            say(f"  {c.name:<16} {c.role}: already up")
            continue
        say(f"  {c.name:<16} {c.role}: starting on 127.0.0.1:{c.port}…")
        if state != "RUNNING":
            try:
                supervisor.start_process(c.name)
            except Exception as exc:
                raise _with_log(layout, c.name, f"{c.name} did not start ({exc})") from exc
        _wait_healthy(layout, c)
        if c.name == "postgres":
            _create_database(c.port)
        if c.name == "patroni1":
            leader = _wait_leader(layout)
            _create_database(layout.ports[f"pg{leader}"])
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
        if layout.stage < 3:
            raise LabError("web servers scale behind the load balancer: stage 3 and up")
        if not 1 <= count <= MAX_WEB_SERVERS:
            raise LabError(f"web=N: N from 1 to {MAX_WEB_SERVERS}")
        _scale_slots(lab, "web", count, say)
    elif tier == "workers":
        if layout.stage < 7:
            raise LabError("separate workers come at stage 7")
        if not 1 <= count <= MAX_WORKERS:
            raise LabError(f"workers=M: M from 1 to {MAX_WORKERS}")
        _scale_slots(lab, "worker", count, say)
    else:
        raise LabError(f"{tier}=…: scale web=N or workers=M")
    if layout.stage >= 8:
        scrape_targets(layout)


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
            _wait(partial(_drained, layout, name), 60, f"{name}'s requests to finish")
            haproxy_command(layout, f"set server webs/{name} state maint")
        else:
            say(f"  {name}: stopping (its jobs finish or go back to the queue)…")
        lab.supervisor.stop_process(name)
        record(n - 1)
        lab.save()
        say(f"  {name}: stopped")


def haproxy_command(layout: Layout, command: str) -> str:
    """One command on HAProxy's runtime API (its admin socket in the lab directory)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(layout.run / "haproxy.sock"))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks).decode().strip()
    if command.startswith("set ") and answer:  # a set answers nothing when it worked
        raise LabError(f"HAProxy refused {command!r}: {answer}")
    return answer


def _drained(layout: Layout, server: str) -> bool:
    return int(_server_stat(layout, "webs", server).get("scur") or 0) == 0


def server_up(layout: Layout, backend: str, server: str) -> bool:
    """HAProxy sends ``backend``'s requests to ``server`` (its checks pass)."""
    return _server_stat(layout, backend, server).get("status", "").startswith("UP")


def _server_stat(layout: Layout, backend: str, server: str) -> dict[str, str]:
    """HAProxy's ``show stat`` line of one server (scur: requests in flight, status)."""
    lines = haproxy_command(layout, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") == server:
            return row
    return {}


def _patroni(layout: Layout, n: int, path: str) -> tuple[int, Any]:
    return _json_at(layout.url(f"patroni{n}") + path)


def _json_at(url: str) -> tuple[int, Any]:
    """The status and JSON body of a GET (0 and {} if nothing answered)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}


def leader_node(layout: Layout) -> int | None:
    """The number of the Patroni node that is primary now."""
    for n in range(1, PATRONI_NODES + 1):
        if _patroni(layout, n, "/primary")[0] == 200:
            return n
    return None


def _wait_leader(layout: Layout) -> int:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        found = leader_node(layout)
        if found is not None:
            return found
        time.sleep(0.2)  # Patroni is electing a leader
    raise LabError(f"no Patroni leader after {START_TIMEOUT_SECONDS:g} s: see `lab logs`")


def _create_database(port: int) -> None:
    psql = [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-Atq"]
    exists = subprocess.run(
        [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if exists.stdout.strip() != "1":
        subprocess.run(
            [*psql, "-c", f"CREATE DATABASE {DATABASE}"],
            check=True,
            capture_output=True,
            timeout=30,
        )


def urls(lab: Lab) -> dict[str, str]:
    names = {c.name for c in lab.components}
    front = "haproxy" if "haproxy" in names else "web1"
    out = {"Picscale": lab.layout.url(front)}
    if "haproxy" in names:
        out["HAProxy stats"] = lab.layout.url("haproxy_stats") + "/stats"
        out["HAProxy metrics"] = lab.layout.url("haproxy_stats") + "/metrics"
    if "postgres" in names or "patroni1" in names:
        out["PostgreSQL"] = lab.layout.database_url
    if "patroni1" in names:
        out["Patroni"] = lab.layout.patroni_url
    if "redis1" in names:
        out["Redis"] = lab.layout.redis_url
        out["Media edge"] = lab.layout.url("edge") + " (Varnish " + lab.layout.url("varnish") + ")"
    if "rabbitmq" in names:
        out["RabbitMQ"] = lab.layout.amqp_url
    if "prometheus" in names:
        out["Prometheus"] = lab.layout.url("prometheus")
    return out


def require(root: Path) -> Lab:
    lab = Lab.load(root)
    if lab is None or lab.supervisor.pid() is None:
        raise LabError(f"no lab is up in {root}: `picscale lab up --stage N --dir {root}`")
    return lab


def status(root: Path) -> list[dict[str, Any]]:
    lab = require(root)
    running = lab.supervisor.processes()
    rows = []
    for c in lab.components:
        info = running.get(c.name, {})
        state = info.get("statename", "UNKNOWN")
        rows.append(
            {
                "component": c.name,
                "role": c.role,
                "address": f"127.0.0.1:{c.port}",
                "pid": info.get("pid") or "-",
                "state": state.lower(),
                "health": "healthy" if state == "RUNNING" and healthy(c) else "down",
                "figure": _figure(lab, c) if state == "RUNNING" else "",
            }
        )
    return rows


def _figure(lab: Lab, c: Component) -> str:
    """One number that says how the component is doing."""
    try:
        if c.name == "haproxy":
            up_servers = _haproxy_up(lab)
            return f"{up_servers} web servers up"
        if c.name.startswith("patroni"):
            n = int(c.name.removeprefix("patroni"))
            _, node = _patroni(lab.layout, n, "/patroni")
            role = str(node.get("role", "?")).replace("master", "primary")
            if role == "primary":
                return "primary"
            _, cluster = _patroni(lab.layout, n, "/cluster")
            lag = next(
                (m.get("lag") for m in cluster.get("members", []) if m.get("name") == f"pg{n}"),
                None,
            )
            return f"{role}, lag {lag} bytes" if lag is not None else role
        if c.name.startswith("web"):
            total = metric_sum(
                get_text(f"http://127.0.0.1:{c.port}/metrics"), "picscale_http_requests_total{"
            )
            return f"{total:.0f} requests"
        if c.name.startswith("worker"):
            text = get_text(f"http://127.0.0.1:{c.port}/metrics")
            done = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("picscale_jobs_total{") and 'outcome="done"' in line
            )
            processes = metric_sum(text, "picscale_autoscale_workers ")
            return f"{processes:.0f} processes, {done:.0f} jobs done"
        if c.name in ("redis1", "redis2"):
            info = _redis_info(c.port, "replication") | _redis_info(c.port, "stats")
            role = info.get("role", "?").replace("master", "primary")
            hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
            ratio = f", hit ratio {hits / (hits + misses):.0%}" if hits + misses else ""
            if role == "slave":
                return f"replica, link {info.get('master_link_status', '?')}{ratio}"
            return f"{role}, {info.get('connected_slaves', '0')} replicas{ratio}"
        if c.name.startswith("sentinel"):
            reply = ask(c.port, f"SENTINEL get-master-addr-by-name {REDIS_MASTER}\r\n".encode())
            port = int(reply.split(b"\r\n")[4])
            names = [n for n in ("redis1", "redis2") if lab.layout.ports[n] == port]
            return f"master is {names[0] if names else port}"
        if c.name == "varnish":
            hits, misses = _varnish_counters(lab.layout)
            total = hits + misses
            return f"hit ratio {hits / total:.0%} of {total}" if total else "no requests yet"
        if c.name == "rabbitmq":
            text = get_text(lab.layout.url("rabbitmq_metrics") + "/metrics/per-object")
            ready = metric_sum(text, "rabbitmq_queue_messages_ready{")
            unacked = metric_sum(text, "rabbitmq_queue_messages_unacked{")
            return f"queue depth {ready:.0f}, {unacked:.0f} in flight"
        if c.name == "prometheus":
            targets = json.loads(get_text(lab.layout.url("prometheus") + "/api/v1/targets"))
            active = targets["data"]["activeTargets"]
            up_count = sum(1 for t in active if t["health"] == "up")
            return f"{up_count} of {len(active)} targets up"
    except (OSError, ValueError, IndexError, KeyError, subprocess.SubprocessError):
        return "?"
    return ""


def metric_sum(text: str, prefix: str) -> float:
    """The sum of the samples of Prometheus text whose line starts with ``prefix``."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def _redis_info(port: int, section: str) -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while b"\r\n" not in data or len(data) < _bulk_length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    text = data.split(b"\r\n", 1)[1].decode(errors="replace")
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: v.strip() for k, v in pairs}


def _bulk_length(data: bytes) -> int:
    """How long a RESP bulk string reply is, header and trailer included."""
    header, _, _ = data.partition(b"\r\n")
    return len(header) + 2 + int(header[1:]) + 2


def _varnish_counters(layout: Layout) -> tuple[int, int]:
    result = subprocess.run(
        ["varnishstat", "-n", str(layout.root / "varnish"), "-1", "-j",
         "-f", "MAIN.cache_hit", "-f", "MAIN.cache_miss"],
        check=True, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    data = json.loads(result.stdout)
    counters = data.get("counters", data)
    return int(counters["MAIN.cache_hit"]["value"]), int(counters["MAIN.cache_miss"]["value"])


def _haproxy_up(lab: Lab) -> int:
    text = get_text(lab.layout.url("haproxy_stats") + "/metrics")
    return sum(
        1
        for line in text.splitlines()
        if line.startswith('haproxy_server_status{proxy="webs"')
        and 'state="UP"' in line
        and line.endswith(" 1")
    )


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310
        return str(response.read().decode())


def component(lab: Lab, name: str) -> Component:
    for c in lab.components:
        if c.name == name:
            return c
    names = ", ".join(c.name for c in lab.components)
    raise LabError(f"no component {name!r} at stage {lab.layout.stage}: choose from {names}")


def kill(root: Path, name: str) -> int:
    """SIGKILL a component (and its process group); returns the pid it had."""
    lab = require(root)
    component(lab, name)
    info = lab.supervisor.processes().get(name, {})
    if info.get("statename") != "RUNNING":
        raise LabError(f"{name} is not running ({str(info.get('statename', '?')).lower()})")
    pid = int(info["pid"])
    postmaster = _postmaster(lab.layout, name)
    # the whole process group supervisord made for it (a web server's granian and job
    # workers too): supervisord's own signalProcess reaches the first process only, and
    # children left behind would go on serving
    os.killpg(pid, signal.SIGKILL)
    if postmaster is not None and alive(postmaster):
        # Patroni runs PostgreSQL in a session of its own: the machine dies with both
        os.kill(postmaster, signal.SIGKILL)
    _wait(lambda: not group_members(pid), 30, f"{name} (pid {pid}) and its children to die")
    return pid


def _postmaster(layout: Layout, name: str) -> int | None:
    """The PostgreSQL a Patroni node runs (its own process session), if it runs."""
    if not name.startswith("patroni"):
        return None
    try:
        pid = int((layout.root / name / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


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
    postmasters = [pid for c in components(lab.layout) if (pid := _postmaster(lab.layout, c.name))]
    say(f"stopping {len(pids)} processes and supervisord (pid {main_pid})…")
    supervisor.shutdown()
    everything = [main_pid, *pids, *postmasters]
    _wait(lambda: not any(alive(p) for p in [main_pid, *pids]), 90, "every lab process to end")
    for pid in postmasters:  # Patroni stopped them; one whose Patroni was killed is ended here
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
