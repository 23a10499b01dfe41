"""The worker: a few claim loops in one process, pyvips work in a process pool.

Each claimed job holds a lease that a heartbeat renews; a worker that dies (even by
SIGKILL) stops renewing, the lease runs out and another worker takes the job again.
Handlers are idempotent by job id, so a job run twice has the effect of one run.
SIGTERM stops claiming, lets running jobs finish, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import structlog

from picscale.clock import utcnow
from picscale.imaging import Operation, Rendered, configure_vips, render
from picscale.jobs import handlers
from picscale.jobs.handler import JobHandler, JobRefused
from picscale.jobs.render_version import Renderer
from picscale.observability.logging import configure_logging
from picscale.observability.metrics import Metrics
from picscale.services import Services, build_services
from picscale.settings import Settings
from picscale.tiers.db import WriteTx
from picscale.tiers.db.database import ShardMoving
from picscale.tiers.db.read_your_writes import job_scope
from picscale.tiers.queue import ClaimedJob
from picscale.worker.metrics_server import serve_metrics

log = structlog.get_logger("picscale.worker")

DEPTH_SAMPLE_SECONDS = 2.0
SHUTDOWN_GRACE_SECONDS = 30.0


def _render_in_child(source: bytes, operations: list[Operation], max_pixels: int) -> Rendered:
    return render(source, operations, max_pixels=max_pixels)


@contextlib.contextmanager
def _group_signals_blocked() -> Iterator[None]:
    """While a pool may start a process (it does so inside ``submit``): the new process
    inherits a signal mask that blocks SIGTERM and SIGINT, so a signal sent to the worker's
    process group cannot kill it while it is still starting, before its initializer has
    set the signals aside. (Found as a pool that broke when SIGTERM met a starting child.)
    Signals that arrive meanwhile reach the worker when the mask is restored."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _child_init(vips_threads: int) -> None:
    # the pool's processes leave signals to the worker that owns them: a SIGTERM sent to
    # the whole process group (systemd, Ctrl-C) must not kill the jobs it lets finish;
    # the worker ends its pool when it stops, and a pool process whose worker died
    # exits when its task pipe closes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_vips(vips_threads)


class Completion:
    """How a job ends done: its result stored and the job marked done in one
    transaction (the handler's, through ``storing``, or the worker's)."""

    def __init__(self, services: Services, job: ClaimedJob) -> None:
        self._services = services
        self._job = job
        self.done = False

    @contextlib.asynccontextmanager
    async def storing(self, result: dict[str, Any]) -> AsyncIterator[WriteTx]:
        async with self._services.shards.write(self._job.id) as tx:
            yield tx
            await self._services.queue.complete(tx, self._job, result)
        self.done = True


