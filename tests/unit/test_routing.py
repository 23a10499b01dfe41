"""Read routing pieces that need no server: WAL positions, contexts, error classes."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, IntegrityError

from picscale.tiers.db.engines import _multi_host, async_url
from picscale.tiers.db.read_your_writes import (
    current_scope,
    format_lsn,
    job_scope,
    parse_lsn,
    request_scope,
)
from picscale.tiers.db.replicas import is_retryable_read_error
from picscale.tiers.queue.tracing import traced


def test_lsn_round_trip() -> None:
    for text in ("0/0", "0/3029690", "16/B374D848", "FFFFFFFF/FFFFFFFF"):
        assert format_lsn(parse_lsn(text)) == text
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")


def test_read_scope_keeps_the_highest_positions_and_ends() -> None:
    assert current_scope() is None
    with job_scope({"wal": {"c1": 10}}) as scope:
        scope.require("c1", 5)
        scope.require("c2", 7)
        assert not scope.has_written
        scope.wrote_at("c1", 30)
        scope.wrote_at("c1", 20)
        assert (scope.must_see, scope.written) == ({"c1": 10, "c2": 7}, {"c1": 30})
        assert scope.has_written_on("c1") and not scope.has_written_on("c2")
        assert current_scope() is scope
    assert current_scope() is None
    with request_scope() as scope:
        assert (scope.must_see, scope.pinned) == ({}, False)


def test_jobs_carry_the_position_of_the_request_that_queued_them() -> None:
    assert "wal" not in traced({"photo_id": 1})
    with job_scope({"wal": {"c1": 100}}) as scope:
        assert traced({"photo_id": 1})["wal"] == {"c1": 100}
        scope.wrote_at("c1", 250)
        scope.wrote_at("c2", 40)
        assert traced({"photo_id": 1}) == {"photo_id": 1, "wal": {"c1": 250, "c2": 40}}


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def test_which_read_errors_are_retried_elsewhere() -> None:
    conflict = DBAPIError("SELECT 1", None, _PgError("40001"))  # conflict with recovery
    shutdown = DBAPIError("SELECT 1", None, _PgError("57P01"))  # admin shutdown
    syntax = DBAPIError("SELEC 1", None, _PgError("42601"))
    assert is_retryable_read_error(conflict)
    assert is_retryable_read_error(shutdown)
    assert is_retryable_read_error(ConnectionRefusedError())
    assert not is_retryable_read_error(syntax)
    assert not is_retryable_read_error(IntegrityError("INSERT", None, _PgError("23505")))
    assert not is_retryable_read_error(ValueError("not a database error"))


def test_multi_host_urls_become_sqlalchemy_host_lists() -> None:
    url = "postgresql://app@db1:5432,db2:5433/picscale?target_session_attrs=read-write"
    assert _multi_host(url) == (
        "postgresql://app@/picscale?host=db1:5432&host=db2:5433&target_session_attrs=read-write"
    )
    assert async_url(url).startswith("postgresql+asyncpg://app@/picscale?host=db1")
    assert _multi_host("postgresql://app@db1:5432/picscale") == "postgresql://app@db1:5432/picscale"
