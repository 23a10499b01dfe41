"""``picscale lab autoscale web=MIN:MAX``: the web tier grows and shrinks with its load.

Every ``interval`` seconds the lab reads each running web server's request latency (the
mean of its latency histogram over the interval) and CPU (its processes' CPU time over the
interval, against one core: each web server runs one process). Like Kubernetes' horizontal
autoscaler, it wants ``ceil(servers x max(latency / target latency, CPU / target CPU))``
servers. The hysteresis is the worker autoscaler's (``Policy.settle``): growing takes two
readings in a row that want more, shrinking waits for ``cooldown`` seconds of wanting
fewer and goes one server at a time, drained first. Servers join and leave through
HAProxy's runtime API, as `lab scale web=N` does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from picscale.lab import lab as labs
from picscale.lab.engine import LabError
from picscale.lab.engines.haproxy import MAX_WEB_SERVERS
from picscale.lab.engines.web import WebServers
from picscale.lab.probes import get_text, metric_sum
from picscale.procs import group_cpu_seconds
from picscale.worker.autoscale import Policy


@dataclass(frozen=True)
class Reading:
    servers: int
    latency_ms: float | None  # None: no request in the interval
    cpu: float  # the busiest server's share of one core, 0..1+
    wanted: int


def _latency_totals(port: int) -> tuple[float, float]:
    """(sum of seconds, count) of a web server's request latency histogram."""
    text = get_text(f"http://127.0.0.1:{port}/metrics")
    seconds = metric_sum(text, "picscale_http_request_duration_seconds_sum")
    count = metric_sum(text, "picscale_http_request_duration_seconds_count")
    return seconds, count


class WebAutoscaler:
    def __init__(
        self,
        root: Path,
        minimum: int,
        maximum: int,
        *,
        target_ms: float = 100.0,
        target_cpu: float = 0.6,
        cooldown: float = 30.0,
    ) -> None:
        self.root = root
        self.target_ms = target_ms
        self.target_cpu = target_cpu
        self.policy = Policy(minimum, maximum, 1, 2, cooldown)
        self._last: dict[str, tuple[float, float, float, float]] = {}

    def read(self) -> Reading:
        """One reading of the running web servers against the last one."""
        lab = labs.require(self.root)
        processes = lab.supervisor.processes()
        now = time.monotonic()
        seconds = count = 0.0
        cpu = 0.0
        servers = lab.layout.web_count
        for n in range(1, servers + 1):
            name = f"web{n}"
            info = processes.get(name, {})
            if info.get("statename") != "RUNNING":
                continue
            try:
                s, c = _latency_totals(lab.layout.ports[name])
            except OSError:
                continue
            used = group_cpu_seconds(int(info["pid"]))
            if name in self._last:
                last_s, last_c, last_used, last_at = self._last[name]
                seconds += max(0.0, s - last_s)
                count += max(0.0, c - last_c)
                cpu = max(cpu, (used - last_used) / max(now - last_at, 1e-3))
            self._last[name] = (s, c, used, now)
        latency_ms = 1000 * seconds / count if count else None
        pressure = max((latency_ms or 0.0) / self.target_ms, cpu / self.target_cpu)
        # a tenth either way is noise (the Kubernetes autoscaler's tolerance)
        wanted = servers if abs(pressure - 1) <= 0.1 else math.ceil(servers * pressure)
        return Reading(servers, latency_ms, cpu, max(1, wanted))

    def step(self, say: Callable[[str], None]) -> Reading:
        reading = self.read()
        target = self.policy.settle(reading.servers, reading.wanted, time.monotonic())
        latency = f"{reading.latency_ms:.0f} ms" if reading.latency_ms is not None else "idle"
        say(
            f"web servers {reading.servers}: latency {latency}, CPU {reading.cpu:.0%}, "
            f"wants {reading.wanted}"
            + (f" -> scaling to {target}" if target != reading.servers else "")
        )
        if target != reading.servers:
            labs.scale(self.root, "web", target, say)
            self._last.clear()  # a new pool: the next reading starts afresh
        return reading


def autoscale_web(
    root: Path,
    minimum: int,
    maximum: int,
    say: Callable[[str], None],
    *,
    duration: float | None = None,
    interval: float = 2.0,
    target_ms: float = 100.0,
    target_cpu: float = 0.6,
    cooldown: float = 30.0,
) -> None:
    """Scale until interrupted (or for ``duration`` seconds)."""
    lab = labs.require(root)
    web = lab.layout.stage.find(WebServers)
    if web is None or not web.autoscaled:
        raise LabError("the web tier autoscales from stage 6: `lab up --stage 6`")
    if not 1 <= minimum <= maximum <= MAX_WEB_SERVERS:
        raise LabError(f"web=MIN:MAX with 1 <= MIN <= MAX <= {MAX_WEB_SERVERS}")
    scaler = WebAutoscaler(
        root, minimum, maximum, target_ms=target_ms, target_cpu=target_cpu, cooldown=cooldown
    )
    if not minimum <= lab.layout.web_count <= maximum:
        labs.scale(root, "web", max(minimum, min(maximum, lab.layout.web_count)), say)
    scaler.read()  # the first reading only sets the baseline
    end = None if duration is None else time.monotonic() + duration
    while end is None or time.monotonic() < end:
        time.sleep(interval)  # a reading covers one interval
        scaler.step(say)
