"""What each stage of the scaling path buys on this machine: for each stage of
`picscale lab`, the sustained requests per second of `picscale load`'s mixed journey while
its p99 stays under 200 ms, and which failure drills pass.

For each stage the lab comes up in a fresh directory, then Locust runs the journeys with
more and more users (2, 4, 8, …) until a p99 passes 1 s, then halves the gap between the
best step under the limit and the next one over it (16 and 32 users: 24, then 20 or 28).
A step is measured once every user has signed up and logged in (argon2 hashing on
purpose costs ~0.5 s of CPU per password, which is not the steady state): Locust's own
10-second window (its "current" figures) then gives the requests per second and the p99
of the mixed journey. The stage's figure is the best step whose p99 was under 200 ms.
Locust runs on the same CPUs as the lab. Then each drill whose
component the stage has runs briefly (`picscale drill`); a drill whose component the stage
does not have yet is "-" (the component is a single point of failure there).

    uv run --frozen python bench/stages.py [--stages 1-8] [--max-users 128] [--no-drills]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from picscale.lab import lab as labs
from picscale.lab.drills import DRILLS, format_report, run_drill
from picscale.lab.stages import MAX_STAGE, STAGES
from picscale.load.runner import LoadOptions, last_total, read_writes, start_load

P99_LIMIT_MS = 200.0
SATURATED_MS = 1000.0  # a step this slow ends the stage (one noisy window does not)
WINDOW_SECONDS = 12.0  # Locust's current percentiles cover the last 10 s


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quiet(_: str) -> None:
    pass


def step(front: str, users: int, out_dir: Path) -> tuple[float, float]:
    """(requests/s, p99 ms) of the mixed journey over the last 10 s, with ``users``."""
    run = start_load(
        LoadOptions(target=front, users=users, spawn_rate=users, duration=600, out_dir=out_dir),
        quiet,
    )
    try:
        writes = out_dir / "writes.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            entered = sum(1 for w in read_writes(writes) if w["kind"] == "signup" and w["ok"])
            if entered >= users or not run.running:
                break
            time.sleep(0.5)  # members are signing up
        started = time.time()
        time.sleep(WINDOW_SECONDS)  # the measured window
        total = last_total(out_dir / "locust_stats_history.csv") or {}
        if float(total.get("Timestamp") or 0) < started:
            raise RuntimeError(f"Locust wrote no statistics during the window: {out_dir}")
        rps = float(total.get("Requests/s") or 0.0)
        p99 = total.get("99%", "N/A")
    finally:
        run.stop()
    return rps, float(p99) if p99 not in ("N/A", "") else 0.0


def stage_figures(stage: int, max_users: int, drills: bool) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix=f"picscale-bench-stage{stage}-"))
    try:
        lab = labs.up(root, stage, quiet)
        front = labs.urls(lab)["Picscale"]
        best = (0.0, 0, 0.0)
        over: list[int] = []  # user counts whose p99 was over the limit

        def measure(users: int) -> float:
            nonlocal best
            rps, p99 = step(front, users, root / f"load-{users}")
            log(f"  stage {stage}, {users:>3} users: {rps:7.1f} req/s, p99 {p99:.0f} ms")
            if p99 < P99_LIMIT_MS and rps > best[0]:
                best = (rps, users, p99)
            if p99 >= P99_LIMIT_MS:
                over.append(users)
            return p99

        users = 2
        while users <= max_users:
            if measure(users) >= SATURATED_MS:  # far past the limit: more users only queue
                break
            users *= 2
        # the limit lies between the best step and the next one over it: halve the gap
        # until it is within a quarter of the lower end
        low = best[1]
        high = min((u for u in over if u > low), default=None)
        while low and high is not None and high - low > low // 4:
            middle = (low + high) // 2
            if measure(middle) < P99_LIMIT_MS:
                low = middle
            else:
                high = middle
        passed: dict[str, str] = {}
        for name, drill in DRILLS.items():
            if drill.stage > stage:
                passed[name] = "-"
            elif drills:
                report = run_drill(root, name, quiet, users=6, before=4, down_for=6, after=4)
                passed[name] = "pass" if report.passed else "FAIL"
                log(f"  stage {stage}, drill {name}: {passed[name]}, {report.failed} failed")
                if not report.passed:
                    log(format_report(report))
            else:
                passed[name] = "?"
        return {"rps": best[0], "users": best[1], "p99": best[2], "drills": passed}
    finally:
        if (root / "lab.json").exists():
            labs.down(root, quiet)
        shutil.rmtree(root, ignore_errors=True)


def parse_stages(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=f"1-{MAX_STAGE}")
    parser.add_argument("--max-users", type=int, default=128)
    parser.add_argument("--no-drills", action="store_true")
    args = parser.parse_args()
    rows = {}
    for stage in parse_stages(args.stages):
        log(f"stage {stage}: {STAGES[stage].what}")
        rows[stage] = stage_figures(stage, args.max_users, not args.no_drills)
    names = list(DRILLS)
    print(
        f"the mixed journey of `picscale load`, p99 < {P99_LIMIT_MS:.0f} ms over 10 s; "
        f"{len(names)} drills; {_machine()}"
    )
    first = next(iter(rows.values()))["rps"]
    assert isinstance(first, float)
    header = f"{'stage':<6}{'req/s':>8}{'ratio':>7}{'users':>7}{'p99 ms':>8}  "
    print(header + " ".join(f"{n:>14}" for n in names))
    for stage, row in rows.items():
        drills, rps = row["drills"], row["rps"]
        assert isinstance(drills, dict)
        assert isinstance(rps, float)
        ratio = f"{rps / first:.2f}" if first else "-"
        print(
            f"{stage:<6}{rps:>8.1f}{ratio:>7}{row['users']:>7}{row['p99']:>8.0f}  "
            + " ".join(f"{drills[n]:>14}" for n in names)
        )


def _machine() -> str:
    import os

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


if __name__ == "__main__":
    main()
