"""The shard map: an even split, moves that split and merge ranges, routing at the
boundaries, its stored form, and the maps it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from picscale.tiers.db.shard_map import (
    LOGICAL_SHARDS,
    ShardMap,
    ShardMapError,
    ShardRange,
    parse_shards,
)


def test_even_split_covers_every_shard_in_contiguous_ranges() -> None:
    m = ShardMap.even(["c1", "c2", "c3"])
    assert m.version == 1
    assert [(r.first, r.last, r.cluster) for r in m.ranges] == [
        (0, 2729, "c1"),
        (2730, 5460, "c2"),
        (5461, 8191, "c3"),
    ]
    assert sum(m.shards_per_cluster().values()) == LOGICAL_SHARDS
    assert m.clusters == ["c1", "c2", "c3"]
    assert m.describe() == "v1: c1 0-2729, c2 2730-5460, c3 5461-8191"


def test_one_cluster_holds_everything() -> None:
    m = ShardMap.even(["c1"])
    assert m.ranges == (ShardRange(0, LOGICAL_SHARDS - 1, "c1"),)
    assert m.cluster_of(0) == m.cluster_of(LOGICAL_SHARDS - 1) == "c1"


def test_cluster_of_at_the_boundaries() -> None:
    m = ShardMap.even(["c1", "c2"])
    assert m.cluster_of(0) == "c1"
    assert m.cluster_of(4095) == "c1"
    assert m.cluster_of(4096) == "c2"
    assert m.cluster_of(8191) == "c2"
    for outside in (-1, 8192):
        with pytest.raises(ShardMapError, match="outside"):
            m.cluster_of(outside)


def test_assign_splits_a_range_and_bumps_the_version() -> None:
    m = ShardMap.even(["c1", "c2"]).assign(100, 199, "c3")
    assert m.version == 2
    assert [(r.first, r.last, r.cluster) for r in m.ranges] == [
        (0, 99, "c1"),
        (100, 199, "c3"),
        (200, 4095, "c1"),
        (4096, 8191, "c2"),
    ]
    assert (m.cluster_of(99), m.cluster_of(100), m.cluster_of(199), m.cluster_of(200)) == (
        "c1",
        "c3",
        "c3",
        "c1",
    )
    assert m.owners(150, 4096) == {"c1", "c2", "c3"}
    assert m.ranges_of("c1") == [ShardRange(0, 99, "c1"), ShardRange(200, 4095, "c1")]


def test_assign_back_merges_neighbours_of_one_cluster() -> None:
    m = ShardMap.even(["c1", "c2"]).assign(100, 199, "c3").assign(100, 199, "c1")
    assert m.version == 3
    assert [(r.first, r.last, r.cluster) for r in m.ranges] == [(0, 4095, "c1"), (4096, 8191, "c2")]


def test_assign_across_a_boundary_and_whole_ranges() -> None:
    m = ShardMap.even(["c1", "c2"]).assign(4000, 4199, "c2")
    assert [(r.first, r.last, r.cluster) for r in m.ranges] == [(0, 3999, "c1"), (4000, 8191, "c2")]
    everything = m.assign(0, LOGICAL_SHARDS - 1, "c9")
    assert everything.ranges == (ShardRange(0, LOGICAL_SHARDS - 1, "c9"),)
    with pytest.raises(ShardMapError):
        m.assign(10, 5, "c1")
    with pytest.raises(ShardMapError):
        m.assign(0, LOGICAL_SHARDS, "c1")


@given(
    moves=st.lists(
        st.tuples(
            st.integers(0, LOGICAL_SHARDS - 1),
            st.integers(0, 300),
            st.sampled_from(["c1", "c2", "c3"]),
        ),
        max_size=12,
    )
)
def test_any_sequence_of_moves_routes_like_a_plain_table(
    moves: list[tuple[int, int, str]],
) -> None:
    m = ShardMap.even(["c1", "c2"])
    table = [m.cluster_of(s) for s in range(LOGICAL_SHARDS)]
    for first, length, cluster in moves:
        last = min(first + length, LOGICAL_SHARDS - 1)
        m = m.assign(first, last, cluster)
        table[first : last + 1] = [cluster] * (last - first + 1)
    assert [m.cluster_of(s) for s in range(LOGICAL_SHARDS)] == table
    assert m.version == 1 + len(moves)
    # kept merged: no two neighbouring ranges name the same cluster
    assert all(a.cluster != b.cluster for a, b in zip(m.ranges, m.ranges[1:], strict=False))


def test_json_round_trip() -> None:
    m = ShardMap.even(["c1", "c2"]).assign(10, 20, "c3")
    again = ShardMap.from_json(m.to_json())
    assert again == m
    assert ShardMap.from_json(m.to_json().decode()) == m
    small = ShardMap.even(["a", "b"], logical=16)
    assert ShardMap.from_json(small.to_json()) == small


@pytest.mark.parametrize(
    "ranges",
    [
        [],  # covers nothing
        [(0, 4095, "c1")],  # stops short
        [(1, 8191, "c1")],  # does not start at 0
        [(0, 100, "c1"), (102, 8191, "c2")],  # a gap
        [(0, 100, "c1"), (100, 8191, "c2")],  # an overlap
        [(0, 8191, "c1"), (8192, 8192, "c2")],  # past the end
        [(0, -1, "c1"), (0, 8191, "c2")],  # a backwards range
    ],
)
def test_maps_that_do_not_cover_every_shard_once_are_refused(
    ranges: list[tuple[int, int, str]],
) -> None:
    with pytest.raises(ShardMapError, match="shard map v7"):
        ShardMap(7, tuple(ShardRange(*r) for r in ranges))


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b'{"version": 2}',
        b'{"version": "two", "ranges": [[0, 8191, "c1"]]}',
        b'{"version": 2, "ranges": [[0, 8191]]}',
        b'{"version": 2, "ranges": [[0, 4000, "c1"]]}',
    ],
)
def test_a_stored_map_that_cannot_be_read_says_so(raw: bytes) -> None:
    with pytest.raises(ShardMapError, match="shard map"):
        ShardMap.from_json(raw)


def test_even_needs_a_cluster() -> None:
    with pytest.raises(ShardMapError, match="at least one cluster"):
        ShardMap.even([])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12", (12, 12)), ("4096-8191", (4096, 8191)), (" 0-0 ", (0, 0)), ("8191", (8191, 8191))],
)
def test_parse_shards(text: str, expected: tuple[int, int]) -> None:
    assert parse_shards(text) == expected


@pytest.mark.parametrize("text", ["", "x", "1-", "-5", "5-1", "8192", "0-8192", "1-2-3"])
def test_parse_shards_refuses_what_is_not_a_range_of_shards(text: str) -> None:
    with pytest.raises(ShardMapError, match="SHARDS"):
        parse_shards(text)
