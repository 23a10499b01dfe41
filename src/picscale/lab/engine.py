"""What a lab engine is: the components it runs, the configuration it writes before they
start, and what it adds to the app's settings, to the lab's addresses and to Prometheus."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from picscale.lab.layout import Layout

START_TIMEOUT_SECONDS = 90.0  # a component's time to become healthy


class LabError(RuntimeError):
    """Something the user can fix; the message says how."""


@dataclass(frozen=True)
class Component:
    """One process of an engine, run by supervisord under ``name``."""

    name: str
    role: str
    command: list[str]
    port: int
    healthy: Callable[[], bool]
    # one figure that says how it is doing, for `lab status`
    figure: Callable[[], str] | None = None
    # what `lab up` does once it is healthy (the database the app uses is created)
    provision: Callable[[], None] | None = None
    # a process it runs in a session of its own (Patroni's PostgreSQL), which a signal to
    # its process group misses: killed with it, and stopped by `lab down` if it outlives it
    detached: Callable[[], int | None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    stop_signal: str = "TERM"


@dataclass(frozen=True)
class ScrapeJob:
    """What Prometheus scrapes of an engine."""

    name: str
    targets: tuple[str, ...]  # host:port, or what an exporter scrapes
    path: str = "/metrics"
    # a multi-target exporter (host:port) that scrapes each target for Prometheus
    exporter: str | None = None
    # the targets change as the lab scales: a file the lab rewrites and Prometheus reads
    # again, its targets labelled with this tier
    tier: str | None = None


class Engine(ABC):
    """A server program of the lab, which a stage runs as one or more components."""

    @abstractmethod
    def port_names(self) -> tuple[str, ...]:
        """Every port it may ever need (given once, at a lab's first `up`)."""

    @abstractmethod
    def components(self, layout: Layout) -> list[Component]:
        """What runs now, in the order it starts."""

    def programs(self, layout: Layout) -> list[Component]:
        """What supervisord has a program for: what runs now, and the slots `lab scale`
        may fill."""
        return self.components(layout)

    def prepare(self, layout: Layout, say: Callable[[str], None]) -> None:  # noqa: B027
        """Write its configuration and data directories before it starts (by default it
        needs none)."""

    def app_env(self, layout: Layout) -> dict[str, str]:
        """What the web servers and workers are configured with to use it."""
        return {}

    def urls(self, layout: Layout) -> dict[str, str]:
        """Its addresses, as `lab up` lists them."""
        return {}

    def scrape_jobs(self, layout: Layout) -> list[ScrapeJob]:
        """What Prometheus scrapes of it, when the stage runs Prometheus."""
        return []
