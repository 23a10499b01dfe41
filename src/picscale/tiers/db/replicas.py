"""Reads on replicas (the design of GitLab's load balancer).

- Reads go to a healthy replica; writes, and the reads of a request that has written,
  go to the primary.
- After a request writes, the primary's WAL position is kept for that user (30 s, in
  the session); that user's next reads go only to a replica that has replayed it, else
  to the primary. Jobs carry the position of the request that queued them.
- Replica positions and lag are checked with a 100 ms timeout and cached for 100 ms;
  a replica too far behind, or failing its check, is left out and re-checked later.
- A read that fails on a replica (it died, or a hot-standby conflict cancelled it)
  is retried on another replica or the primary: the request still succeeds.
- A read meant for the primary (fresh, or after the user's write) that cannot reach it
  (a failover) is served by a replica rather than failing: possibly a little stale, so
  it is never cached (``FreshReads.stale``). Sessions and log-in checks stay on the primary.
- Once the primary has failed to answer, those reads skip it (a circuit breaker) until a
  probe, once a second in the background, finds it again: a dead host on a network does
  not refuse, and every read that tried it would wait for the connect timeout.

What each request or job must see is decided in ``read_your_writes``; this module keeps
the replicas' state and chooses among them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from picscale.observability.metrics import Metrics

log = structlog.get_logger(__name__)

CHECK_TIMEOUT_SECONDS = 0.1
POSITION_TTL_SECONDS = 0.1
# a read bound to a position the cached state says is not replayed yet looks again: a
# replica is usually a millisecond behind, and a check costs far less than the read
FORCED_RECHECK_SECONDS = 0.002
RECHECK_FAILED_SECONDS = 1.0
PRIMARY_PROBE_SECONDS = 1.0  # while the primary is out, how often it is tried again

_REPLICA_STATE = text(
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() - '0/0'::pg_lsn, "
    "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)
# the insert position: it includes our commit record even before it is flushed
PRIMARY_POSITION = text("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")


# -- the primary, while it does not answer ----------------------------------------------


class PrimaryUnreachable(ConnectionError):
    """The primary failed to answer a moment ago: a read that may go elsewhere skips it."""


class PrimaryBreaker:
    """A circuit breaker on the primary, for the reads a replica may serve instead.

    Every use of the primary reports how it went. After a failure the breaker is open:
    ``skip()`` is true, and a probe in the background tries the primary every
    ``PRIMARY_PROBE_SECONDS``; the first success (the probe's, or a write's) closes it.
    Writes and sessions never skip: they need the primary, and wait for it.
    """

    def __init__(self, engine: AsyncEngine, observe: Callable[[str, str], None]) -> None:
        self._engine = engine
        self._observe = observe
        self._open = False
        self._probe_at = 0.0
        self._probe: asyncio.Task[None] | None = None

    def skip(self) -> bool:
        """True while reads that may go elsewhere should not try the primary."""
        if not self._open:
            return False
        if self._probe is None and time.monotonic() >= self._probe_at:
            self._probe = asyncio.get_running_loop().create_task(self._try())
        self._observe("primary_skipped", "primary")
        return True

    def failed(self) -> None:
        if not self._open:
            log.warning("primary_out", retry_every=PRIMARY_PROBE_SECONDS)
            self._observe("primary_out", "primary")
        self._open = True
        self._probe_at = time.monotonic() + PRIMARY_PROBE_SECONDS

    def succeeded(self) -> None:
        if self._open:
            log.info("primary_back")
            self._observe("primary_back", "primary")
        self._open = False

    async def _try(self) -> None:
        try:
            async with self._engine.connect() as conn:
                conn.info["intent"] = "check"
                await asyncio.wait_for(conn.scalar(text("SELECT 1")), CHECK_TIMEOUT_SECONDS * 5)
        except (DBAPIError, OSError, TimeoutError):
            self.failed()
        else:
            self.succeeded()
        finally:
            self._probe = None

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)


# -- the replicas ------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    engine: AsyncEngine
    healthy: bool = True
    position: int = 0
    lag_seconds: float = 0.0
    checked_at: float = -1.0
    failed_at: float = -1.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ReplicaSet:
    def __init__(
        self,
        replicas: list[Replica],
        primary: AsyncEngine,
        *,
        max_lag_seconds: float,
        max_lag_bytes: int,
        metrics: Metrics,
    ) -> None:
        self.replicas = replicas
        self._primary = primary
        self._max_lag_seconds = max_lag_seconds
        self._max_lag_bytes = max_lag_bytes
        self._primary_position = 0
        self._primary_checked_at = -1.0
        self._primary_lock = asyncio.Lock()
        self._observe = metrics.replica_event
        self._observe_lag = metrics.replica_lag
        # set when replicas are discovered (Patroni): called before each routing decision
        self.refresh: Callable[[], Awaitable[None]] | None = None
        self.breaker = PrimaryBreaker(primary, self._observe)

    async def primary_position(self, *, fresh: bool = False) -> int:
        """Where the primary's WAL is: cached for 100 ms, or asked now (``fresh``). While
        the primary is out (``breaker``), the last known position, or for ``fresh``
        PrimaryUnreachable."""
        if not fresh and time.monotonic() - self._primary_checked_at < POSITION_TTL_SECONDS:
            return self._primary_position
        if self.breaker.skip():
            if fresh:
                raise PrimaryUnreachable("the primary is out: a probe looks for it")
            return self._primary_position  # lag in bytes is judged on the last known one
        async with self._primary_lock:
            if fresh or time.monotonic() - self._primary_checked_at >= POSITION_TTL_SECONDS:
                try:
                    async with self._primary.connect() as conn:
                        conn.info["intent"] = "check"
                        position = await asyncio.wait_for(
                            conn.scalar(PRIMARY_POSITION), CHECK_TIMEOUT_SECONDS * 5
                        )
                    self._primary_position = int(position or 0)
                    self.breaker.succeeded()
                except (DBAPIError, OSError, TimeoutError):
                    self.breaker.failed()
                    if fresh:
                        raise
                    # lag in bytes is judged on the last known position
                self._primary_checked_at = time.monotonic()
        return self._primary_position

    async def _check(self, replica: Replica, primary_position: int, force: bool = False) -> None:
        now = time.monotonic()
        if now - replica.checked_at < (FORCED_RECHECK_SECONDS if force else POSITION_TTL_SECONDS):
            return
        if not replica.healthy and now - replica.failed_at < RECHECK_FAILED_SECONDS:
            return
        async with replica.lock:
            ttl = FORCED_RECHECK_SECONDS if force else POSITION_TTL_SECONDS
            if time.monotonic() - replica.checked_at < ttl:
                return
            try:
                # the query has 100 ms; opening a connection has the pool's own timeout
                async with replica.engine.connect() as conn:
                    conn.info["intent"] = "check"
                    async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                        row = (await conn.execute(_REPLICA_STATE)).one()
                in_recovery, position, lag = bool(row[0]), int(row[1] or 0), float(row[2] or 0)
                if not in_recovery:
                    raise RuntimeError("not a replica (promoted?)")
                was_healthy = replica.healthy
                replica.position, replica.lag_seconds = position, lag
                replica.healthy = True
                if not was_healthy:
                    log.info("replica_back", replica=replica.name)
            except (DBAPIError, OSError, TimeoutError, RuntimeError) as exc:
                self.mark_failed(replica, exc)
            replica.checked_at = time.monotonic()
            lag_bytes = max(0, primary_position - replica.position)
            self._observe_lag(replica.name, replica.lag_seconds, float(lag_bytes))

    def mark_failed(self, replica: Replica, exc: BaseException | None = None) -> None:
        if replica.healthy:
            log.warning("replica_out", replica=replica.name, error=repr(exc)[:200])
        replica.healthy = False
        replica.failed_at = time.monotonic()
        replica.checked_at = replica.failed_at

    def _usable(self, replica: Replica, primary_position: int) -> bool:
        lag_bytes = primary_position - replica.position
        return (
            replica.healthy
            and replica.lag_seconds <= self._max_lag_seconds
            and lag_bytes <= self._max_lag_bytes
        )

    async def choose(self, required: int | None, exclude: set[str] | None = None) -> Replica | None:
        """A replica that may serve this read, or None: read on the primary."""
        if self.refresh is not None:
            await self.refresh()
        primary_position = await self.primary_position()
        await asyncio.gather(*(self._check(r, primary_position) for r in self.replicas))
        usable = [
            r
            for r in self.replicas
            if self._usable(r, primary_position) and r.name not in (exclude or set())
        ]
        if required is not None:
            caught_up = [r for r in usable if r.position >= required]
            if usable and not caught_up:
                behind = [r for r in usable if r.position < required]
                await asyncio.gather(*(self._check(r, primary_position, True) for r in behind))
                caught_up = [r for r in usable if r.healthy and r.position >= required]
            if usable and not caught_up:
                self._observe("primary_for_lag", "primary")
            usable = caught_up
        return random.choice(usable) if usable else None

    async def all_caught_up(self, position: int) -> bool:
        primary_position = await self.primary_position()
        await asyncio.gather(*(self._check(r, primary_position) for r in self.replicas))
        behind = [r for r in self.replicas if r.healthy and r.position < position]
        await asyncio.gather(*(self._check(r, primary_position, True) for r in behind))
        return all(r.position >= position for r in self.replicas if r.healthy)

    async def dispose(self) -> None:
        await self.breaker.close()
        for replica in self.replicas:
            await replica.engine.dispose()


def is_retryable_read_error(exc: BaseException) -> bool:
    """A read that may succeed elsewhere: the node went away, or recovery cancelled it."""
    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        code = None
        for err in (exc.orig, getattr(exc.orig, "__cause__", None)):
            code = code or getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        # 40001: canceling statement due to conflict with recovery; 57P0x: shutting down;
        # 08xxx: connection exceptions
        return isinstance(code, str) and (code == "40001" or code.startswith(("57P", "08")))
    return False


def node_name(engine: AsyncEngine) -> str:
    url = engine.url
    if url.host is None and "host" in url.query:  # several hosts: whichever is primary
        hosts = url.query["host"]
        return ",".join(hosts) if isinstance(hosts, tuple) else str(hosts)
    return f"{url.host}:{url.port}"
