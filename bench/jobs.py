"""The job queue: throughput per worker, queueing delay, scaling, and jobs lost to SIGKILL.

(Named jobs.py, not queue.py: Python puts a script's directory first on the import path,
and a bench/queue.py would stand in for the standard library's `queue` in every script
here, redis-py's imports included.)

For each backend (the SQLite lease table, and RabbitMQ started here):

1. throughput: a batch of photos is uploaded with no worker running (each upload queues
   a thumbnail job: the `large` and `thumb` variants of a 1600x1200 JPEG); then 1, and
   in a second run 2, `picscale worker --concurrency 1` processes drain it. Jobs per
   second are counted between the first job's start and the last job's end, from the
   workers' own log lines (process start-up is not counted).
2. queueing delay: 2 workers, photos uploaded at half the measured 2-worker throughput
   for `--steady` seconds; delay = a job's start (worker log) minus its row's creation.
3. SIGKILL: 2 workers, the same load for `--kill-for` seconds, a worker killed
   (with its process pool) every 5 s and replaced; then the queue drains. Lost = jobs
   that never finished; redone = jobs delivered more than once (a crash or a retry).

    uv run --frozen python bench/jobs.py [--jobs 120] [--steady 20] [--kill-for 60]
                                         [--vips-threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pyvips

from _common import (
    Process,
    clean_env,
    log,
    machine_note,
    percentile,
    sign_up,
    start_picscale,
    upload,
    wait_until,
)
from tests.support.rabbitmq_server import start_rabbitmq

WIDTH, HEIGHT = 1600, 1200
LEASE_SECONDS = 5  # the lease backend's recovery time after a kill


def make_photo() -> bytes:
    noise = pyvips.Image.gaussnoise(WIDTH, HEIGHT, mean=128, sigma=30)
    image = noise.bandjoin([noise, noise]).cast("uchar")
    return bytes(image.jpegsave_buffer(Q=85))


VIPS_THREADS = {"value": 1}  # --vips-threads


def worker_env(data: Path, queue_url: str) -> dict[str, str]:
    return clean_env(
        PICSCALE_DATA_DIR=str(data),
        PICSCALE_QUEUE_URL=queue_url,
        PICSCALE_LOG_LEVEL="info",
        PICSCALE_JOB_LEASE_SECONDS=str(LEASE_SECONDS),
        PICSCALE_VIPS_THREADS=str(VIPS_THREADS["value"]),
    )


def start_worker(data: Path, queue_url: str, name: str) -> Process:
    args = [sys.executable, "-m", "picscale", "worker", "--concurrency", "1"]
    return Process(args, worker_env(data, queue_url), data / f"{name}.log")


def kill(process: Process) -> None:
    if process.proc.poll() is None:
        os.killpg(process.proc.pid, signal.SIGKILL)
        process.proc.wait()


def events(paths: list[Path], name: str) -> dict[str, float]:
    """job id -> time of its last `name` log line (unix seconds), over all logs."""
    out: dict[str, float] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("event") == name and "job_id" in entry:
                out[entry["job_id"]] = datetime.fromisoformat(entry["timestamp"]).timestamp()
    return out


def job_rows(data: Path, ids: set[str]) -> dict[str, tuple[str, int, float]]:
    """job id -> (status, deliveries: its attempts and crashes, created at)"""
    with sqlite3.connect(data / "picscale.db") as conn:
        rows = conn.execute(
            "SELECT id, status, attempts + crashes, created_at FROM jobs"
        ).fetchall()
    return {
        str(r[0]): (r[1], r[2], datetime.fromisoformat(r[3]).timestamp())
        for r in rows
        if str(r[0]) in ids
    }


class Producer:
    def __init__(self, base: str, user: str, photo: bytes) -> None:
        self.client = httpx.Client(base_url=base, timeout=60)
        self.client.headers["Authorization"] = f"Bearer {sign_up(self.client, user)}"
        self.photo = photo

    def upload_jobs(self, count: int) -> set[str]:
        """Upload ``count`` photos; the ids of the jobs they queued."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            photos = list(pool.map(lambda _: upload(self.client, self.photo), range(count)))
        return self.jobs_of(photos)

    def jobs_of(self, photos: list[str]) -> set[str]:
        wanted = ",".join(str(int(p)) for p in photos)
        return set(self._query(f"SELECT id FROM jobs WHERE photo_id IN ({wanted})"))

    def _query(self, sql: str) -> list[str]:
        data = Path(os.environ["PICSCALE_BENCH_DATA"])
        with sqlite3.connect(data / "picscale.db") as conn:
            return [str(r[0]) for r in conn.execute(sql).fetchall()]

    def steady(self, rate: float, seconds: float) -> list[str]:
        photos: list[str] = []
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            photos.append(upload(self.client, self.photo))
            n += 1
            pause = start + n / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the producer, not waiting for a condition
        return photos


