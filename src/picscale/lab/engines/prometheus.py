"""Metrics (stage 8): Prometheus scraping what every engine of the stage asks it to."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from picscale.lab.engine import Component, Engine, ScrapeJob
from picscale.lab.layout import Layout
from picscale.lab.probes import get_text, http_ok


def _jobs(layout: Layout) -> list[ScrapeJob]:
    return [job for engine in layout.stage.engines for job in engine.scrape_jobs(layout)]


def _targets_dir(layout: Layout) -> Path:
    return layout.root / "prometheus-targets"


def _job_config(job: ScrapeJob, targets_dir: Path) -> str:
    head = f"  - job_name: {job.name}\n"
    if job.tier is not None:
        files = f"['{targets_dir}/{job.tier}.json']"
        return head + f"    file_sd_configs: [{{files: {files}, refresh_interval: 5s}}]\n"
    targets = ", ".join(f"'{t}'" for t in job.targets)
    text = head + f"    metrics_path: {job.path}\n    static_configs: [{{targets: [{targets}]}}]\n"
    if job.exporter is not None:  # each target goes to the exporter as its ?target=
        text += (
            "    relabel_configs:\n"
            "      - {source_labels: [__address__], target_label: __param_target}\n"
            "      - {source_labels: [__param_target], target_label: instance}\n"
            f"      - {{target_label: __address__, replacement: '{job.exporter}'}}\n"
        )
    return text


def prometheus_config(layout: Layout) -> str:
    return (
        "# rendered by `picscale lab up`: every component of the lab, every 5 s\n"
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
        "scrape_configs:\n"
        + "".join(_job_config(job, _targets_dir(layout)) for job in _jobs(layout))
    )


def write_targets(layout: Layout) -> None:
    """The targets that change as the lab scales (the web servers and workers running
    now): file-based discovery, which Prometheus reads again when the lab rewrites it."""
    folder = _targets_dir(layout)
    folder.mkdir(parents=True, exist_ok=True)
    for job in _jobs(layout):
        if job.tier is None:
            continue
        text = json.dumps([{"targets": list(job.targets), "labels": {"tier": job.tier}}], indent=2)
        path = folder / f"{job.tier}.json"
        partial_file = path.with_suffix(".tmp")
        partial_file.write_text(text + "\n")
        partial_file.replace(path)  # Prometheus never reads half a file


def _targets_up(layout: Layout) -> str:
    targets = json.loads(get_text(layout.url("prometheus") + "/api/v1/targets"))
    active = targets["data"]["activeTargets"]
    up = sum(1 for t in active if t["health"] == "up")
    return f"{up} of {len(active)} targets up"


@dataclass(frozen=True)
class Prometheus(Engine):
    def port_names(self) -> tuple[str, ...]:
        return ("prometheus",)

    def components(self, layout: Layout) -> list[Component]:
        port = layout.ports["prometheus"]
        return [
            Component(
                name="prometheus",
                role="metrics: scrapes every component",
                command=[
                    "prometheus",
                    f"--config.file={layout.root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={layout.root / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=2d",
                    "--log.level=warn",
                ],
                port=port,
                healthy=partial(http_ok, f"http://127.0.0.1:{port}/-/ready"),
                figure=partial(_targets_up, layout),
            )
        ]

    def prepare(self, layout: Layout, say: Callable[[str], None]) -> None:
        (layout.root / "prometheus.yml").write_text(prometheus_config(layout))
        write_targets(layout)

    def urls(self, layout: Layout) -> dict[str, str]:
        return {"Prometheus": layout.url("prometheus")}

    def scrape_jobs(self, layout: Layout) -> list[ScrapeJob]:
        return [ScrapeJob("prometheus", (f"127.0.0.1:{layout.ports['prometheus']}",))]
