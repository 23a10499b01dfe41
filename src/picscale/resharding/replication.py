"""PostgreSQL plumbing of a shard move: the publication with its row filter, the slot,
the subscription, the fence (a table and a trigger), the markers, and range deletes.

Every function is safe to run twice (a resumed move reruns the step it died in). The
mover connects as a superuser: CREATE SUBSCRIPTION needs one in PostgreSQL 15, and the
range deletes run with ``session_replication_role = replica`` so that a foreign key
across shards (a follow of a user on a staying shard) cascades to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from picscale.data.schema import SHARDED, metadata
from picscale.ids import MAX_SHARD, SEQUENCE_BITS
from picscale.tiers.db.database import FENCE_SQLSTATE, Database

FENCE_TRIGGER = "picscale_shard_fence"
MARKERS = "shard_move_markers"
# the fence guards every sharded table but the markers, which are written under it
FENCED = tuple(t for t in SHARDED if t != MARKERS)
# children before their parents (range deletes), parents first (nothing else needs it)
CHILDREN_FIRST = tuple(t.name for t in reversed(metadata.sorted_tables) if t.name in SHARDED)
DELETE_BATCH = 5000
# DDL on a busy table: give up and retry rather than queue writers behind it (and well
# under deadlock_timeout, 1 s: a writer waiting on us must never be the one killed)
LOCK_TIMEOUT = "200ms"


def shard_of_sql(column: str) -> str:
    return f'(("{column}" >> {SEQUENCE_BITS}) & {MAX_SHARD})'


def in_range(column: str, first: int, last: int) -> str:
    return f"({shard_of_sql(column)} BETWEEN {int(first)} AND {int(last)})"


@asynccontextmanager
async def session(db: Database) -> AsyncIterator[AsyncConnection]:
    """A connection to the primary in autocommit, without the statement timeout."""
    async with db.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("SET statement_timeout = 0")
        yield conn
        with contextlib.suppress(Exception):  # (a broken connection is not reused)
            await conn.exec_driver_sql("RESET statement_timeout")


async def _value(conn: AsyncConnection, sql: str, *params: Any) -> Any:
    return (await conn.exec_driver_sql(sql, params)).scalar()


async def _rows(conn: AsyncConnection, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in await conn.exec_driver_sql(sql, params)]


async def _ddl(db: Database, statements: list[str], attempts: int = 25) -> None:
    """Statements in one transaction that takes table locks: with a short lock timeout,
    retried, so that writers never queue long behind it."""
    for attempt in range(attempts):
        try:
            async with db.engine.begin() as conn:
                await conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                for sql in statements:
                    await conn.exec_driver_sql(sql)
            return
        except Exception as exc:
            if "lock timeout" not in str(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))


# -- what a move checks first -------------------------------------------------------------


@dataclass(frozen=True)
class ServerFacts:
    version: int
    wal_level: str
    superuser: bool
    user: str


async def server_facts(db: Database) -> ServerFacts:
    async with session(db) as conn:
        row = (
            await _rows(
                conn,
                "SELECT current_setting('server_version_num')::int, "
                "current_setting('wal_level'), "
                "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user), current_user",
            )
        )[0]
    return ServerFacts(int(row[0]), str(row[1]), bool(row[2]), str(row[3]))


async def schema_of(db: Database) -> dict[str, Any]:
    """The migration revision and the columns of every sharded table: a move copies rows
    between clusters whose schemas agree (DDL is not replicated)."""
    async with session(db) as conn:
        revision = await _value(conn, "SELECT string_agg(version_num, ',') FROM alembic_version")
        rows = await _rows(
            conn,
            "SELECT table_name, column_name, data_type, is_nullable, "
            "coalesce(character_maximum_length, -1) FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ANY($1) "
            "ORDER BY table_name, ordinal_position",
            list(SHARDED),
        )
    columns: dict[str, list[str]] = {t: [] for t in SHARDED}
    for table, column, kind, nullable, length in rows:
        size = f"({length})" if length >= 0 else ""
        null = "" if nullable == "YES" else " not null"
        columns[table].append(f"{column} {kind}{size}{null}")
    return {"revision": revision, "columns": columns}


def schema_differences(source: dict[str, Any], target: dict[str, Any]) -> list[str]:
    out = []
    if source["revision"] != target["revision"]:
        out.append(f"migration revision {source['revision']} vs {target['revision']}")
    for table in SHARDED:
        a, b = source["columns"][table], target["columns"][table]
        if not a or not b:
            out.append(f"table {table} missing on the {'source' if not a else 'target'}")
        elif a != b:
            only_a = [c for c in a if c not in b] or ["(column order)"]
            only_b = [c for c in b if c not in a] or ["(column order)"]
            out.append(f"{table}: {', '.join(only_a)} vs {', '.join(only_b)}")
    return out


# -- rows of a range ------------------------------------------------------------------------


async def count_range(
    db: Database, first: int, last: int, tables: Iterable[str] = SHARDED
) -> dict[str, int]:
    """Rows of logical shards ``first..last`` on this cluster, by table."""
    out = {}
    async with session(db) as conn:
        for table in tables:
            where = in_range(SHARDED[table], first, last)
            out[table] = int(await _value(conn, f'SELECT count(*) FROM "{table}" WHERE {where}'))
    return out


async def delete_range(
    db: Database,
    first: int,
    last: int,
    *,
    progress: Callable[[int], None] | None = None,
    batch: int = DELETE_BATCH,
) -> int:
    """Delete every row of logical shards ``first..last`` here, in batches of its own
    transactions, children first; past the fence and without cascades (see above)."""
    deleted = 0
    for table in CHILDREN_FIRST:
        where = in_range(SHARDED[table], first, last)
        while True:
            async with db.engine.begin() as conn:
                await conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                await conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
                await conn.exec_driver_sql("SET LOCAL picscale.move_cleanup = 'on'")
                result = await conn.exec_driver_sql(
                    f'DELETE FROM "{table}" WHERE ctid = ANY(ARRAY('
                    f'SELECT ctid FROM "{table}" WHERE {where} LIMIT {int(batch)}))'
                )
            deleted += result.rowcount
            if progress is not None and result.rowcount:
                progress(deleted)
            if result.rowcount < batch:
                break
    return deleted


# -- publication and slot (source), subscription (target) --------------------------------


async def create_publication(db: Database, name: str, first: int, last: int) -> None:
    tables = ", ".join(
        f'"{table}" WHERE {in_range(column, first, last)}' for table, column in SHARDED.items()
    )
    async with session(db) as conn:
        if await _value(conn, "SELECT 1 FROM pg_publication WHERE pubname = $1", name):
            return
        await conn.exec_driver_sql(f'CREATE PUBLICATION "{name}" FOR TABLE {tables}')


async def drop_publication(db: Database, name: str) -> None:
    async with session(db) as conn:
        await conn.exec_driver_sql(f'DROP PUBLICATION IF EXISTS "{name}"')


async def create_slot(db: Database, name: str) -> None:
    """After the publication: a slot whose start predates its publication cannot decode."""
    async with session(db) as conn:
        if await _value(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", name):
            return
        await conn.exec_driver_sql(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", (name,)
        )


async def drop_slots(
    db: Database, name: str, subscription_oid: int | None, wait: float = 10.0
) -> None:
    """The move's slot and its table-sync workers' slots; a walsender still attached is
    given ``wait`` seconds to go, then ended."""
    pattern = f"pg\\_{subscription_oid}\\_sync\\_%" if subscription_oid else "-"
    deadline = time.monotonic() + wait
    async with session(db) as conn:
        while True:
            rows = await _rows(
                conn,
                "SELECT slot_name, active_pid FROM pg_replication_slots "
                "WHERE slot_name = $1 OR slot_name LIKE $2",
                name,
                pattern,
            )
            if not rows:
                return
            for slot, pid in rows:
                if pid is None:
                    await conn.exec_driver_sql(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = $1 AND active_pid IS NULL",
                        (slot,),
                    )
                elif time.monotonic() > deadline:
                    await conn.exec_driver_sql("SELECT pg_terminate_backend($1)", (pid,))
            await asyncio.sleep(0.05)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def create_subscription(db: Database, name: str, source_dsn: str) -> None:
    async with session(db) as conn:
        if await _value(conn, "SELECT 1 FROM pg_subscription WHERE subname = $1", name):
            return
        await conn.exec_driver_sql(
            f'CREATE SUBSCRIPTION "{name}" CONNECTION {_literal(source_dsn)} '
            f'PUBLICATION "{name}" WITH (copy_data = true, create_slot = false, '
            f"slot_name = {_literal(name)}, enabled = true)"
        )


async def subscription_oid(db: Database, name: str) -> int | None:
    async with session(db) as conn:
        oid = await _value(conn, "SELECT oid::bigint FROM pg_subscription WHERE subname = $1", name)
    return int(oid) if oid is not None else None


async def drop_subscription(db: Database, name: str) -> None:
    """Without touching the source (which may be down): its slots are dropped there."""
    async with session(db) as conn:
        if not await _value(conn, "SELECT 1 FROM pg_subscription WHERE subname = $1", name):
            return
        await conn.exec_driver_sql(f'ALTER SUBSCRIPTION "{name}" DISABLE')
        await conn.exec_driver_sql(f'ALTER SUBSCRIPTION "{name}" SET (slot_name = NONE)')
        await conn.exec_driver_sql(f'DROP SUBSCRIPTION "{name}"')


@dataclass(frozen=True)
class CopyState:
    tables: dict[str, str]  # table -> pg_subscription_rel state (i, d, f, s, r)
    copying: dict[str, int]  # table -> rows its COPY has written so far
    errors: int  # apply and sync errors since the subscription was made

    @property
    def ready(self) -> list[str]:
        return [t for t, state in self.tables.items() if state == "r"]


async def copy_state(db: Database, name: str) -> CopyState:
    async with session(db) as conn:
        states = await _rows(
            conn,
            "SELECT c.relname, r.srsubstate::text FROM pg_subscription_rel r "
            "JOIN pg_subscription s ON s.oid = r.srsubid "
            "JOIN pg_class c ON c.oid = r.srrelid WHERE s.subname = $1",
            name,
        )
        copying = await _rows(
            conn,
            "SELECT c.relname, p.tuples_processed FROM pg_stat_progress_copy p "
            "JOIN pg_class c ON c.oid = p.relid "
            "WHERE p.datname = current_database() AND p.command = 'COPY FROM'",
        )
        errors = await _value(
            conn,
            "SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats "
            "WHERE subname = $1",
            name,
        )
    return CopyState(
        {str(t): str(s) for t, s in states},
        {str(t): int(n) for t, n in copying},
        int(errors or 0),
    )


# -- the fence (source) -----------------------------------------------------------------


def _fence_function(table: str, column: str) -> str:
    check = (
        "IF EXISTS (SELECT 1 FROM shard_fences f "
        'WHERE s BETWEEN f."first" AND f."last") THEN '
        f"RAISE EXCEPTION USING ERRCODE = '{FENCE_SQLSTATE}', "
        "MESSAGE = format('logical shard %s is moving to another cluster: "
        "retry on the new shard map', s); END IF;"
    )
    return f"""
