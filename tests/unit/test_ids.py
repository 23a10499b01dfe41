"""Ids: the 41|13|5|5 layout, node numbers, and no repeats within or across processes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from picscale.ids import (
    COUNTER_BITS,
    EPOCH_MS,
    MAX_COUNTER,
    MAX_NODE,
    NODE_BITS,
    SEQUENCE_BITS,
    SHARD_BITS,
    IdGenerator,
    compose,
    created_at_of,
    node_of,
    shard_of,
)


def test_layout_reads_off_a_known_id() -> None:
    assert (SHARD_BITS, SEQUENCE_BITS, NODE_BITS, COUNTER_BITS) == (13, 10, 5, 5)
    ms = 1_000_000
    id_ = compose(ms, shard=4097, sequence=(19 << COUNTER_BITS) | 7)
    # | 41 bits of ms | 13 bits of shard | 5 bits of node | 5 bits of counter |
    assert f"{id_:064b}" == f"{ms:041b}" + f"{4097:013b}" + "10011" + "00111"
    assert (shard_of(id_), node_of(id_), id_ & MAX_COUNTER) == (4097, 19, 7)
    assert created_at_of(id_) == datetime.fromtimestamp((EPOCH_MS + ms) / 1000, tz=UTC)


@given(
    ms=st.integers(0, 2**41 - 1),
    shard=st.integers(0, 8191),
    node=st.integers(0, MAX_NODE),
    counter=st.integers(0, MAX_COUNTER),
)
def test_node_and_counter_round_trip(ms: int, shard: int, node: int, counter: int) -> None:
    id_ = compose(ms, shard, (node << COUNTER_BITS) | counter)
    assert 0 <= id_ < 2**64
    assert (shard_of(id_), node_of(id_), id_ & MAX_COUNTER) == (shard, node, counter)


def test_compose_refuses_fields_out_of_range() -> None:
    with pytest.raises(ValueError, match="shard"):
        compose(0, 8192, 0)
    with pytest.raises(ValueError, match="sequence"):
        compose(0, 0, 1024)
    with pytest.raises(ValueError, match="41-bit"):
        compose(-1, 0, 0)


def test_minting_needs_a_node_number() -> None:
    gen = IdGenerator(16)
    assert gen.node is None
    with pytest.raises(RuntimeError, match="ids need a node number"):
        gen.next_id(3)
    gen.set_node(MAX_NODE)
    assert gen.node == MAX_NODE
    assert node_of(gen.next_id(3)) == MAX_NODE
    gen.set_node(None)
    with pytest.raises(RuntimeError, match="ids need a node number"):
        gen.next_id(3)
    for bad in (-1, MAX_NODE + 1):
        with pytest.raises(ValueError, match="outside"):
            gen.set_node(bad)


def test_no_repeats_in_50k_ids_across_shards_and_threads() -> None:
    gen = IdGenerator(8192)
    gen.set_node(5)
    minted: list[list[int]] = [[] for _ in range(4)]

    def mint(out: list[int], shard: int) -> None:
        out.extend(gen.next_id(shard) for _ in range(12_500))

    threads = [threading.Thread(target=mint, args=(minted[i], i % 2)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for part in minted for i in part]
    assert len(ids) == 50_000
    assert len(set(ids)) == len(ids)
    assert {node_of(i) for i in ids} == {5}
    for part in minted:  # each thread's ids increase
        assert part == sorted(part)


def test_two_generators_with_different_nodes_never_collide() -> None:
    a, b = IdGenerator(8192), IdGenerator(8192)
    a.set_node(0)
    b.set_node(1)
    # interleaved on one shard: the same milliseconds, the same counters
    ids_a, ids_b = [], []
    for _ in range(5000):
        ids_a.append(a.next_id(7))
        ids_b.append(b.next_id(7))
    same_ms = {i >> (SHARD_BITS + SEQUENCE_BITS) for i in ids_a} & {
        i >> (SHARD_BITS + SEQUENCE_BITS) for i in ids_b
    }
    assert same_ms  # they did mint in the same milliseconds
    assert not set(ids_a) & set(ids_b)
    assert len(set(ids_a)) == len(set(ids_b)) == 5000


def test_clock_stepping_back_never_repeats_an_id(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = IdGenerator(8192)
    gen.set_node(2)
    clock = iter([1000] * 10 + [990] * 40 + list(range(991, 2000)))
    monkeypatch.setattr(IdGenerator, "_now_ms", staticmethod(lambda: next(clock)))
    monkeypatch.setattr("picscale.ids.time.sleep", lambda _s: None)
    ids = [gen.next_id(1) for _ in range(60)]
    assert len(set(ids)) == 60
    assert ids == sorted(ids)  # kept counting in ms 1000, then waited past it
    assert min(i >> (SHARD_BITS + SEQUENCE_BITS) for i in ids) == 1000
