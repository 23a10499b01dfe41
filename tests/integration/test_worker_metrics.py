"""`picscale worker --metrics-port`: one scrape adds up every process of the worker (the
autoscaler and the workers it started), as the lab's Prometheus reads them."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.api import new_user, upload, wait_ready
from tests.support.images import image_bytes
from tests.support.picscale_server import base_env, running_server, start_process
from tests.support.ports import free_port
from tests.support.waiting import wait_until


def test_a_worker_serves_the_metrics_of_all_its_processes(tmp_path: Path) -> None:
    with running_server(tmp_path, job_workers=0) as server:
        port = free_port()
        worker = start_process(
            ["worker", "--autoscale", "1:2", "--metrics-port", str(port)],
            base_env(tmp_path),
            tmp_path / "worker.log",
        )
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            client, _ = new_user(server)
            wait_ready(client, upload(client, image_bytes(640, 480))["id"])

            def done() -> str | None:
                if worker.proc.poll() is not None:
                    raise AssertionError(worker.log())
                text = httpx.get(url, timeout=5).text
                # the autoscaler's own gauge and the job its worker process ran
                counted = 'picscale_jobs_total{kind="render_version",outcome="done"} 1.0' in text
                return text if counted and "picscale_autoscale_workers 1.0" in text else None

            wait_until(done, timeout=30, interval=0.2, what="the worker's metrics")
        finally:
            worker.stop()
        assert worker.proc.returncode == 0, worker.log()
