"""The message queue (from stage 7): RabbitMQ, with its Prometheus plugin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from picscale.lab.engine import Component, Engine, ScrapeJob
from picscale.lab.layout import Layout
from picscale.lab.probes import ask, get_text, metric_sum

RABBITMQ = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def _folder(layout: Layout) -> Path:
    return layout.root / "rabbitmq"


def _speaks_amqp(port: int) -> bool:
    """A broker that answers the protocol header."""
    return ask(port, b"AMQP\x00\x00\x09\x01")[:1] == b"\x01"


def _queue_depth(layout: Layout) -> str:
    text = get_text(layout.url("rabbitmq_metrics") + "/metrics/per-object")
    ready = metric_sum(text, "rabbitmq_queue_messages_ready{")
    unacked = metric_sum(text, "rabbitmq_queue_messages_unacked{")
    return f"queue depth {ready:.0f}, {unacked:.0f} in flight"


def _url(layout: Layout) -> str:
    return f"amqp://guest:guest@127.0.0.1:{layout.ports['rabbitmq']}/"


@dataclass(frozen=True)
class RabbitMQ(Engine):
    def port_names(self) -> tuple[str, ...]:
        return ("rabbitmq", "rabbitmq_dist", "rabbitmq_metrics")

    def components(self, layout: Layout) -> list[Component]:
        root = _folder(layout)
        port = layout.ports["rabbitmq"]
        return [
            Component(
                name="rabbitmq",
                role="message queue",
                command=[RABBITMQ],
                port=port,
                healthy=partial(_speaks_amqp, port),
                figure=partial(_queue_depth, layout),
                env={
                    "HOME": str(root),  # the Erlang cookie lives here
                    "RABBITMQ_NODENAME": f"picscale{port}@localhost",
                    "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                    "RABBITMQ_NODE_PORT": str(port),
                    "RABBITMQ_DIST_PORT": str(layout.ports["rabbitmq_dist"]),
                    "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(root / "log"),
                    "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
                    "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
                },
            )
        ]

    def prepare(self, layout: Layout, say: Callable[[str], None]) -> None:
        root = _folder(layout)
        root.mkdir(parents=True, exist_ok=True)
        (root / "enabled_plugins").write_text("[rabbitmq_prometheus].\n")
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{layout.ports['rabbitmq']}\n"
            "log.console = true\nlog.console.level = warning\nlog.file = false\n"
            # one small machine: do not refuse publishes over a nearly full disk
            "disk_free_limit.absolute = 50MB\n"
            "prometheus.tcp.ip = 127.0.0.1\n"
            f"prometheus.tcp.port = {layout.ports['rabbitmq_metrics']}\n"
            "prometheus.return_per_object_metrics = true\n"
        )

    def app_env(self, layout: Layout) -> dict[str, str]:
        return {"PICSCALE_QUEUE_URL": _url(layout)}

    def urls(self, layout: Layout) -> dict[str, str]:
        return {"RabbitMQ": _url(layout)}

    def scrape_jobs(self, layout: Layout) -> list[ScrapeJob]:
        return [ScrapeJob("rabbitmq", (f"127.0.0.1:{layout.ports['rabbitmq_metrics']}",))]