class Worker:
    def __init__(
        self, services: Services, *, name: str | None = None, render: Renderer | None = None
    ) -> None:
        """``render``: how image pipelines run (default: in the worker's process pool)."""
        self.services = services
        self.settings = services.settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._pool: ProcessPoolExecutor | None = None
        self._handlers = handlers(services, render or self._render)
        self.running: set[int] = set()

    # -- the process pool ------------------------------------------------------------

    async def _render(
        self, source: bytes, operations: Sequence[Operation], max_pixels: int
    ) -> Rendered:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            with _group_signals_blocked():
                rendered = loop.run_in_executor(
                    self._pool, _render_in_child, source, list(operations), max_pixels
                )
            return await rendered
        except BrokenProcessPool:
            # a child died (killed, out of memory): a new pool for the next attempt
            log.error("process_pool_broken")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            raise

    def _new_pool(self) -> ProcessPoolExecutor:
        # glibc gives each libvips thread its own malloc arena; one keeps peak RSS near the
        # image's size (read when a child starts, so set before the pool spawns them)
        os.environ.setdefault("MALLOC_ARENA_MAX", "1")
        return ProcessPoolExecutor(
            max_workers=self.settings.worker.concurrency,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(self.settings.worker.vips_threads,),
        )

    # -- the loop --------------------------------------------------------------------

    async def _run_handler(self, handler: JobHandler, job: ClaimedJob) -> dict[str, Any]:
        """The handler, run again when a shard move fenced its write (once the map
        names the new cluster): a move's pause is not a failed attempt."""
        for attempt in range(MOVE_RETRIES + 1):
            try:
                return await _run_once(self.services, handler, job)
            except ShardMoving as exc:
                if attempt == MOVE_RETRIES:
                    raise
                await self.services.shards.wait_moved(exc.map_version or 0)
        raise AssertionError("unreachable")

    async def run(self, stop: asyncio.Event) -> None:
        concurrency = self.settings.worker.concurrency
        self._pool = self._new_pool()
        # start the pool's processes now, not on the first job
        with _group_signals_blocked():
            started = [
                asyncio.get_running_loop().run_in_executor(self._pool, os.getpid)
                for _ in range(concurrency)
            ]
        await asyncio.gather(*started)
        log.info("worker_started", worker=self.name, concurrency=concurrency)
        loops = [asyncio.create_task(self._claim_loop(stop)) for _ in range(concurrency)]
        sampler = asyncio.create_task(self._sample_depth(stop))
        upkeep = asyncio.create_task(self._maintain(stop))
        try:
            await stop.wait()
            log.info("worker_stopping", worker=self.name, running=len(self.running))
            await self.services.queue.stop_consuming()
            _, pending = await asyncio.wait(loops, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:  # returned to the queue: another worker runs them
                task.cancel()
        finally:
            sampler.cancel()
            upkeep.cancel()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, sampler, upkeep, return_exceptions=True)
            self._pool.shutdown(wait=False, cancel_futures=True)
            log.info("worker_stopped", worker=self.name)

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        queue = self.services.queue
        poll = self.settings.queue.poll_seconds
        while not stop.is_set():
            try:
                job = await queue.claim(self.name)
            except Exception:
                log.exception("claim_failed", worker=self.name)
                job = None
                poll_for = min(5.0, max(poll, 1.0))
            else:
                poll_for = poll
            if job is None:
                await self._idle(stop, poll_for)
                continue
            await self.process(job)

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        """Until new work may be there, the poll interval passes, or we are stopping."""
        waits = [
            asyncio.create_task(stop.wait()),
            asyncio.create_task(self.services.queue.wait_for_work(seconds)),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _sample_depth(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.services.metrics.queue_depth.set(await self.services.queue.depth())
                self.services.metrics.dead_jobs.set(await self.services.queue.dead_count())
            except Exception:
                log.warning("queue_depth_failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=DEPTH_SAMPLE_SECONDS)

    async def _maintain(self, stop: asyncio.Event) -> None:
        """The queue's housekeeping (the outbox relay) about once a second."""
        while not stop.is_set():
            try:
                await self.services.queue.maintain()
            except Exception as exc:
                log.warning("queue_upkeep_failed", error=repr(exc)[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def _heartbeat(self, job: ClaimedJob) -> None:
        interval = max(0.2, self.settings.queue.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            if not await self.services.queue.extend(job):
                log.warning("lease_lost", job_id=job.id)
                return

    async def process(self, job: ClaimedJob) -> str:
        """Run one claimed job to an outcome: done, retry or failed."""
        structlog.contextvars.bind_contextvars(
            request_id=job.payload.get("request_id"), job_id=str(job.id), job_kind=job.kind
        )
        metrics = self.services.metrics
        queue = self.services.queue
        self.running.add(job.id)
        metrics.jobs_in_flight.inc()
        if job.queued_at is not None:
            waited = (utcnow() - job.queued_at).total_seconds()
            metrics.job_queueing_delay.labels(job.kind).observe(max(0.0, waited))
        heartbeat = asyncio.create_task(self._heartbeat(job))
        await self.services.events.notify(job.id)  # running: streams of this job update
        start = time.perf_counter()
        outcome = "done"
        try:
            log.info(
                "job_started",
                attempt=job.attempts,
                max_attempts=job.max_attempts,
                crashes=job.crashes,
            )
            handler = self._handlers.get(job.kind)
            if handler is None:
                outcome = await queue.fail(job, f"no handler for kind {job.kind!r}", permanent=True)
            else:
                limit = handler.time_limit or self.settings.worker.time_limit_seconds
                try:
                    # the job reads at least what the request that queued it had seen
                    result = await asyncio.wait_for(self._run_handler(handler, job), limit)
                    log.info("job_done", result=result)
                except JobRefused as exc:
                    outcome = await queue.fail(job, exc.message, permanent=True)
                except TimeoutError:
                    outcome = await queue.fail(job, f"the job took longer than {limit} s")
                except Exception as exc:
                    log.exception("job_error")
                    outcome = await queue.fail(job, f"{type(exc).__name__}: {exc}")
                if outcome == "dead":
                    await handler.dead(job)
        finally:
            heartbeat.cancel()
            self.running.discard(job.id)
            metrics.jobs_in_flight.dec()
            await self.services.events.notify(job.id)
            label = {"dead": "failed", "failed": "retry"}.get(outcome, outcome)
            metrics.jobs.labels(job.kind, label).inc()
            metrics.job_duration.labels(job.kind).observe(time.perf_counter() - start)
            if outcome != "done":
                log.warning("job_not_done", outcome=label)
            structlog.contextvars.unbind_contextvars("request_id", "job_id", "job_kind")
        return label


MOVE_RETRIES = 3


async def _run_once(services: Services, handler: JobHandler, job: ClaimedJob) -> dict[str, Any]:
    # the job reads at least what the request that queued it had seen
    with job_scope(job.payload):
        completion = Completion(services, job)
        result = await handler.run(job, completion)
        if not completion.done:
            async with completion.storing(result):
                pass
    return result


async def run_worker(
    settings: Settings, stop: asyncio.Event | None = None, metrics_port: int | None = None
) -> None:
    """The ``picscale worker`` process: runs until SIGTERM or SIGINT."""
    configure_logging(settings.log_level, process="worker")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    services = build_services(settings, Metrics())
    await services.start()
    flusher = asyncio.create_task(services.metrics.flush_every())
    server = None
    if metrics_port is not None:
        server = await serve_metrics(services.metrics, settings.web.host, metrics_port)
    try:
        await Worker(services).run(stop)
    finally:
        if server is not None:
            server.close()
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        await services.close()
