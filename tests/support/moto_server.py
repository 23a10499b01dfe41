"""An S3 API for tests: ``moto_server`` (from the project's virtualenv) on a free loopback
port, with its log in a temporary directory, stopped by its pid.

S3 is the one tier the tests run against a mock rather than the real engine: no
S3-compatible server (MinIO, Ceph's RGW, Garage, ...) can be installed from Debian's
archive or PyPI here, so moto's S3 stands in for it. moto speaks the S3 wire protocol
over HTTP, so the code under test is the real aiobotocore client making real requests;
what moto does not do is enforce S3's integrity checks on the server side (it accepts
a wrong Content-MD5), which is why the tests also read objects back and compare them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

import httpx

from tests.support.ports import free_port
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")

SERVER = Path(sys.executable).with_name("moto_server")
ACCESS_KEY = "picscale-test"
SECRET_KEY = "picscale-test-secret"
REGION = "us-east-1"


@dataclass
class MotoServer:
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, bucket: str, prefix: str = "", **params: str) -> str:
        """A PICSCALE_STORAGE_URL for ``bucket`` on this server."""
        query = {
            "endpoint": self.endpoint,
            "region": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            **params,
        }
        path = f"/{prefix}" if prefix else ""
        return f"s3://{bucket}{path}?{urlencode(query, safe=':/')}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        assert SERVER.exists(), f"{SERVER} is missing: `uv sync` installs moto[server]"
        log = (self.root / "moto.out").open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            [str(SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped by its pid
        )
        log.close()
        wait_until(self.ready, timeout=60, interval=0.1, what=f"moto_server on port {self.port}")

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError((self.root / "moto.out").read_text()[-4000:])
        return httpx.get(self.endpoint + "/moto-api/", timeout=2).status_code == 200

    def call(self, action: Callable[[S3Client], Awaitable[T]]) -> T:
        """Run ``action`` with an S3 client of the test's own (not the code under test's)."""

        async def run() -> T:
            from aiobotocore.session import get_session

            async with get_session().create_client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            ) as client:
                return await action(client)

        # in a thread of its own: never in (or in the way of) the tests' event loop
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, run()).result()

    def create_bucket(self, bucket: str) -> None:
        async def create(s3: S3Client) -> None:
            await s3.create_bucket(Bucket=bucket)

        self.call(create)

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object of ``bucket`` under ``prefix``, read in full."""

        async def read(s3: S3Client) -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    response = await s3.get_object(Bucket=bucket, Key=item["Key"])
                    async with response["Body"] as body:
                        found[item["Key"]] = await body.read()
            return found

        return self.call(read)

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        async def head(s3: S3Client) -> dict[str, Any]:
            return dict(await s3.head_object(Bucket=bucket, Key=key))

        return self.call(head)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_moto() -> MotoServer:
    server = MotoServer(Path(tempfile.mkdtemp(prefix="picscale-moto-")), free_port())
    server.start()
    return server
