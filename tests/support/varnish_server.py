"""A real Varnish edge for tests (Debian's varnish 7.1 with varnish-modules' xkey), on a
free loopback port, with the VCL Picscale ships rendered for the origin under test, its
working directory in a temporary directory, stopped by its pid."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from picscale.tiers.edge.varnish import render_vcl
from tests.support.ports import free_port
from tests.support.waiting import wait_until

VARNISHD = "/usr/sbin/varnishd"


@dataclass
class VarnishServer:
    root: Path
    port: int
    origin_port: int
    purgers: tuple[str, ...] = ("127.0.0.1", "::1")
    prefix: tuple[str, ...] = ()  # e.g. taskset -c 0, for benchmarks
    storage_mb: int = 128
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        vcl = self.root / "picscale.vcl"
        # a short revalidation grace and a quick probe: tests watch both happen
        vcl.write_text(
            render_vcl(
                "127.0.0.1",
                self.origin_port,
                purgers=self.purgers,
                probe_interval_seconds=0.5,
                revalidate_grace_seconds=1,
            )
        )
        log = (self.root / "varnishd.out").open("ab")
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                VARNISHD,
                "-F",  # in the foreground: its pid is the one we stop
                "-j", "none",  # no privilege separation: a test's files, a test's user
                "-a", f"127.0.0.1:{self.port}",
                "-T", "127.0.0.1:0",
                "-n", str(self.root / "work"),
                "-f", str(vcl),
                "-s", f"malloc,{self.storage_mb}m",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        wait_until(self.ready, timeout=60, interval=0.1, what=f"Varnish on port {self.port}")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError((self.root / "varnishd.out").read_text()[-4000:])
        try:
            return httpx.get(self.url + "/.edge/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_varnish(
    origin_port: int, port: int | None = None, purgers: tuple[str, ...] | None = None
) -> VarnishServer:
    server = VarnishServer(
        Path(tempfile.mkdtemp(prefix="picscale-varnish-")), port or free_port(), origin_port
    )
    if purgers is not None:
        server.purgers = purgers
    server.start()
    return server
