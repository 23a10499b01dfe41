"""`picscale load` against a real `picscale serve`: Locust's journeys run without a
failure, and every write the service acknowledged can be read back."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from picscale.load.runner import verify_writes
from tests.support.picscale_server import running_server
from tests.support.ports import free_port

ROUTES = [
    "POST /api/v1/users",
    "POST /api/v1/sessions",
    "GET /api/v1/feed",
    "GET /api/v1/photos/{id}",
    "GET /api/v1/users/{username}",
    "GET /api/v1/users/{username}/photos",
    "POST /api/v1/photos",
    "POST /api/v1/photos/{id}/edits",
    "PUT /api/v1/users/{username}/follow",
]


def picscale_load(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "picscale", "load", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def table_row(output: str, name: str) -> tuple[int, int]:
    """Requests and failures on the summary table's line for ``name``."""
    match = re.search(rf"^{re.escape(name)}\s+(\d+)\s+(\d+)\s", output, re.MULTILINE)
    assert match, f"no line for {name!r} in:\n{output}"
    return int(match.group(1)), int(match.group(2))


def test_load_runs_the_journeys_and_loses_no_write(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", job_workers=1) as server:
        result = picscale_load(
            "--target", server.url,
            "--users", "5",
            "--spawn-rate", "5",
            "--duration", "8",
            "--dir", str(tmp_path / "lab"),
        )  # fmt: skip
        output = result.stdout
        assert result.returncode == 0, output + result.stderr
        for route in ROUTES:
            requests, failures = table_row(output, route)
            assert requests > 0 and failures == 0, route
        requests, failures = table_row(output, "Aggregated")
        assert requests > 0 and failures == 0
        assert "errors: none" in output

        run_dir = Path(re.findall(r"^writes:\s+(\S+)$", output, re.MULTILINE)[0]).parent
        assert run_dir.parent == tmp_path / "lab" / "load"
        for name in ("stats", "stats_history", "failures"):
            assert (run_dir / f"locust_{name}.csv").stat().st_size > 0
        assert "<html" in (run_dir / "report.html").read_text()

        writes = [json.loads(line) for line in (run_dir / "writes.jsonl").read_text().splitlines()]
        assert {w["kind"] for w in writes} == {"signup", "upload", "edit", "follow"}
        assert all(w["ok"] for w in writes), [w for w in writes if not w["ok"]]
        assert sum(w["kind"] == "upload" for w in writes) >= 5  # one per member at least

        check = verify_writes(server.url, run_dir / "writes.jsonl", job_timeout=30)
        assert check.checked == len(writes)
        assert check.lost == [] and check.jobs_lost == []
        assert check.jobs_checked == sum(w["kind"] in ("upload", "edit") for w in writes)


def test_load_says_what_to_do_when_nothing_answers(tmp_path: Path) -> None:
    result = picscale_load(
        "--target", f"http://127.0.0.1:{free_port()}", "--dir", str(tmp_path / "lab")
    )  # fmt: skip
    assert result.returncode == 1
    assert "nothing answers at" in result.stderr and "make run" in result.stderr
