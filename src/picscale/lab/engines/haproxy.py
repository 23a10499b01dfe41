"""The load balancer (from stage 3): HAProxy in front of the stateless web servers, with a
slot for every web server `lab scale` may start, changed through its runtime API; and from
stage 5 the media edge's front."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from picscale.lab.engine import Component, Engine, LabError, ScrapeJob
from picscale.lab.engines.varnish import Varnish
from picscale.lab.layout import Layout
from picscale.lab.probes import get_text, http_ok

HAPROXY = "/usr/sbin/haproxy"
MAX_WEB_SERVERS = 8  # slots behind the load balancer: `lab scale web=N` fills them

_MARK_DOWN_AT_ONCE = "observe layer4 error-limit 1 on-error mark-down"


def haproxy_config(layout: Layout) -> str:
    # a slot for every web server `lab scale` may start; those not running are in
    # maintenance until the runtime API makes them ready
    servers = "\n".join(
        f"    server web{n} 127.0.0.1:{layout.ports[f'web{n}']}"
        + ("" if n <= layout.web_count else " disabled")
        for n in range(1, MAX_WEB_SERVERS + 1)
    )
    edge = _edge_config(layout) if layout.stage.runs(Varnish) else ""
    return f"""# rendered by `picscale lab up`: HAProxy in front of the stateless web servers
global
    log stdout format raw local0 info
    stats socket {layout.run}/haproxy.sock mode 600 level admin

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # a connection to a server lasts one request: otherwise a client's idle keep-alive
    # connection stays tied to a server connection, and is closed when that server is
    # killed; a request the client sends on it meanwhile ends in a connection error that
    # HAProxy never saw (a web-server drill with 5 users: 2 such errors in 1 of 4 runs
    # without this, none in 6 runs with it)
    option http-server-close
    # a request to a server that dies is retried, once, on another one
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend web
    bind 127.0.0.1:{layout.ports["haproxy"]}
    default_backend webs

frontend stats
    bind 127.0.0.1:{layout.ports["haproxy_stats"]}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
    stats refresh 2s

backend webs
    # no stickiness: any web server serves any user (sessions live in the database, or
    # from stage 6 in Redis)
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    # a busy server answers its check late: give it 5 s and 3 misses before it leaves the
    # pool (checks that time out under load would empty the pool when it is needed most);
    # a server that refuses connections (dead) leaves at once
    timeout check 5s
    default-server inter 1s fall 3 rise 2 check {_MARK_DOWN_AT_ONCE}
{servers}
{edge}"""


def _edge_config(layout: Layout) -> str:
    return f"""
frontend edge
    # media and static URLs point here: Varnish, or the origin while Varnish is down
    # (what a CDN's failover does); a request to a Varnish that just died marks it down
    # at once and is retried on the origin
    bind 127.0.0.1:{layout.ports["edge"]}
    default_backend edges

backend edges
    option httpchk GET /.edge/health
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
    server varnish 127.0.0.1:{layout.ports["varnish"]} check {_MARK_DOWN_AT_ONCE}
    server origin 127.0.0.1:{layout.ports["haproxy"]} backup
"""


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


def drained(layout: Layout, server: str) -> bool:
    """No request to web server ``server`` is in flight."""
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


def _web_servers_up(layout: Layout) -> str:
    text = get_text(layout.url("haproxy_stats") + "/metrics")
    up = sum(
        1
        for line in text.splitlines()
        if line.startswith('haproxy_server_status{proxy="webs"')
        and 'state="UP"' in line
        and line.endswith(" 1")
    )
    return f"{up} web servers up"


@dataclass(frozen=True)
class HAProxy(Engine):
    def port_names(self) -> tuple[str, ...]:
        return ("haproxy", "haproxy_stats")

    def components(self, layout: Layout) -> list[Component]:
        port = layout.ports["haproxy"]
        return [
            Component(
                name="haproxy",
                role="load balancer",
                command=[HAPROXY, "-db", "-f", str(layout.root / "haproxy.cfg")],
                port=port,
                healthy=partial(http_ok, f"http://127.0.0.1:{port}/healthz"),
                figure=partial(_web_servers_up, layout),
            )
        ]

    def prepare(self, layout: Layout, say: Callable[[str], None]) -> None:
        (layout.root / "haproxy.cfg").write_text(haproxy_config(layout))

    def urls(self, layout: Layout) -> dict[str, str]:
        stats = layout.url("haproxy_stats")
        return {"HAProxy stats": stats + "/stats", "HAProxy metrics": stats + "/metrics"}

    def scrape_jobs(self, layout: Layout) -> list[ScrapeJob]:
        return [ScrapeJob("haproxy", (f"127.0.0.1:{layout.ports['haproxy_stats']}",))]
