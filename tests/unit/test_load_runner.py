"""The load runner's arithmetic and parsing: durations, write unavailability, Locust's CSV."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from picscale.load.runner import (
    DEFAULT_TARGET,
    default_target,
    error_kind,
    format_summary,
    parse_duration,
    read_summary,
    write_unavailability,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("2m", 120.0), ("1m30s", 90.0), ("1h", 3600.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "0", "2x", "m2", "1m 30s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def write_log(path: Path, entries: list[tuple[float, bool]]) -> Path:
    lines = [
        json.dumps({"t": t, "kind": "upload", "ok": ok, "id": None, "user": "u"})
        for t, ok in entries
    ]
    path.write_text("\n".join(lines) + "\n" + '{"t": 99, "kind": "up')  # a torn last line
    return path


def test_write_unavailability(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "writes.jsonl",
        [(1.0, False), (10.0, True), (11.0, False), (12.5, False), (13.0, False), (14.0, True)],
    )
    assert write_unavailability(log, after=10.5) == 14.0 - 11.0
    assert write_unavailability(log, after=0.0) == 14.0 - 1.0
    assert write_unavailability(log, after=13.5) == 0.0
    never_back = write_log(tmp_path / "down.jsonl", [(1.0, True), (2.0, False)])
    assert write_unavailability(never_back, after=0.0) == math.inf


def test_error_kinds() -> None:
    assert error_kind("CatchResponseError('503')") == "503"
    assert error_kind("ConnectionError(MaxRetryError('...'))") == "ConnectionError"


def test_summary_of_a_run_without_requests(tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    Path(f"{prefix}_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
        "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
        "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\n"
        ",Aggregated,0,0,0,0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A\n"
    )
    summary = read_summary(prefix, tmp_path / "report.html", tmp_path / "writes.jsonl")
    assert summary.rows == [] and summary.total.requests == 0 and summary.total.p99 is None
    assert summary.errors == {}
    table = format_summary(summary)
    assert "Aggregated" in table and "errors: none" in table


def test_default_target_without_a_lab(tmp_path: Path) -> None:
    assert default_target(tmp_path / "no-lab") == DEFAULT_TARGET
    (tmp_path / "lab.json").write_text(json.dumps({"ports": {"haproxy": 1, "web1": 1}}))
    assert default_target(tmp_path) == DEFAULT_TARGET  # nothing answers there
