"""The CDN edge: small images per second from the edge against the origin alone, and the
share of requests the origin still serves under a Zipf workload.

10,000 ready photos are seeded in bulk (rows in the database, a ~10 KB thumbnail each in
the media directory: rendering 10,000 uploads would take half an hour on this machine and
is not what is measured), then:

1. hit throughput: wrk (CPU 1) asks for one thumbnail, for the same time, from
   `picscale serve` alone and from Varnish (each on CPU 0) with the VCL Picscale ships,
   after one request has put it at the edge;
2. Zipf: wrk asks the edge for thumbnails of the 10,000 photos drawn with Zipf popularity
   (alpha 1.0, ``bench/zipf.lua``): a warm-up, then a measured run; the origin's own
   request counter says how many of the measured requests reached it. Beside it, the
   share an ideal cache (unbounded, never expiring) would still miss: photos asked for
   the first time.

Targets: the edge serves at least 5x the origin's images/s on a hit (not named by the
issue; the point of an edge), and the origin serves at most 5% of the requests after the
warm-up.

    uv run --frozen python bench/cdn.py [--photos 10000] [--duration 10] [--warmup 60]
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pyvips

from _common import (
    free_port,
    log,
    machine_note,
    pinned,
    run_wrk,
    start_picscale,
    wait_until,
)
from cache import cold_floor, metric_sum, seed
from tests.support.varnish_server import VarnishServer

BENCH_DIR = Path(__file__).resolve().parent
ZIPF_SCRIPT = BENCH_DIR / "zipf.lua"
SERVER_CPU, WRK_CPU = 0, 1
MEDIA = r'picscale_http_requests_total\{.*route="/media/'


def thumbnail() -> bytes:
    noise = pyvips.Image.gaussnoise(200, 150, mean=128, sigma=20).cast("uchar")
    return bytes(noise.bandjoin([noise, noise]).jpegsave_buffer(Q=80))


def seed_media(data: Path, ids: list[int], image: bytes) -> None:
    for photo_id in ids:
        folder = data / "media" / "photos" / str(photo_id) / "v1"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "thumb.jpg").write_bytes(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of Zipf warm-up")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    args = parser.parse_args()
    if not Path(args.wrk).exists():
        parser.error(f"wrk not found at {args.wrk}: run `bash scripts/system-deps.sh bench`")
    with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp:
        data = Path(tmp) / "data"
        log(f"seeding {args.photos} photos…")
        ids = seed(data, args.photos)
        image = thumbnail()
        seed_media(data, ids, image)
        popular = ids[:]
        random.Random(1).shuffle(popular)  # popularity has nothing to do with age
        ids_file = Path(tmp) / "ids.txt"
        ids_file.write_text("\n".join(map(str, popular)) + "\n")
        edge_port = free_port()
        edge_url = f"http://127.0.0.1:{edge_port}"
        origin, server = start_picscale(data, job_workers=0, cpu=SERVER_CPU, cdn_url=edge_url)
        edge = VarnishServer(
            Path(tmp) / "varnish",
            edge_port,
            int(origin.rsplit(":", 1)[1]),
            prefix=tuple(pinned(SERVER_CPU)),
            storage_mb=512,
        )
        try:
            edge.start()
            path = f"/media/{popular[0]}/v1/thumb.jpg"
            wait_until(
                lambda: httpx.get(edge_url + path).headers.get("x-cache") == "HIT",
                timeout=30,
                what="the thumbnail at the edge",
            )
            rows = []
            for label, base in (("origin alone", origin), ("edge, hit", edge_url)):
                log(f"{label}: {args.duration:g} s on one thumbnail…")
                rows.append(
                    (
                        label,
                        run_wrk(
                            args.wrk,
                            base + path,
                            duration=args.duration,
                            connections=args.connections,
                            cpu=WRK_CPU,
                        ),
                    )
                )
            zipf_args = ("1.0", "{seed}", "/media/", "/v1/thumb.jpg")
            log(f"Zipf over {len(ids)} thumbnails at the edge: {args.warmup:g} s of warm-up…")
            warm = run_wrk(
                args.wrk,
                edge_url,
                duration=args.warmup,
                connections=args.connections,
                cpu=WRK_CPU,
                script=ZIPF_SCRIPT,
                script_args=(str(ids_file), *(a.format(seed=7) for a in zipf_args)),
            )
            wait_until(
                lambda: metric_sum(origin, MEDIA) >= 1, timeout=30, what="the origin's counters"
            )
            reached0 = settle(origin)
            log(f"Zipf: {args.duration:g} s measured…")
            measured = run_wrk(
                args.wrk,
                edge_url,
                duration=args.duration,
                connections=args.connections,
                cpu=WRK_CPU,
                script=ZIPF_SCRIPT,
                script_args=(str(ids_file), *(a.format(seed=42) for a in zipf_args)),
            )
            reached = settle(origin) - reached0
        finally:
            edge.close()
            server.stop()
    share = reached / measured.requests
    floor = cold_floor(len(ids), warm.requests, measured.requests)
    origin_rate = rows[0][1].rps
    print(
        f"a {len(image) / 1024:.1f} KB thumbnail, wrk -t1 -c{args.connections} "
        f"-d{args.duration:g}s (CPU {WRK_CPU}); server or edge on CPU {SERVER_CPU}; "
        f"{machine_note()}"
    )
    print(f"{'target':<16}{'req/s':>9}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for label, result in rows:
        print(
            f"{label:<16}{result.rps:>9.0f}"
            f"{result.rps / origin_rate:>8.2f}"
            f"{result.p50_ms:>9.2f}{result.p99_ms:>9.2f}{result.bad:>8}"
        )
    print()
    print(
        f"Zipf (alpha 1.0) over {len(ids)} thumbnails at the edge: warm-up "
        f"{warm.requests} requests, then {measured.requests} measured"
    )
    print(f"{'':<28}{'share':>8}")
    print(f"{'reached the origin':<28}{share:>8.2%}")
    print(f"{'ideal cache would miss':<28}{floor:>8.2%}")
    hit_ratio = rows[1][1].rps / origin_rate
    print(
        f"targets: edge hit >= 5x origin -> {hit_ratio:.1f}x "
        f"{'met' if hit_ratio >= 5 else 'NOT met'}; origin share <= 5% after warm-up -> "
        f"{share:.2%} {'met' if share <= 0.05 else 'NOT met'}"
    )


def settle(origin: str) -> float:
    """The origin's media request count once its processes have flushed their counters."""
    last = -1.0
    while True:
        time.sleep(1.2)  # processes flush their counters about once a second
        now = metric_sum(origin, MEDIA)
        if now == last:
            return now
        last = now


if __name__ == "__main__":
    main()
