"""The stage 9 drills' own arithmetic: which shards move, what the celebrity drill reads
from Locust's history and how it reports the load of the celebrity's primary."""

from __future__ import annotations

from pathlib import Path

import pytest

from picscale.lab.engine import LabError
from picscale.lab.engines.patroni import Patroni
from picscale.lab.layout import Layout
from picscale.lab.shard_drills import (
    CELEBRITY,
    Sample,
    Sampler,
    ScenarioReport,
    _requests_so_far,
    range_to_move,
)
from picscale.lab.stages import PORT_NAMES, STAGES
from picscale.load.runner import LoadSummary, RequestRow
from picscale.tiers.db.shard_map import ShardMap


def test_the_block_of_shards_around_the_account_moves_to_the_other_cluster() -> None:
    even = ShardMap.even(["c1", "c2"])
    assert range_to_move(even, 809, ["c1", "c2"]) == (512, 1023, "c1", "c2")
    assert range_to_move(even, 4096, ["c1", "c2"]) == (4096, 4607, "c2", "c1")
    # within the range of the map that holds the shard: one cluster's shards only
    moved = even.assign(4000, 4095, "c2")
    assert range_to_move(moved, 3990, ["c1", "c2"]) == (3584, 3999, "c1", "c2")
    assert range_to_move(moved, 4001, ["c1", "c2"]) == (4000, 4095, "c2", "c1")
    with pytest.raises(LabError, match="two clusters"):
        range_to_move(ShardMap.even(["c1"]), 5, ["c1"])


def test_the_requests_so_far_come_from_the_last_line_of_each_name(tmp_path: Path) -> None:
    history = tmp_path / "locust_stats_history.csv"
    header = "Timestamp,User Count,Type,Name,Requests/s,Total Request Count\n"
    history.write_text(
        header
        + "1,2,,Aggregated,1.0,10\n"
        + f"1,2,GET,GET /api/v1/users/{CELEBRITY}}},1.0,4\n"
        + "2,3,GET,GET /api/v1/feed,1.0,9\n"
        + f"2,3,GET,GET /api/v1/photos/{CELEBRITY}'s}},1.0,6\n"
        + f"2,3,GET,GET /api/v1/users/{CELEBRITY}}},1.0,7\n"
        + "2,3,,Aggregated,1.0,25\n"
    )
    assert _requests_so_far(history) == (3, 25, 13)
    assert _requests_so_far(tmp_path / "missing.csv") == (0, 0, 0)


def sampler(tmp_path: Path, samples: list[Sample]) -> Sampler:
    layout = Layout(tmp_path, {name: 1 for name in PORT_NAMES}, "k" * 48, STAGES[9])
    found = Sampler(layout, Patroni(cluster="c2", nodes=2), tmp_path / "history.csv")
    found.samples = samples
    return found


def test_the_celebrity_drill_reports_its_primary_per_interval(tmp_path: Path) -> None:
    samples = [
        Sample(0.0, 0, 0, 0, 100, 10.0, 50),  # before Locust had users: no interval
        Sample(3.0, 2, 30, 6, 130, 10.3, 59),
        Sample(6.0, 4, 90, 30, 166, 10.9, None),  # a replica that did not answer
        Sample(9.0, 6, 180, 75, 205, 11.5, 80),
    ]
    found = sampler(tmp_path, samples)
    rates = found.rates()
    assert [r[:3] for r in rates] == [(2, 10.0, 2.0), (4, 20.0, 8.0), (6, 30.0, 15.0)]
    assert rates[0][3:] == pytest.approx((10.0, 0.1, 3.0))
    assert rates[1][5] is None
    table = found.table()
    assert table[0].split("  ") == [
        "users", "requests/s", "celebrity reads/s", "primary commits/s", "primary CPU",
        "replica commits/s",
    ]  # fmt: skip
    assert table[1].split() == ["2", "10.0", "2.0", "10.0", "10.0%", "3.0"]
    assert table[2].split()[-1] == "?"
    assert found.trend() == (
        "first third -> last third: celebrity reads/s 2.0 -> 15.0, "
        "primary commits/s 10.0 -> 13.0, primary CPU 10.0% -> 20.0%"
    )
    assert "too short" in sampler(tmp_path, samples[:2]).trend()


def test_a_scenario_report_says_what_the_drills_expect(tmp_path: Path) -> None:
    total = RequestRow("Aggregated", 120, 0, 4.0, 10.0, 20.0, 30.0)
    summary = LoadSummary([], total, {}, tmp_path / "locust", tmp_path / "r.html", tmp_path)
    report = ScenarioReport(
        name="shard-move",
        title="shards 0-511 of celeb: c1 -> c2 -> c1",
        summary=summary,
        requests=150,
        failed=1,
        errors={"prober rename: 503": 1},
        details=["writes paused <= 2 s: yes (max 0.41 s)"],
        writes_checked=12,
        writes_lost=0,
        jobs_checked=3,
        jobs_lost=0,
        expectations=[("failed requests = 0", False), ("jobs lost = 0 (of 3)", True)],
    )
    text = report.format()
    assert not report.passed
    assert text.splitlines()[:5] == [
        "drill shard-move (shards 0-511 of celeb: c1 -> c2 -> c1)",
        "  requests                 150",
        "  failed, as clients saw   1",
        "         1  prober rename: 503",
        "  writes paused <= 2 s: yes (max 0.41 s)",
    ]
    assert "  acknowledged writes lost 0 of 12\n  jobs lost                0 of 3" in text
    assert "  MISSED  failed requests = 0\n  met   jobs lost = 0 (of 3)" in text
