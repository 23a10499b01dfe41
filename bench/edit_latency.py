"""Edit latency: submit an edit of a 12-megapixel JPEG, wait until its job is done.

Starts ``picscale serve --job-workers 1`` (embedded defaults, a temporary data directory),
uploads 4000x3000 JPEGs (noise over gradients, Q90) and, ``--runs`` times each way,
submits an edit (crop to 90%, sharpen sigma 1, blur sigma 1.5) and waits for it to be
done, alternating two clients: one listens to the job's event stream
(``GET /api/v1/jobs/{id}/events``, what the web page does), one polls
``GET /api/v1/jobs/{id}`` every 10 ms. The time from submit to done is what a user
waits. Edits chain on a photo's current version, so each run edits a fresh photo of the
same image. For context, the render alone (``picscale.imaging.render`` called in this
process) is timed too. Target: median submit-to-done < 500 ms (the event stream).

    uv run --frozen python bench/edit_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from _common import (
    log,
    machine_note,
    percentile,
    sign_up,
    start_picscale,
    upload,
    wait_photo_ready,
)

WIDTH, HEIGHT = 4000, 3000
TARGET_MS = 500.0
POLL_SECONDS = 0.010
JOB_TIMEOUT = 120.0


def make_source(noise_sigma: float) -> bytes:
    """A photo-like 12 MP JPEG: noise over gradients does not compress to nothing. Noise
    sigma 10 gives about 4 MB, a phone camera's JPEG; 30 gives an 11 MB stress case."""
    import pyvips

    noise = pyvips.Image.gaussnoise(WIDTH, HEIGHT, mean=0, sigma=noise_sigma)
    ramp = pyvips.Image.xyz(WIDTH, HEIGHT)[0] * (255 / WIDTH)
    rgb = (noise + ramp).bandjoin([noise * 0.5 + 128, ramp.flipver()]).cast("uchar")
    rgb = rgb.copy(interpretation="srgb")
    data: bytes = rgb.jpegsave_buffer(Q=90)
    return data


def edit_operations() -> list[dict[str, Any]]:
    width, height = int(WIDTH * 0.9), int(HEIGHT * 0.9)
    return [
        {
            "op": "crop",
            "x": (WIDTH - width) // 2,
            "y": (HEIGHT - height) // 2,
            "width": width,
            "height": height,
        },
        {"op": "sharpen", "sigma": 1.0},
        {"op": "blur", "sigma": 1.5},
    ]


def timed_edit_events(client: httpx.Client, photo_id: str) -> tuple[float, float | None]:
    """Like ``timed_edit``, waiting on the job's Server-Sent Events stream."""
    start = time.perf_counter()
    job_id = submit(client, photo_id)
    running_at: float | None = None
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=JOB_TIMEOUT) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            status = json.loads(line.split(":", 1)[1])["status"]
            if status == "running" and running_at is None:
                running_at = time.perf_counter()
            if status == "failed":
                raise RuntimeError(f"job {job_id} failed")
            if status == "done":
                done = time.perf_counter()
                break
        else:
            raise RuntimeError(f"the stream of job {job_id} ended before it was done")
    running_ms = None if running_at is None else (running_at - start) * 1000
    return (done - start) * 1000, running_ms


def submit(client: httpx.Client, photo_id: str) -> str:
    r = client.post(f"/api/v1/photos/{photo_id}/edits", json={"operations": edit_operations()})
    if r.status_code != 202:
        raise RuntimeError(f"edit refused: {r.status_code} {r.text}")
    return str(r.json()["id"])


def timed_edit(client: httpx.Client, photo_id: str) -> tuple[float, float | None]:
    """(submit-to-done ms, submit-to-first-seen-running ms or None), polling."""
    start = time.perf_counter()
    job_id = submit(client, photo_id)
    running_at: float | None = None
    deadline = start + JOB_TIMEOUT
    while True:
        body = client.get(f"/api/v1/jobs/{job_id}").raise_for_status().json()
        now = time.perf_counter()
        status = body["status"]
        if status == "done":
            break
        if status == "failed":
            raise RuntimeError(f"job {job_id} failed: {body}")
        if status == "running" and running_at is None:
            running_at = now
        if now > deadline:
            raise RuntimeError(f"job {job_id} not done after {JOB_TIMEOUT}s: {body}")
        time.sleep(POLL_SECONDS)
    running_ms = None if running_at is None else (running_at - start) * 1000
    return (now - start) * 1000, running_ms