def drained(data: Path, ids: set[str]) -> bool:
    rows = job_rows(data, ids)
    return len(rows) == len(ids) and all(s in ("done", "dead") for s, _, _ in rows.values())


def throughput(data: Path, queue_url: str, producer: Producer, jobs: int, workers: int) -> float:
    ids = producer.upload_jobs(jobs)
    names = [f"tp-{workers}-{i}-{time.time_ns()}" for i in range(workers)]
    procs = [start_worker(data, queue_url, name) for name in names]
    try:
        wait_until(lambda: drained(data, ids), timeout=600, interval=0.2, what="the batch")
    finally:
        for proc in procs:
            proc.stop()
    logs = [data / f"{name}.log" for name in names]
    started = [t for j, t in events(logs, "job_started").items() if j in ids]
    done = [t for j, t in events(logs, "job_done").items() if j in ids]
    return len(ids) / (max(done) - min(started))


def queueing_delay(
    data: Path, queue_url: str, producer: Producer, rate: float, seconds: float
) -> list[float]:
    names = [f"steady-{i}-{time.time_ns()}" for i in range(2)]
    procs = [start_worker(data, queue_url, name) for name in names]
    logs = [data / f"{name}.log" for name in names]
    try:
        wait_until(
            lambda: (
                all("worker_started" in p.read_text() for p in logs if p.exists())
                and all(p.exists() for p in logs)
            ),
            timeout=60,
            what="the workers",
        )
        ids = producer.jobs_of(producer.steady(rate, seconds))
        wait_until(lambda: drained(data, ids), timeout=300, interval=0.2, what="the steady load")
    finally:
        for proc in procs:
            proc.stop()
    started = events(logs, "job_started")
    rows = job_rows(data, ids)
    return [started[j] - rows[j][2] for j in ids if j in started]


