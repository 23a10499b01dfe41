"""``picscale worker --autoscale MIN:MAX``: worker processes scaled by queue depth.

Like KEDA's queue scaler: every ``autoscale_interval_seconds`` the queue depth is read;
the wanted number of workers is ``ceil(depth / autoscale_jobs_per_worker)`` within
MIN..MAX. Growing takes ``autoscale_up_samples`` readings in a row that want more (a
blip does not start processes); shrinking waits until the queue has wanted fewer for
``autoscale_cooldown_seconds``, then stops one worker at a time with SIGTERM (it
finishes or returns its jobs). A worker that dies is replaced. Every decision is
logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import structlog
from prometheus_client import multiprocess

from picscale.observability.logging import configure_logging
from picscale.observability.metrics import Metrics
from picscale.services import build_services
from picscale.settings import Settings
from picscale.worker.metrics_server import serve_metrics

log = structlog.get_logger("picscale.autoscale")

STOP_TIMEOUT_SECONDS = 40.0


@dataclass
class Policy:
    """The decision rule alone, so that it can be reasoned about (and tested) apart."""

    minimum: int
    maximum: int
    jobs_per_worker: int
    up_samples: int
    cooldown_seconds: float
    _wants_more: int = 0
    _fewer_since: float | None = None
    history: list[tuple[int, int, int]] = field(default_factory=list)

    def wanted(self, depth: int) -> int:
        return max(self.minimum, min(self.maximum, math.ceil(depth / self.jobs_per_worker)))

    def decide(self, current: int, depth: int, now: float) -> int:
        """The number of workers to run now."""
        return self.settle(current, self.wanted(depth), now)

    def settle(self, current: int, wanted: int, now: float) -> int:
        """The hysteresis alone: how many to run now when a reading wants ``wanted``
        (clamped to MIN..MAX); any tier that scales on a reading can use it."""
        wanted = max(self.minimum, min(self.maximum, wanted))
        if current < self.minimum:
            return self.minimum
        if wanted > current:
            self._fewer_since = None
            self._wants_more += 1
            return wanted if self._wants_more >= self.up_samples else current
        self._wants_more = 0
        if wanted < current:
            if self._fewer_since is None:
                self._fewer_since = now
            if now - self._fewer_since >= self.cooldown_seconds:
                self._fewer_since = now  # the next step down waits a cooldown again
                return current - 1
            return current
        self._fewer_since = None
        return current


class Autoscaler:
    def __init__(self, settings: Settings, minimum: int, maximum: int) -> None:
        self.settings = settings
        self.policy = Policy(
            minimum,
            maximum,
            settings.worker.autoscale_jobs_per_worker,
            settings.worker.autoscale_up_samples,
            settings.worker.autoscale_cooldown_seconds,
        )
        self.workers: list[subprocess.Popen[bytes]] = []
        self.stopping: list[subprocess.Popen[bytes]] = []

    def _start_worker(self) -> subprocess.Popen[bytes]:
        concurrency = str(self.settings.worker.concurrency)
        command = [sys.executable, "-m", "picscale", "worker", "--concurrency", concurrency]
        return subprocess.Popen(command, env={**os.environ, **self.settings.as_env()})

    def _reap(self) -> None:
        children = [*self.stopping, *self.workers]
        for proc in list(self.stopping):
            if proc.poll() is not None:
                self.stopping.remove(proc)
        for proc in list(self.workers):
            if proc.poll() is not None:
                log.warning("worker_exited", pid=proc.pid, code=proc.returncode)
                self.workers.remove(proc)
        for proc in children:
            if proc.poll() is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                # its live gauges no longer count
                multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]

    def _scale_to(self, target: int, depth: int, reason: str, metrics: Metrics) -> None:
        before = len(self.workers)
        if target == before:
            return
        direction = "up" if target > before else "down"
        while len(self.workers) < target:
            self.workers.append(self._start_worker())
        while len(self.workers) > target:
            proc = self.workers.pop()  # the newest goes first
            proc.send_signal(signal.SIGTERM)
            self.stopping.append(proc)
        metrics.autoscale_decisions.labels(direction, reason).inc()
        metrics.workers.set(target)
        log.info(
            "autoscale", direction=direction, reason=reason, workers=target, before=before,
            queue_depth=depth,
        )  # fmt: skip

    async def run(self, stop: asyncio.Event, metrics_port: int | None = None) -> None:
        services = build_services(self.settings)
        await services.start(mint_ids=False)
        metrics = services.metrics
        interval = self.settings.worker.autoscale_interval_seconds
        policy = self.policy
        server = None
        if metrics_port is not None:
            server = await serve_metrics(metrics, self.settings.web.host, metrics_port)
        try:
            self._scale_to(policy.minimum, 0, "minimum", metrics)
            while not stop.is_set():
                self._reap()
                try:
                    depth = await services.queue.depth()
                except Exception as exc:
                    log.warning("queue_depth_failed", error=repr(exc)[:200])
                    depth = -1
                metrics.queue_depth.set(max(depth, 0))
                if depth >= 0:
                    current = len(self.workers)
                    target = policy.decide(current, depth, time.monotonic())
                    reason = "replace" if current < policy.minimum else "queue_depth"
                    self._scale_to(target, depth, reason, metrics)
                elif len(self.workers) < policy.minimum:
                    self._scale_to(policy.minimum, 0, "replace", metrics)
                metrics.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
        finally:
            if server is not None:
                server.close()
            await self._stop_all()
            await services.close()

    async def _stop_all(self) -> None:
        children = [*self.workers, *self.stopping]
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for proc in children:
            try:
                await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def run_autoscaler(
    settings: Settings, minimum: int, maximum: int, metrics_port: int | None = None
) -> None:
    configure_logging(settings.log_level, process="autoscale")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("autoscaler_started", minimum=minimum, maximum=maximum)
    await Autoscaler(settings, minimum, maximum).run(stop, metrics_port)
