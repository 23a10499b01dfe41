"""Pure units: ids, settings, the LRU and edit validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from picscale.ids import MAX_SEQUENCE, IdGenerator, compose, created_at_of, shard_of
from picscale.imaging import Blur, Crop, InvalidEdit, Operation, Sharpen, validate_operations
from picscale.settings import Settings, SettingsError, load_settings
from picscale.tiers.cache.lru import LruCache
from picscale.tiers.cache.port import Found


@given(
    # with 41 bits of milliseconds the id stays a positive signed BIGINT until 2058
    ms=st.integers(0, 2**40 - 1),
    shard=st.integers(0, 8191),
    seq=st.integers(0, MAX_SEQUENCE),
)
def test_id_layout_round_trips(ms: int, shard: int, seq: int) -> None:
    id_ = compose(ms, shard, seq)
    assert 0 <= id_ < 2**63
    assert shard_of(id_) == shard
    assert id_ & MAX_SEQUENCE == seq


def test_ids_are_unique_ordered_and_carry_time_and_shard() -> None:
    gen = IdGenerator(8192)
    gen.set_node(0)
    ids = [gen.next_id(42) for _ in range(5000)]  # more than one millisecond's counter
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert {shard_of(i) for i in ids} == {42}
    age = datetime.now(UTC) - created_at_of(ids[-1])
    assert timedelta(0) <= age < timedelta(seconds=5)


def test_random_shard_stays_within_logical_shards() -> None:
    gen = IdGenerator(16)
    assert {gen.random_shard() for _ in range(500)} <= set(range(16))


def test_settings_from_environment_and_overrides() -> None:
    s = load_settings({"PICSCALE_PORT": "9000", "PICSCALE_JOB_LEASE_SECONDS": "2.5"}, workers=3)
    assert (s.web.port, s.queue.lease_seconds, s.web.workers) == (9000, 2.5, 3)
    assert s.resolved_database_url.startswith("sqlite:///")
    assert s.resolved_database_url.endswith("/data/picscale.db")
    assert load_settings({}, data_dir=Path("/srv/x")).resolved_storage_url == "file:///srv/x/media"
    env = s.as_env()
    assert load_settings(env) == s


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"PICSCALE_PORT": "http"}, "PICSCALE_PORT"),
        ({"PICSCALE_WORKERS": "0"}, "workers"),
        ({"PICSCALE_LOGICAL_SHARDS": "9000"}, "PICSCALE_LOGICAL_SHARDS"),
        ({"PICSCALE_ENV": "production"}, "PICSCALE_SECRET_KEY"),
    ],
)
def test_bad_settings_name_what_to_fix(environ: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        load_settings(environ)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().web.port = 1  # type: ignore[misc]


def test_lru_evicts_least_recently_used_and_expires() -> None:
    lru = LruCache(max_entries=2)
    lru.set("a", Found(1), ttl=60)
    lru.set("b", Found(2), ttl=60)
    assert lru.get("a") == Found(1)  # a is now the most recent
    lru.set("c", Found(3), ttl=60)
    assert lru.get("b") is None
    assert lru.get("a") == Found(1)
    assert lru.get("c") == Found(3)
    lru.set("gone", Found(4), ttl=-1)
    assert lru.get("gone") is None


def test_operations_decode_from_json_with_limits() -> None:
    decoder = msgspec.json.Decoder(list[Operation])
    ops = decoder.decode(
        b'[{"op":"crop","x":1,"y":2,"width":3,"height":4},{"op":"sharpen","sigma":1},'
        b'{"op":"blur","sigma":2.5}]'
    )
    assert ops == [Crop(x=1, y=2, width=3, height=4), Sharpen(sigma=1), Blur(sigma=2.5)]
    for bad in (
        b'[{"op":"blur","sigma":-1}]',
        b'[{"op":"blur","sigma":1e9}]',
        b'[{"op":"rotate"}]',
        b'[{"op":"crop","x":-1,"y":0,"width":1,"height":1}]',
        b'[{"op":"blur","sigma":1,"extra":true}]',
    ):
        with pytest.raises(msgspec.ValidationError):
            decoder.decode(bad)


def test_validation_tracks_the_size_through_crops() -> None:
    validate_operations([Crop(x=0, y=0, width=100, height=50), Blur(sigma=1)], 800, 600)
    with pytest.raises(InvalidEdit, match=r"operation 2 \(crop\).*100x50"):
        validate_operations(
            [Crop(x=0, y=0, width=100, height=50), Crop(x=90, y=0, width=20, height=10)],
            800,
            600,
        )
    with pytest.raises(InvalidEdit, match="at most 10"):
        validate_operations([Blur(sigma=1)] * 11, 800, 600)
    with pytest.raises(InvalidEdit, match="empty"):
        validate_operations([], 800, 600)
    with pytest.raises(InvalidEdit, match="sigma"):
        validate_operations([Sharpen(sigma=float("nan"))], 800, 600)