def render_alone(source: bytes, repeats: int) -> list[float]:
    import msgspec

    from picscale.imaging import Operation, render
    from picscale.settings import Settings

    operations = msgspec.convert(edit_operations(), list[Operation])
    max_pixels = Settings().photos.max_pixels
    render(source, operations, max_pixels=max_pixels)  # warm up: imports, codec tables
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        render(source, operations, max_pixels=max_pixels)
        times.append((time.perf_counter() - start) * 1000)
    return times


def row(name: str, values: list[float]) -> str:
    return (
        f"{name:<34}{len(values):>5}{min(values):>9.0f}{statistics.median(values):>9.0f}"
        f"{percentile(values, 0.9):>9.0f}{max(values):>9.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=20, help="timed edits")
    parser.add_argument("--warmup", type=int, default=1, help="untimed edits first")
    parser.add_argument("--render-repeats", type=int, default=5, help="in-process renders")
    parser.add_argument(
        "--noise", type=float, default=10.0, help="noise sigma of the test photo (30: 11 MB)"
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be >= 1")

    log(f"making a {WIDTH}x{HEIGHT} JPEG…")
    source = make_source(args.noise)
    totals: list[float] = []
    to_running: list[float] = []
    polled: list[float] = []
    load_during = ""
    with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp_name:
        log("starting picscale serve…")
        base, server = start_picscale(Path(tmp_name) / "data", job_workers=1)
        try:
            with httpx.Client(base_url=base, timeout=60.0) as client:
                sign_up(client)
                count = args.warmup + 2 * args.runs
                log(f"uploading {count} photos ({len(source) / 1e6:.1f} MB each)…")
                photo_ids = [upload(client, source, caption=f"edit {i}") for i in range(count)]
                log("waiting until they are ready…")
                for photo_id in photo_ids:
                    wait_photo_ready(client, photo_id, timeout=300.0)
                for i, photo_id in enumerate(photo_ids):
                    warm = i < args.warmup
                    by_poll = not warm and (i - args.warmup) % 2 == 1
                    timed = timed_edit if by_poll else timed_edit_events
                    total_ms, running_ms = timed(client, photo_id)
                    how = "polling" if by_poll else "events"
                    label = "warm-up" if warm else f"run {(i - args.warmup) // 2 + 1}/{args.runs}"
                    log(f"{label} ({how}): submit->done {total_ms:.0f} ms")
                    if warm:
                        continue
                    if by_poll:
                        polled.append(total_ms)
                        continue
                    totals.append(total_ms)
                    if running_ms is not None:
                        to_running.append(running_ms)
                load_during = machine_note()
            server.check_alive()
        finally:
            server.stop()

    log(f"rendering in-process x{args.render_repeats}…")
    renders = render_alone(source, args.render_repeats)

    print(
        f"edit of a {WIDTH}x{HEIGHT} JPEG ({len(source) / 1e6:.1f} MB, Q90): crop 90%, "
        f"sharpen sigma 1, blur sigma 1.5; picscale serve --job-workers 1, embedded "
        f"defaults; runs alternate the two clients; {load_during}"
    )
    print(f"{'measure':<34}{'n':>5}{'min ms':>9}{'median':>9}{'p90':>9}{'max':>9}")
    print(row("submit -> done (event stream)", totals))
    if to_running:
        print(row("submit -> running event", to_running))
    print(row(f"submit -> done (poll {POLL_SECONDS * 1000:.0f} ms)", polled))
    print(row("render alone (in-process)", renders))
    median = statistics.median(totals)
    verdict = "met" if median < TARGET_MS else "NOT met"
    print(f"target: median < {TARGET_MS:.0f} ms -> {verdict} ({median:.0f} ms)")


if __name__ == "__main__":
    main()
