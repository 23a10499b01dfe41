"""The edit pipeline on a 12-megapixel JPEG: pyvips against Pillow, side by side.

Each library runs in a fresh child process of its own, so the peak RSS it reports is its
own: decode, crop to the central 90%, resize to 1080 px wide, sharpen, blur, encode as
JPEG Q85. Both decode every pixel (no shrink-on-load: the service must keep a full-size
original). The children run as the worker's render processes do: libvips' operation
cache off, MALLOC_ARENA_MAX=1, libvips on its default thread count.

The libraries take turns over several rounds (a fresh child each time) and the median
round counts, so that a burst of other load on the machine does not decide the result.

    uv run --frozen python bench/imaging.py [--iterations 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WIDTH, HEIGHT = 4000, 3000
KEEP = 0.9  # the crop keeps the central 90% of each side
TARGET_WIDTH = 1080
SHARPEN_SIGMA = 1.0
BLUR_SIGMA = 2.0
QUALITY = 85
LIBRARIES = ("pillow", "pyvips")
TARGET_SPEED = 1.8  # pyvips images/s >= 1.8x Pillow's
TARGET_MEMORY = 0.8  # pyvips peak RSS <= 0.8x Pillow's


def make_source(path: Path) -> None:
    """A photo-like 12 MP JPEG: gradients under noise, so it does not compress to nothing."""
    import pyvips

    noise = pyvips.Image.gaussnoise(WIDTH, HEIGHT, mean=0, sigma=25)
    xy = pyvips.Image.xyz(WIDTH, HEIGHT)
    across = xy[0] * (255 / WIDTH)
    down = xy[1] * (255 / HEIGHT)
    red = across * 0.8 + noise + 20
    green = down * 0.7 + noise * 0.8 + 40
    blue = (across + down) * 0.4 + noise * 0.6 + 30
    image = red.bandjoin([green, blue]).cast("uchar").copy(interpretation="srgb")
    path.write_bytes(image.jpegsave_buffer(Q=92))


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the central KEEP x KEEP part."""
    w, h = int(width * KEEP), int(height * KEEP)
    return (width - w) // 2, (height - h) // 2, w, h


def edit_pyvips(data: bytes) -> tuple[bytes, int, int]:
    import pyvips

    from picscale.imaging import Blur, Sharpen, apply_operations

    image = pyvips.Image.jpegload_buffer(data, access="sequential")
    image = image.crop(*crop_box(image.width, image.height))
    image = image.resize(TARGET_WIDTH / image.width)
    # sharpen and blur exactly as the worker runs them
    image = apply_operations(image, [Sharpen(sigma=SHARPEN_SIGMA), Blur(sigma=BLUR_SIGMA)])
    out: bytes = image.jpegsave_buffer(Q=QUALITY, keep=0)
    return out, int(image.width), int(image.height)


def edit_pillow(data: bytes) -> tuple[bytes, int, int]:
    from PIL import Image, ImageFilter

    with Image.open(io.BytesIO(data)) as source:
        source.load()
        left, top, w, h = crop_box(*source.size)
        image = source.crop((left, top, left + w, top + h))
    image = image.resize((TARGET_WIDTH, round(h * TARGET_WIDTH / w)), Image.Resampling.LANCZOS)
    image = image.filter(ImageFilter.UnsharpMask(radius=SHARPEN_SIGMA, percent=100, threshold=0))
    image = image.filter(ImageFilter.GaussianBlur(radius=BLUR_SIGMA))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY)
    return out.getvalue(), image.width, image.height


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MiB.

    VmHWM belongs to this process's own address space. ru_maxrss would not do: Linux
    carries the parent's peak across fork and exec into the child's ru_maxrss, so every
    child would report at least what the parent (which made the source image) reached.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(library: str, source: Path, iterations: int) -> None:
    """Runs in the fresh child: time ``iterations`` edits and print one JSON line."""
    edit: Callable[[bytes], tuple[bytes, int, int]]
    if library == "pyvips":
        import pyvips

        pyvips.cache_set_max(0)  # as in the worker: every job is a new image
        edit = edit_pyvips
    else:
        import PIL.Image  # noqa: F401  (imported before the baseline, as pyvips is)

        edit = edit_pillow
    data = source.read_bytes()
    baseline = peak_rss_mb()
    edit(data)  # warm up: codec tables, thread pools, lazy imports
    started = time.perf_counter()
    for _ in range(iterations):
        out, width, height = edit(data)
    elapsed = time.perf_counter() - started
    result = {
        "per_s": iterations / elapsed,
        "peak_mb": peak_rss_mb(),
        "baseline_mb": baseline,
        "out_bytes": len(out),
        "out_size": f"{width}x{height}",
    }
    print(json.dumps(result))