CREATE OR REPLACE FUNCTION picscale_fence_{table}() RETURNS trigger
LANGUAGE plpgsql AS $fence$
DECLARE s integer;
BEGIN
  IF EXISTS (SELECT 1 FROM shard_fences)
     AND coalesce(current_setting('picscale.move_cleanup', true), '') <> 'on' THEN
    IF TG_OP <> 'DELETE' THEN
      s := {shard_of_sql(column).replace(f'"{column}"', f'NEW."{column}"')};
      {check}
    END IF;
    IF TG_OP <> 'INSERT' THEN
      s := {shard_of_sql(column).replace(f'"{column}"', f'OLD."{column}"')};
      {check}
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END
$fence$"""


async def install_fence_triggers(db: Database) -> None:
    """On every fenced table: a row trigger that refuses writes to fenced shards. With
    no fence it costs one look at an empty table. One table per transaction: a lock on
    one table at a time, so that writers touching several never deadlock with it."""
    for table in FENCED:
        await _ddl(
            db,
            [
                _fence_function(table, SHARDED[table]),
                f"CREATE OR REPLACE TRIGGER {FENCE_TRIGGER} BEFORE INSERT OR UPDATE OR DELETE "
                f'ON "{table}" FOR EACH ROW EXECUTE FUNCTION picscale_fence_{table}()',
            ],
        )


async def drop_fence_triggers(db: Database) -> None:
    for table in FENCED:  # one table per transaction, as they were installed
        await _ddl(
            db,
            [
                f'DROP TRIGGER IF EXISTS {FENCE_TRIGGER} ON "{table}"',
                f"DROP FUNCTION IF EXISTS picscale_fence_{table}()",
            ],
        )


async def has_fence_triggers(db: Database) -> bool:
    async with session(db) as conn:
        return bool(
            await _value(conn, "SELECT 1 FROM pg_trigger WHERE tgname = $1 LIMIT 1", FENCE_TRIGGER)
        )


async def raise_fence(db: Database, first: int, last: int) -> list[str]:
    """Fence ``first..last`` (committed), then the transactions that were running at the
    commit: any of them may still write to the range, having passed the trigger before.
    One that has not written yet has no xid and is not listed: its next statement takes a
    new snapshot (READ COMMITTED, the service's level) and meets the fence."""
    async with session(db) as conn:
        await conn.exec_driver_sql(
            'INSERT INTO shard_fences ("first", "last", created_at) VALUES ($1, $2, now()) '
            'ON CONFLICT ("first") DO UPDATE SET "last" = excluded."last", '
            "created_at = excluded.created_at",
            (first, last),
        )
        rows = await _rows(conn, "SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x")
    return [str(r[0]) for r in rows]


async def still_running(db: Database, xids: list[str]) -> int:
    if not xids:
        return 0
    async with session(db) as conn:
        return int(
            await _value(
                conn,
                "SELECT count(*) FROM unnest($1::text[]) AS x "
                "WHERE pg_xact_status(x::xid8) = 'in progress'",
                xids,
            )
        )


async def lower_fence(db: Database, first: int) -> int:
    """Remove the fence that starts at ``first``; the fences that remain."""
    async with session(db) as conn:
        await conn.exec_driver_sql('DELETE FROM shard_fences WHERE "first" = $1', (first,))
        return int(await _value(conn, "SELECT count(*) FROM shard_fences"))


async def fence_up(db: Database, first: int) -> bool:
    async with session(db) as conn:
        return bool(await _value(conn, 'SELECT 1 FROM shard_fences WHERE "first" = $1', first))


# -- markers ------------------------------------------------------------------------------


async def write_marker(db: Database, marker_id: int) -> None:
    async with session(db) as conn:
        await conn.exec_driver_sql(
            f"INSERT INTO {MARKERS} (id, created_at) VALUES ($1, now()) ON CONFLICT DO NOTHING",
            (marker_id,),
        )


async def wait_marker(db: Database, marker_id: int, within: float, interval: float) -> bool:
    """Until the marker has arrived here (True), or ``within`` seconds (False)."""
    deadline = time.monotonic() + within
    async with session(db) as conn:
        while True:
            if await _value(conn, f"SELECT 1 FROM {MARKERS} WHERE id = $1", marker_id):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(interval)


async def delete_markers(db: Database, first: int, last: int) -> None:
    async with session(db) as conn:
        await conn.exec_driver_sql(f"DELETE FROM {MARKERS} WHERE {in_range('id', first, last)}")
