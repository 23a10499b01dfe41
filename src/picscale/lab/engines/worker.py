"""Separate job workers (from stage 7): `picscale worker`, each growing from 1 to 2
processes by queue depth; `lab scale workers=M` fills more slots."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

from picscale.lab.engine import Component, Engine, ScrapeJob
from picscale.lab.layout import Layout
from picscale.lab.probes import get_text, http_ok, metric_sum

MAX_WORKERS = 4  # worker slots: `lab scale workers=M` fills them


def _jobs_done(port: int) -> str:
    text = get_text(f"http://127.0.0.1:{port}/metrics")
    done = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("picscale_jobs_total{") and 'outcome="done"' in line
    )
    processes = metric_sum(text, "picscale_autoscale_workers ")
    return f"{processes:.0f} processes, {done:.0f} jobs done"


def _worker(layout: Layout, n: int) -> Component:
    name = f"worker{n}"
    port = layout.ports[name]  # its metrics
    return Component(
        name=name,
        role="job worker (1 to 2 processes, by queue depth)",
        command=[
            sys.executable,
            "-m",
            "picscale",
            "worker",
            "--autoscale",
            "1:2",
            "--metrics-port",
            str(port),
        ],
        port=port,
        healthy=partial(http_ok, f"http://127.0.0.1:{port}/metrics"),
        figure=partial(_jobs_done, port),
        env=layout.app_env(),
    )


@dataclass(frozen=True)
class Workers(Engine):
    count: int  # how many the stage starts with

    def port_names(self) -> tuple[str, ...]:
        return tuple(f"worker{n}" for n in range(1, MAX_WORKERS + 1))

    def components(self, layout: Layout) -> list[Component]:
        return [_worker(layout, n) for n in range(1, layout.worker_count + 1)]

    def programs(self, layout: Layout) -> list[Component]:
        return [_worker(layout, n) for n in range(1, MAX_WORKERS + 1)]

    def scrape_jobs(self, layout: Layout) -> list[ScrapeJob]:
        running = range(1, layout.worker_count + 1)
        targets = tuple(f"127.0.0.1:{layout.ports[f'worker{n}']}" for n in running)
        return [ScrapeJob("picscale_worker", targets, tier="worker")]
