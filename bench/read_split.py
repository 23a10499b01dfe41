"""Reads on replicas under a 90% read / 10% write API mix, with read-your-writes checked.

Starts a PostgreSQL primary and a streaming replica (the test harness's servers) and
``picscale serve`` reading from the replica. Several users run concurrently: each request
is a read (a gallery, another user's gallery, or the feed) with probability 0.9, else a
write (a small upload) that the same user immediately reads back from their gallery: a
read that misses its own write is a read-your-writes violation. The share of domain
reads the replicas served comes from the server's own query metrics.
Targets: replicas serve >= 85% of reads; 0 violations.

    uv run --frozen python bench/read_split.py [--users 8] [--requests 150]
"""

from __future__ import annotations

import argparse
import io
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from _common import log, machine_note, sign_up, start_picscale
from tests.support.pg import start_postgres


def tiny_jpeg(seed: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (48, 48), (seed % 256, 80, 160)).save(out, "JPEG")
    return out.getvalue()


def reads_by_role(base: str) -> dict[str, float]:
    totals = {"primary": 0.0, "replica": 0.0}
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith("picscale_db_queries_total{") and 'intent="read"' in line:
            role = re.search(r'role="(\w+)"', line)
            if role:
                totals[role.group(1)] += float(line.rsplit(" ", 1)[1])
    return totals


class User(threading.Thread):
    def __init__(self, base: str, name: str, others: list[str], requests: int) -> None:
        super().__init__()
        self.client = httpx.Client(base_url=base, timeout=60.0)
        self.name = name
        self.others = others
        self.requests = requests
        self.reads = self.writes = self.violations = self.errors = 0
        self.rng = random.Random(name)

    def gallery(self, username: str) -> list[str]:
        r = self.client.get(f"/api/v1/users/{username}/photos", params={"limit": 5})
        r.raise_for_status()
        return [p["id"] for p in r.json()["items"]]

    def run(self) -> None:
        for i in range(self.requests):
            try:
                if self.rng.random() < 0.1:
                    r = self.client.post(
                        "/api/v1/photos",
                        files={"file": ("p.jpg", tiny_jpeg(i), "image/jpeg")},
                    )
                    r.raise_for_status()
                    self.writes += 1
                    if r.json()["id"] not in self.gallery(self.name):
                        self.violations += 1
                    self.reads += 1
                else:
                    choice = self.rng.random()
                    if choice < 0.4:
                        self.gallery(self.name)
                    elif choice < 0.8:
                        self.gallery(self.rng.choice(self.others))
                    else:
                        self.client.get("/api/v1/feed", params={"limit": 10}).raise_for_status()
                    self.reads += 1
            except httpx.HTTPError:
                self.errors += 1
        self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=150, help="per user")
    parser.add_argument("--verbose", action="store_true", help="print the query metrics")
    args = parser.parse_args()

    log("starting PostgreSQL primary and replica…")
    primary = start_postgres()
    try:
        replica = primary.add_replica()
        with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp:
            log("starting picscale serve…")
            base, server = start_picscale(
                Path(tmp) / "data",
                job_workers=1,
                database_url=primary.url,
                database_replica_urls=replica.url,
            )
            try:
                names = [f"reader{i}" for i in range(args.users)]
                tokens = {}
                for name in names:
                    with httpx.Client(base_url=base, timeout=60.0) as c:
                        tokens[name] = sign_up(c, name)
                users = []
                for name in names:
                    user = User(base, name, [n for n in names if n != name], args.requests)
                    user.client.headers["Authorization"] = f"Bearer {tokens[name]}"
                    for follow in user.others[:3]:
                        user.client.put(f"/api/v1/users/{follow}/follow").raise_for_status()
                    users.append(user)
                before = reads_by_role(base)
                log(f"running {args.users} users x {args.requests} requests…")
                start = time.perf_counter()
                for user in users:
                    user.start()
                for user in users:
                    user.join()
                elapsed = time.perf_counter() - start
                after = reads_by_role(base)
                if args.verbose:
                    for line in httpx.get(base + "/metrics").text.splitlines():
                        if line.startswith(("picscale_db_queries", "picscale_db_replica_events")):
                            print(line, file=sys.stderr)
                server.check_alive()
            finally:
                server.stop()
    finally:
        primary.close()

    replica_reads = after["replica"] - before["replica"]
    primary_reads = after["primary"] - before["primary"]
    share = replica_reads / max(1.0, replica_reads + primary_reads)
    reads = sum(u.reads for u in users)
    writes = sum(u.writes for u in users)
    violations = sum(u.violations for u in users)
    errors = sum(u.errors for u in users)
    print(
        f"{args.users} users x {args.requests} requests (90% reads, 10% uploads read back "
        f"at once), PostgreSQL primary + 1 streaming replica; {machine_note()}"
    )
    print(f"{'measure':<44}{'value':>10}")
    print(f"{'API reads / writes / errors':<44}{f'{reads}/{writes}/{errors}':>10}")
    print(f"{'requests per second':<44}{(reads + writes) / elapsed:>10.0f}")
    print(f"{'read queries on the replica':<44}{replica_reads:>10.0f}")
    print(f"{'read queries on the primary':<44}{primary_reads:>10.0f}")
    print(f"{'share of read queries on replicas':<44}{share:>10.2f}")
    print(f"{'read-your-writes violations':<44}{violations:>10}")
    print(f"target: replica share >= 0.85 -> {'met' if share >= 0.85 else 'NOT met'}")
    print(f"target: 0 violations -> {'met' if violations == 0 else 'NOT met'}")


if __name__ == "__main__":
    main()
