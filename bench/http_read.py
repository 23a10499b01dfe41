"""Warm photo reads over HTTP against a bare Litestar hello-world, side by side.

Starts ``picscale serve --workers 1 --job-workers 1`` (embedded defaults, a temporary data
directory), uploads a photo and warms ``GET /api/v1/photos/{id}``; starts a hello-world
Litestar app (returning a JSON body of the same size) under granian with the settings
``picscale serve`` gives granian. Both servers are pinned to one CPU and wrk to another
(when taskset exists); wrk runs against each in turn, ``--rounds`` times, and the best
round of each counts. Target: warm photo reads at >= 0.50 of hello-world's req/s.

    uv run --frozen python bench/http_read.py [--duration 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from _common import (
    HOST,
    Process,
    WrkResult,
    clean_env,
    free_port,
    log,
    machine_note,
    pinned,
    run_wrk,
    sign_up,
    start_picscale,
    upload,
    wait_http_ok,
    wait_photo_ready,
)

BENCH_DIR = Path(__file__).resolve().parent
BODY_ENV = "PICSCALE_BENCH_HELLO_BODY"
TARGET_RATIO = 0.50


def hello_app() -> Any:
    """The baseline: granian imports this factory (``http_read:hello_app``)."""
    from litestar import Litestar, get

    body: dict[str, Any] = json.loads(os.environ.get(BODY_ENV) or '{"hello": "world"}')

    @get("/")
    async def hello() -> dict[str, Any]:
        return body

    return Litestar(route_handlers=[hello], openapi_config=None)


def start_hello(tmp: Path, body: bytes, cpu: int | None) -> tuple[str, Process]:
    """granian with the options ``picscale serve`` passes it (see picscale.serve)."""
    port = free_port()
    env = clean_env(**{BODY_ENV: body.decode()})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH")) if p)
    args = [
        *pinned(cpu),
        sys.executable, "-m", "granian",
        "--interface", "asgi",
        "--factory",
        "--host", HOST,
        "--port", str(port),
        "--workers", "1",
        "--no-ws",
        "--log-level", "warning",
        "--respawn-failed-workers",
        "http_read:hello_app",
    ]  # fmt: skip
    process = Process(args, env, tmp / f"hello-{port}.log")
    url = f"http://{HOST}:{port}/"
    wait_http_ok(process, url, "the hello-world server to be ready")
    return url, process


def small_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1024, 768), (200, 80, 40)).save(buf, "JPEG")
    return buf.getvalue()


# -- main ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per target")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU both servers run on")
    parser.add_argument("--wrk-cpu", type=int, default=1, help="CPU wrk runs on")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    args = parser.parse_args()
    if not Path(args.wrk).exists():
        parser.error(f"wrk not found at {args.wrk}: run `bash scripts/system-deps.sh bench`")
    server_cpu = None if args.no_pin else args.server_cpu
    wrk_cpu = None if args.no_pin else args.wrk_cpu
    pinning = bool(pinned(server_cpu)) and bool(pinned(wrk_cpu))

    processes: list[Process] = []
    try:
        with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp_name:
            tmp = Path(tmp_name)
            log("starting picscale serve…")
            base, server = start_picscale(tmp / "data", workers=1, job_workers=1, cpu=server_cpu)
            processes.append(server)
            with httpx.Client(base_url=base, timeout=30.0) as client:
                log("creating a user and uploading a photo…")
                sign_up(client)
                photo_id = upload(client, small_jpeg(), caption="a warm read")
                wait_photo_ready(client, photo_id)
                client.headers.pop("Authorization")  # photo reads are public
                photo_path = f"/api/v1/photos/{photo_id}"
                for _ in range(20):  # fill the cache
                    client.get(photo_path).raise_for_status()
                body = client.get(photo_path).raise_for_status().content
            photo_url = base + photo_path

            log(f"starting the hello-world app (a {len(body)}-byte JSON body)…")
            hello_url, hello = start_hello(tmp, body, server_cpu)
            processes.append(hello)

            targets = {
                "hello-world (litestar)": hello_url,
                "GET /api/v1/photos/{id} warm": photo_url,
            }
            for name, url in targets.items():
                log(f"warming {name} for {args.warmup:g}s…")
                run_wrk(
                    args.wrk, url, duration=args.warmup, connections=args.connections, cpu=wrk_cpu
                )
            results: dict[str, list[WrkResult]] = {name: [] for name in targets}
            for round_no in range(1, args.rounds + 1):
                for name, url in targets.items():
                    log(f"round {round_no}/{args.rounds}: wrk {args.duration:g}s against {name}…")
                    r = run_wrk(
                        args.wrk,
                        url,
                        duration=args.duration,
                        connections=args.connections,
                        cpu=wrk_cpu,
                    )
                    log(
                        f"  {r.rps:.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms"
                        + (f", {r.bad} errors" if r.bad else "")
                    )
                    results[name].append(r)
            for process in processes:
                process.check_alive()
    finally:
        for process in reversed(processes):
            process.stop()

    best = {name: max(runs, key=lambda r: r.rps) for name, runs in results.items()}
    baseline = best["hello-world (litestar)"].rps
    pin_note = f"servers on CPU {server_cpu}, wrk on CPU {wrk_cpu}" if pinning else "no CPU pinning"
    print(
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s, best of {args.rounds} alternating "
        f"rounds; granian --interface asgi --workers 1 --no-ws; {pin_note}; {machine_note()}"
    )
    print(f"{'target':<31}{'req/s':>8}{'ratio':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, r in best.items():
        print(
            f"{name:<31}{r.rps:>8.0f}{r.rps / baseline:>9.2f}"
            f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{sum(x.bad for x in results[name]):>8}"
        )
    ratio = best["GET /api/v1/photos/{id} warm"].rps / baseline
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"target: >= {TARGET_RATIO:.2f} of hello-world -> {verdict} ({ratio:.2f})")


if __name__ == "__main__":
    main()