def kill_drill(
    data: Path, queue_url: str, producer: Producer, rate: float, seconds: float
) -> tuple[int, int, int, int]:
    """(jobs, lost, redone, kills)"""
    names = [f"kill-{i}-{time.time_ns()}" for i in range(2)]
    procs = [start_worker(data, queue_url, name) for name in names]
    photos: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            photos.append(upload(producer.client, producer.photo))
            stop.wait(1.0 / rate)

    feeder = threading.Thread(target=produce)
    feeder.start()
    kills = 0
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            stop.wait(5.0)
            victim = kills % len(procs)
            kill(procs[victim])
            kills += 1
            name = f"kill-{victim}-{time.time_ns()}"
            names.append(name)
            procs[victim] = start_worker(data, queue_url, name)
        stop.set()
        feeder.join()
        ids = producer.jobs_of(photos)
        # what does not finish is counted as lost below
        with contextlib.suppress(AssertionError):
            wait_until(lambda: drained(data, ids), timeout=180, interval=0.5, what="the drain")
    finally:
        stop.set()
        for proc in procs:
            proc.stop()
    rows = job_rows(data, ids)
    lost_ids = [j for j in ids if j not in rows or rows[j][0] != "done"]
    lost = len(lost_ids)
    if lost_ids:
        with sqlite3.connect(data / "picscale.db") as conn:
            for j in lost_ids:
                row = conn.execute(
                    "SELECT status, attempts, crashes, lease_owner, last_error FROM jobs "
                    "WHERE id = ?",
                    (int(j),),
                ).fetchone()
                log(f"not done: job {j}: {row}")
    redone = sum(1 for j in ids if j in rows and rows[j][1] > 1)
    return len(ids), lost, redone, kills


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=120, help="jobs per throughput batch")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of steady load")
    parser.add_argument("--kill-for", type=float, default=60.0, help="seconds of SIGKILLs")
    parser.add_argument("--only", choices=["lease", "amqp"], help="one backend")
    parser.add_argument(
        "--vips-threads", type=int, default=1, help="PICSCALE_VIPS_THREADS of the workers"
    )
    args = parser.parse_args()
    VIPS_THREADS["value"] = args.vips_threads
    photo = make_photo()
    rabbit = start_rabbitmq()
    results = {}
    try:
        backends = [("SQLite lease", "lease://"), ("RabbitMQ", rabbit.url)]
        if args.only:
            backends = [b for b in backends if b[1].startswith(args.only)]
        for label, queue_url in backends:
            with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp:
                data = Path(tmp) / "data"
                os.environ["PICSCALE_BENCH_DATA"] = str(data)
                base, server = start_picscale(data, job_workers=0, queue_url=queue_url)
                try:
                    producer = Producer(base, "queue", photo)
                    log(f"{label}: throughput with 1 worker…")
                    one = throughput(data, queue_url, producer, args.jobs, 1)
                    log(f"{label}: throughput with 2 workers…")
                    two = throughput(data, queue_url, producer, args.jobs, 2)
                    rate = two / 2
                    log(f"{label}: {args.steady:g} s at {rate:.1f} jobs/s…")
                    delays = queueing_delay(data, queue_url, producer, rate, args.steady)
                    log(f"{label}: SIGKILL every 5 s for {args.kill_for:g} s…")
                    drill = kill_drill(data, queue_url, producer, rate, args.kill_for)
                finally:
                    server.stop()
                results[label] = (one, two, rate, delays, drill)
    finally:
        rabbit.close()
    print(
        f"thumbnail jobs (large + thumb of a {WIDTH}x{HEIGHT} JPEG), {args.jobs} per batch, "
        f"`picscale worker --concurrency 1` processes, {args.vips_threads} libvips "
        f"thread(s) each; {machine_note()}"
    )
    print(
        f"{'backend':<14}{'1 worker/s':>11}{'2 workers/s':>12}{'2 over 1':>9}"
        f"{'load/s':>8}{'delay p50':>10}{'p99':>8}{'jobs':>6}{'kills':>6}{'lost':>5}"
        f"{'redone':>7}"
    )
    for label, (one, two, rate, delays, (jobs, lost, redone, kills)) in results.items():
        print(
            f"{label:<14}{one:>11.2f}{two:>12.2f}{two / one:>9.2f}{rate:>8.1f}"
            f"{percentile(delays, 0.5) * 1000:>8.0f}ms{percentile(delays, 0.99) * 1000:>6.0f}ms"
            f"{jobs:>6}{kills:>6}{lost:>5}{redone:>7}"
        )
    scaling = min(two / one for one, two, *_ in results.values())
    lost_total = sum(r[4][1] for r in results.values())
    print(
        f"targets: 2 workers over 1 >= 1.7 -> {scaling:.2f} "
        f"{'met' if scaling >= 1.7 else 'NOT met'}; jobs lost under SIGKILL = 0 -> "
        f"{lost_total} {'met' if lost_total == 0 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
