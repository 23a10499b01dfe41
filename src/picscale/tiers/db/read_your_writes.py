"""Read-your-writes: what a request or a job must read, what it wrote, and where that is
remembered (the shape of GitLab's ``load_balancing/sticking.rb`` and its request and
job middleware).

Every unit of work runs in a ``ReadScope``: a web request in ``request_scope()``, a job
in ``job_scope(payload)``. The database consults the scope on every read and records in
it every write:

- ``must_see``: per cluster, a position in its primary's WAL that a replica must have
  replayed to serve this unit's reads there (else they go to the primary);
- ``written``: per cluster, the primary's position after this unit's last write there;
  once a unit has written to a cluster, its own reads there go to the primary.

Where it is remembered:

- for a user, in their session (``Sticking``): after a request that wrote, the position
  is kept for ``sticky_seconds``, saved before the response starts; the user's next
  requests must see it, until every replica has caught up;
- for a job, in its payload (``stamp_job``): a job reads at least what the request
  that queued it had seen or written.

Two kinds of reads stand apart from the scope's:

- **fresh reads** (``fresh_reads()``): reads that must see every commit so far, because
  what they load fills a cache (a replica's older copy, cached after the write's
  invalidation, would stay stale for a TTL). The database serves them from a replica
  that has replayed the primary's position as of now, else the primary; while the
  primary cannot be reached, from any replica, marked ``stale`` (served, never cached).
- **reads on the primary** (``Database.read_on_primary()``): sessions and log-in checks,
  which must see a write made a moment ago by any process, and may not be stale.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from picscale.observability.metrics import Metrics
    from picscale.tiers.db.shards import Shards

WAL_KEY = "wal"  # in a session's data and in a job's payload


def format_lsn(position: int) -> str:
    """An LSN as PostgreSQL writes it (``16/B374D848``)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def parse_lsn(value: str) -> int:
    high, _, low = value.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass
class ReadScope:
    """One request's or job's reads: what they must see, and what it wrote, per cluster
    (each cluster of the shard layout has its own primary and WAL)."""

    must_see: dict[str, int] = field(default_factory=dict)  # replicas must have replayed
    written: dict[str, int] = field(default_factory=dict)  # primary's position after writes
    written_on: set[str] = field(default_factory=set)  # clusters this unit wrote to
    # set by whoever knows where to keep ``written`` for the user's next requests
    remember: Callable[[dict[str, int]], Awaitable[None]] | None = None

    def require(self, cluster: str, position: int | None) -> None:
        if position is not None and position > self.must_see.get(cluster, -1):
            self.must_see[cluster] = position

    def wrote_at(self, cluster: str, position: int | None) -> None:
        self.written_on.add(cluster)
        if position is not None and position > self.written.get(cluster, -1):
            self.written[cluster] = position

    def must_see_on(self, cluster: str) -> int | None:
        return self.must_see.get(cluster)

    def has_written_on(self, cluster: str) -> bool:
        return cluster in self.written_on

    @property
    def has_written(self) -> bool:
        return bool(self.written_on)

    @property
    def pinned(self) -> bool:
        """It has written, or must see a position: a copy that may be older than that (a
        near cache's) must not serve its reads."""
        return self.has_written or bool(self.must_see)

    async def save_written(self) -> None:
        """Keep ``written`` where the user's next requests find it (before the client
        hears back, so that a request it sends next cannot miss it)."""
        if self.written and self.remember is not None:
            await self.remember(dict(self.written))


_scope: ContextVar[ReadScope | None] = ContextVar("picscale_read_scope", default=None)


@contextmanager
def _scoped(must_see: Mapping[str, int] | None) -> Iterator[ReadScope]:
    scope = ReadScope()
    for cluster, position in (must_see or {}).items():
        scope.require(cluster, position)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def current_scope() -> ReadScope | None:
    return _scope.get()


# -- the entry point for web requests ---------------------------------------------------


def request_scope() -> AbstractContextManager[ReadScope]:
    """A web request's scope; ``Sticking.bind`` adds its user's position once known."""
    return _scoped(None)


class SessionLike(Protocol):
    data: dict[str, Any]


class Sticking:
    """A user's last write position, remembered in their session for ``seconds``.

    ``bind`` is the web entry point, called once the request's session is known: it makes
    the request's reads wait for (or skip past) replicas that have not replayed the
    user's last write, and arranges for this request's writes to be remembered.
    """

    def __init__(
        self,
        shards: Shards,
        save: Callable[[Any], Awaitable[None]],
        *,
        seconds: int,
        metrics: Metrics,
    ) -> None:
        self._shards = shards
        self._save = save  # stores a session's data
        self._seconds = seconds
        self._metrics = metrics

    async def bind(self, session: SessionLike, *, new: bool = False) -> None:
        scope = current_scope()
        if scope is None or not self._shards.replicas:
            return

        async def remember(positions: dict[str, int]) -> None:
            until = time.time() + self._seconds
            lsns = {cluster: format_lsn(p) for cluster, p in positions.items()}
            session.data[WAL_KEY] = {"lsn": lsns, "until": until}
            await self._save(session)

        scope.remember = remember
        if new:  # a fresh session has no past writes
            return
        for cluster, position in _remembered(session.data.get(WAL_KEY)).items():
            db = self._shards.clusters.get(cluster)
            if db is None or db.replicas is None:
                continue
            # stickiness ends once every replica has caught up
            if not await db.replicas.all_caught_up(position):
                scope.require(cluster, position)
                self._metrics.replica_event("sticky", "")


def _remembered(wal: object) -> dict[str, int]:
    if not isinstance(wal, dict) or float(wal.get("until", 0)) <= time.time():
        return {}
    lsns = wal.get("lsn")
    if not isinstance(lsns, dict):
        return {}
    return {str(c): parse_lsn(str(v)) for c, v in lsns.items()}


# -- the entry point for jobs -------------------------------------------------------------


def stamp_job(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A job's payload with the position the queuing unit had seen or written: the job
    reads at least that, whichever replica serves it."""
    out = dict(payload)
    scope = current_scope()
    if scope is not None:
        positions = dict(scope.must_see)
        for cluster, p in scope.written.items():
            positions[cluster] = max(p, positions.get(cluster, -1))
        if positions:
            out[WAL_KEY] = positions
    return out


def job_scope(payload: Mapping[str, Any]) -> AbstractContextManager[ReadScope]:
    """A job's scope: it must see what the request that queued it saw."""
    wal = payload.get(WAL_KEY)
    positions = {str(c): int(p) for c, p in wal.items()} if isinstance(wal, dict) else None
    return _scoped(positions)


# -- fresh reads ----------------------------------------------------------------------------


@dataclass
class FreshReads:
    """Reads that must see every commit so far. ``stale`` is set when the primary could
    not be asked (it is gone: a failover) and a replica answered instead: the value may
    be served, but must not be cached."""

    stale: bool = False


_fresh: ContextVar[FreshReads | None] = ContextVar("picscale_fresh_reads", default=None)


@contextmanager
def fresh_reads() -> Iterator[FreshReads]:
    """Reads inside must see every commit so far (values that fill a cache)."""
    fresh = FreshReads()
    token = _fresh.set(fresh)
    try:
        yield fresh
    finally:
        _fresh.reset(token)


def wants_fresh() -> bool:
    return _fresh.get() is not None


def mark_stale_read() -> None:
    """A fresh read was served by a replica without the primary's word: it is stale."""
    fresh = _fresh.get()
    if fresh is not None:
        fresh.stale = True
