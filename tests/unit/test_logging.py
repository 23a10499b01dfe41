"""Log lines of processes that share one output file stay whole lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WRITER = """
import structlog
from picscale.observability.logging import configure_logging
configure_logging(process="p")
log = structlog.get_logger()
for i in range(3000):
    log.info("line", i=i, padding="x" * 100)
"""


def test_processes_sharing_one_log_file_write_whole_lines(tmp_path: Path) -> None:
    # as supervisord, the test helpers and `worker --autoscale` run them: one file, one
    # offset, unbuffered output (each write a system call)
    path = tmp_path / "shared.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with path.open("ab") as out:
        writers = [
            subprocess.Popen([sys.executable, "-c", WRITER], stdout=out, env=env) for _ in range(4)
        ]
        for w in writers:
            assert w.wait(timeout=120) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 4 * 3000
    assert all(json.loads(line)["event"] == "line" for line in lines)
