"""The edit pipeline on a 12-megapixel JPEG: pyvips against Pillow, side by side.

Each library runs in its own fresh child process (so peak memory is its own): decode,
crop to 90%, resize to 1080 px wide, sharpen, blur, encode JPEG Q85. Prints images per
second and peak RSS, with ratios to Pillow.

    uv run --frozen python bench/imaging.py [--iterations 10]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH, HEIGHT = 4000, 3000


def make_source(path: Path) -> None:
    import pyvips

    # noise over a gradient: a photo-like image that does not compress to nothing
    noise = pyvips.Image.gaussnoise(WIDTH, HEIGHT, mean=0, sigma=30)
    ramp = pyvips.Image.xyz(WIDTH, HEIGHT)[0] * (255 / WIDTH)
    rgb = (noise + ramp).bandjoin([noise * 0.5 + 128, ramp.flipver()]).cast("uchar")
    rgb = rgb.copy(interpretation="srgb")
    path.write_bytes(rgb.jpegsave_buffer(Q=90))


def run_pyvips(data: bytes) -> bytes:
    import pyvips

    image = pyvips.Image.new_from_buffer(data, "", access="sequential")
    w, h = image.width, image.height
    cw, ch = int(w * 0.9), int(h * 0.9)
    image = image.crop((w - cw) // 2, (h - ch) // 2, cw, ch)
    image = image.resize(1080 / cw)
    image = image.sharpen(sigma=1.0)
    image = image.gaussblur(1.5)
    out: bytes = image.jpegsave_buffer(Q=85, keep=0)
    return out


def run_pillow(data: bytes) -> bytes:
    from PIL import Image, ImageFilter

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        w, h = img.size
        cw, ch = int(w * 0.9), int(h * 0.9)
        left, top = (w - cw) // 2, (h - ch) // 2
        out_img = img.crop((left, top, left + cw, top + ch))
    out_img = out_img.resize((1080, round(ch * 1080 / cw)), Image.Resampling.LANCZOS)
    out_img = out_img.filter(ImageFilter.UnsharpMask(radius=2, percent=100, threshold=0))
    out_img = out_img.filter(ImageFilter.GaussianBlur(1.5))
    buf = io.BytesIO()
    out_img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def child(library: str, source: str, iterations: int) -> None:
    data = Path(source).read_bytes()
    if library == "pyvips":
        import pyvips

        pyvips.cache_set_max(0)  # as in the worker: each job is a new image
    fn = run_pyvips if library == "pyvips" else run_pillow
    fn(data)  # warm up: imports, codec tables
    start = time.perf_counter()
    for _ in range(iterations):
        fn(data)
    elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"per_s": iterations / elapsed, "peak_mb": peak_kb / 1024}))


def measure(library: str, source: Path, iterations: int) -> dict[str, float]:
    # the worker's environment: one malloc arena keeps threaded codecs from bloating RSS
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", library, str(source), str(iterations)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        library, source, iterations = args.child
        child(library, source, int(iterations))
        return
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "12mp.jpg"
        print(f"making a {WIDTH}x{HEIGHT} JPEG…", file=sys.stderr)
        make_source(source)
        results = {}
        for library in ("pillow", "pyvips"):
            print(f"running {library} x{args.iterations}…", file=sys.stderr)
            results[library] = measure(library, source, args.iterations)
        size_mb = source.stat().st_size / 1e6
    base = results["pillow"]
    print(
        f"edit pipeline on a {WIDTH}x{HEIGHT} JPEG ({size_mb:.1f} MB), "
        f"{args.iterations} runs each, {os.cpu_count()} CPUs, default threading, "
        "MALLOC_ARENA_MAX=1"
    )
    print(f"{'pipeline':<10}{'images/s':>10}{'ratio':>8}{'peak RSS MB':>14}{'ratio':>8}")
    for library, r in results.items():
        print(
            f"{library:<10}{r['per_s']:>10.2f}{r['per_s'] / base['per_s']:>8.2f}"
            f"{r['peak_mb']:>14.0f}{r['peak_mb'] / base['peak_mb']:>8.2f}"
        )
    speed = results["pyvips"]["per_s"] / base["per_s"]
    memory = results["pyvips"]["peak_mb"] / base["peak_mb"]
    print(f"target: throughput >= 1.8x Pillow -> {'met' if speed >= 1.8 else 'NOT met'}")
    print(f"target: peak memory <= 0.8x Pillow -> {'met' if memory <= 0.8 else 'NOT met'}")


if __name__ == "__main__":
    main()