def measure(library: str, source: Path, iterations: int) -> dict[str, float | str]:
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            library,
            str(source),
            "--iterations",
            str(iterations),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the {library} child failed:\n{done.stderr}")
    result: dict[str, float | str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10, help="timed edits per child")
    parser.add_argument("--rounds", type=int, default=3, help="fresh children per library")
    parser.add_argument("--child", nargs=2, metavar=("LIBRARY", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterations < 1 or args.rounds < 1:
        parser.error("--iterations and --rounds must be >= 1")
    if args.child:
        library, source = args.child
        child(library, Path(source), args.iterations)
        return

    rounds: dict[str, list[dict[str, float | str]]] = {library: [] for library in LIBRARIES}
    with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp:
        source = Path(tmp) / "12mp.jpg"
        print(f"making a {WIDTH}x{HEIGHT} JPEG ...", file=sys.stderr, flush=True)
        make_source(source)
        source_mb = source.stat().st_size / 1e6
        for turn in range(args.rounds):
            order = LIBRARIES if turn % 2 == 0 else LIBRARIES[::-1]
            for library in order:
                print(
                    f"round {turn + 1}/{args.rounds}: {library} x{args.iterations} ...",
                    file=sys.stderr,
                    flush=True,
                )
                rounds[library].append(measure(library, source, args.iterations))

    def values(library: str, key: str) -> list[float]:
        found = [r[key] for r in rounds[library]]
        return [float(v) for v in found if isinstance(v, float | int)]

    def number(library: str, key: str) -> float:
        """The median round's images/s; the highest peak RSS of any round."""
        if key == "per_s":
            return statistics.median(values(library, key))
        return max(values(library, key))

    print(
        f"edit pipeline: {WIDTH}x{HEIGHT} JPEG ({source_mb:.1f} MB) -> crop 90% -> "
        f"{TARGET_WIDTH} px wide -> sharpen -> blur -> JPEG Q{QUALITY}; "
        f"{args.rounds} rounds x {args.iterations} timed runs per library (each round a fresh "
        f"process, after 1 warm-up); os.cpu_count()={os.cpu_count()}, libvips default "
        "threading, MALLOC_ARENA_MAX=1"
    )
    print(f"{'pipeline':<10}{'images/s':>10}{'ratio':>8}{'peak RSS MB':>14}{'ratio':>8}")
    for library in LIBRARIES:
        speed = number(library, "per_s")
        memory = number(library, "peak_mb")
        print(
            f"{library:<10}{speed:>10.2f}{speed / number('pillow', 'per_s'):>8.2f}"
            f"{memory:>14.0f}{memory / number('pillow', 'peak_mb'):>8.2f}"
        )
    for library in LIBRARIES:
        speeds = values(library, "per_s")
        last = rounds[library][-1]
        print(
            f"  {library}: images/s over rounds {min(speeds):.2f}..{max(speeds):.2f}; "
            f"output {last['out_size']}, {number(library, 'out_bytes') / 1e3:.0f} kB; "
            f"RSS after imports {number(library, 'baseline_mb'):.0f} MB"
        )
    speed_ratio = number("pyvips", "per_s") / number("pillow", "per_s")
    memory_ratio = number("pyvips", "peak_mb") / number("pillow", "peak_mb")
    met = {True: "met", False: "NOT met"}
    print(
        f"target throughput >= {TARGET_SPEED}x Pillow: {speed_ratio:.2f}x, "
        f"{met[speed_ratio >= TARGET_SPEED]}"
    )
    print(
        f"target peak RSS <= {TARGET_MEMORY}x Pillow: {memory_ratio:.2f}x, "
        f"{met[memory_ratio <= TARGET_MEMORY]}"
    )


if __name__ == "__main__":
    main()
