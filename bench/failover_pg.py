"""Write unavailability and lost writes when the PostgreSQL primary dies (Patroni).

Each round starts a fresh Patroni cluster (etcd + 2 PostgreSQL nodes, synchronous mode,
ttl 10 s, loop_wait 1 s) and ``picscale serve`` on its multi-host URL, runs a client
uploading as fast as it can, then SIGKILLs the primary's Patroni and postmaster. It
reports how long no write was acknowledged, and how many acknowledged writes are
missing once the new primary serves. Targets: unavailability <= 12 s, 0 lost.

    uv run --frozen python bench/failover_pg.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from _common import log, machine_note, sign_up, start_picscale, wait_until
from tests.support.patroni_cluster import start_patroni_cluster

CLIENT_BACKOFF = 0.1


def tiny_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 40, 200)).save(out, "JPEG")
    return out.getvalue()


class Writer(threading.Thread):
    def __init__(self, client: httpx.Client) -> None:
        super().__init__()
        self.client = client
        self.stop = threading.Event()
        # (when the request was sent, when it was acknowledged, the photo id)
        self.acked: list[tuple[float, float, str]] = []
        self.failed = 0

    def run(self) -> None:
        data = tiny_jpeg()
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                r = self.client.post(
                    "/api/v1/photos", files={"file": ("w.jpg", data, "image/jpeg")}
                )
                if r.status_code == 201:
                    self.acked.append((sent, time.monotonic(), r.json()["id"]))
                    continue
            except httpx.HTTPError:
                pass
            self.failed += 1
            self.stop.wait(CLIENT_BACKOFF)


def one_round(number: int) -> tuple[float, float, int, int, int]:
    log(f"round {number}: starting etcd, Patroni and PostgreSQL…")
    cluster = start_patroni_cluster(size=2)
    try:
        with tempfile.TemporaryDirectory(prefix="picscale-bench-") as tmp:
            base, server = start_picscale(
                Path(tmp) / "data", job_workers=0, database_url=cluster.url
            )
            try:
                client = httpx.Client(base_url=base, timeout=60.0)
                sign_up(client)
                writer = Writer(client)
                writer.start()
                wait_until(lambda: len(writer.acked) >= 20, timeout=60, what="writes")
                leader = cluster.wait_leader()
                log(f"round {number}: SIGKILL of {leader.name}'s Patroni and postmaster…")
                killed = time.monotonic()
                last_before = writer.acked[-1][1]
                leader.kill()
                wait_until(
                    lambda: sum(sent > killed for sent, _, _ in writer.acked) >= 20,
                    timeout=120,
                    interval=0.1,
                    what="writes after the failover",
                )
                writer.stop.set()
                writer.join()
                # a request sent after the kill: one in flight may have committed before it
                first_after = min(done for sent, done, _ in writer.acked if sent > killed)
                reader = httpx.Client(base_url=base, timeout=60.0, headers=client.headers)
                lost = sum(
                    reader.get(f"/api/v1/photos/{photo_id}").status_code != 200
                    for _, _, photo_id in writer.acked
                )
                reader.close()
                client.close()
                return (
                    first_after - killed,
                    first_after - last_before,
                    len(writer.acked),
                    writer.failed,
                    lost,
                )
            finally:
                server.stop()
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = [one_round(i + 1) for i in range(args.rounds)]
    print(
        "SIGKILL of the primary's Patroni + postmaster under a write loop; Patroni ttl 10 s, "
        f"loop_wait 1 s, synchronous_mode; 2 nodes; {machine_note()}"
    )
    print(f"{'round':<7}{'unavailable s':>15}{'gap s':>8}{'acked':>8}{'failed':>8}{'lost':>6}")
    for i, (down, gap, acked, failed, lost) in enumerate(results, start=1):
        print(f"{i:<7}{down:>15.1f}{gap:>8.1f}{acked:>8}{failed:>8}{lost:>6}")
    worst = max(r[0] for r in results)
    lost_total = sum(r[4] for r in results)
    print(f"median unavailability {statistics.median(r[0] for r in results):.1f} s")
    verdict = "met" if worst <= 12 else "NOT met"
    print(f"target: unavailability <= 12 s -> {verdict} (worst {worst:.1f} s)")
    print(f"target: 0 acknowledged writes lost -> {'met' if lost_total == 0 else 'NOT met'}")


if __name__ == "__main__":
    main()
