"""``picscale worker --metrics-port P``: the worker's (and its children's) metrics on
``http://127.0.0.1:P/metrics`` for Prometheus, the way web servers serve theirs.

The processes of one worker share a ``PROMETHEUS_MULTIPROC_DIR`` (made here when none is
set, before any metric exists), so one scrape adds up all of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from prometheus_client import values

from picscale.observability.metrics import Metrics

READ_TIMEOUT_SECONDS = 5.0


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[None]:
    """A multiprocess directory for this worker and its children, removed at exit."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    folder = tempfile.mkdtemp(prefix="picscale-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    # prometheus-client chose how to keep values when it was imported; metrics made
    # from now on (none exists yet) keep theirs in the shared directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        shutil.rmtree(folder, ignore_errors=True)


async def serve_metrics(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """Answer every HTTP request with the metrics (the only thing this port serves)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_SECONDS)
            body, content_type = metrics.exposition()
            head = (
                "HTTP/1.1 200 OK\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)
