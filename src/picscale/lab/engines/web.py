"""The web servers: `picscale serve`, one process each; from stage 3 behind HAProxy,
which has a slot for every one `lab scale` may start."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

from picscale.lab.engine import Component, Engine, ScrapeJob
from picscale.lab.engines.haproxy import MAX_WEB_SERVERS, HAProxy
from picscale.lab.engines.worker import Workers
from picscale.lab.layout import Layout
from picscale.lab.probes import get_text, http_ok, metric_sum


def _requests_served(port: int) -> str:
    text = get_text(f"http://127.0.0.1:{port}/metrics")
    return f"{metric_sum(text, 'picscale_http_requests_total{'):.0f} requests"


def _server(layout: Layout, n: int) -> Component:
    name = f"web{n}"
    port = layout.ports[name]
    # with separate workers (stage 7) the web servers run no jobs
    job_workers = "0" if layout.stage.runs(Workers) else "1"
    return Component(
        name=name,
        role="web server",
        command=[
            sys.executable,
            "-m",
            "picscale",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--job-workers",
            job_workers,
        ],
        port=port,
        healthy=partial(http_ok, f"http://127.0.0.1:{port}/readyz"),
        figure=partial(_requests_served, port),
        env=layout.app_env(),
    )


@dataclass(frozen=True)
class WebServers(Engine):
    servers: int  # how many the stage starts with
    autoscaled: bool = False  # `lab autoscale web=MIN:MAX` may grow and shrink them

    def port_names(self) -> tuple[str, ...]:
        return tuple(f"web{n}" for n in range(1, MAX_WEB_SERVERS + 1))

    def components(self, layout: Layout) -> list[Component]:
        return [_server(layout, n) for n in range(1, layout.web_count + 1)]

    def programs(self, layout: Layout) -> list[Component]:
        slots = MAX_WEB_SERVERS if layout.stage.runs(HAProxy) else layout.web_count
        return [_server(layout, n) for n in range(1, slots + 1)]

    def scrape_jobs(self, layout: Layout) -> list[ScrapeJob]:
        running = range(1, layout.web_count + 1)
        targets = tuple(f"127.0.0.1:{layout.ports[f'web{n}']}" for n in running)
        return [ScrapeJob("picscale_web", targets, tier="web")]
