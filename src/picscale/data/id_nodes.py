"""Node numbers for minting ids: each live process holds one of 32, leased in the global
database's ``id_nodes`` table, so that no two processes ever mint the same id.

A process claims the lowest free number (a row inserted, the primary key refusing a second
holder) or else one whose lease has expired (a conditional update that only one claimant
can win), renews it every third of the lease, and deletes the row when it stops. When it
cannot renew in time it stops minting (the generator's node is unset) before the lease can
lapse, and claims a number afresh once the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, select, update

from picscale.clock import utcnow
from picscale.data.schema import id_nodes
from picscale.data.statements import insert_new
from picscale.ids import NODES, IdGenerator
from picscale.tiers.db import Database

log = structlog.get_logger(__name__)


class NodeLease:
    def __init__(
        self, global_db: Database, ids: IdGenerator, holder: str, lease_seconds: float = 30.0
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("an id node lease needs a positive length")
        self._db = global_db
        self._ids = ids
        # a token of its own: two processes given the same name (a restarted host) must
        # never take each other's rows for their own
        token = secrets.token_hex(4)
        self.holder = f"{holder[: 128 - len(token) - 1]}#{token}"
        self._lease = timedelta(seconds=lease_seconds)
        self._interval = lease_seconds / 3
        self._node: int | None = None
        self._expires_at = utcnow()
        self._task: asyncio.Task[None] | None = None

    @property
    def node(self) -> int | None:
        return self._node

    async def start(self) -> int:
        """Claim a node number, set it on the generator, and keep it renewed."""
        node = await self._claim()
        if node is None:
            raise RuntimeError(
                f"all {NODES} id node numbers are held (table id_nodes on "
                f"{self._db.name}): stop a process that mints ids, or wait until a dead "
                "process's lease expires"
            )
        self._task = asyncio.create_task(self._keep(), name=f"id-node-lease-{node}")
        return node

    async def stop(self) -> None:
        """Stop renewing and release the number for another process."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        node, self._node = self._node, None
        if node is None:
            return
        self._ids.set_node(None)
        try:
            async with self._db.write() as tx:
                await tx.conn.execute(
                    delete(id_nodes).where(
                        id_nodes.c.node == node, id_nodes.c.holder == self.holder
                    )
                )
        except Exception as exc:  # it expires on its own: nothing is minted under it any more
            log.warning("id_node_release_failed", node=node, error=repr(exc)[:200])
        else:
            log.info("id_node_released", node=node, holder=self.holder)

    # -- claiming and renewing -----------------------------------------------------------

    async def _claim(self) -> int | None:
        now = utcnow()
        expires_at = now + self._lease
        async with self._db.read_on_primary("id_nodes") as conn:
            rows = (await conn.execute(select(id_nodes.c.node, id_nodes.c.expires_at))).all()
        held = {row.node: row.expires_at for row in rows}
        # a free number: the primary key lets one claimant in, the others find it taken
        for node in (n for n in range(NODES) if n not in held):
            async with self._db.write() as tx:
                result = await tx.conn.execute(
                    insert_new(self._db.dialect, id_nodes).values(
                        node=node, holder=self.holder, expires_at=expires_at
                    )
                )
            if result.rowcount == 1:
                return self._took(node, expires_at, taken_over=None)
        # an expired number: only one conditional update can match the expired row
        for node in sorted(n for n, at in held.items() if at < now):
            async with self._db.write() as tx:
                result = await tx.conn.execute(
                    update(id_nodes)
                    .where(id_nodes.c.node == node, id_nodes.c.expires_at < now)
                    .values(holder=self.holder, expires_at=expires_at)
                )
            if result.rowcount == 1:
                return self._took(node, expires_at, taken_over=held[node])
        return None

    def _took(self, node: int, expires_at: datetime, *, taken_over: datetime | None) -> int:
        self._node, self._expires_at = node, expires_at
        self._ids.set_node(node)
        log.info(
            "id_node_claimed",
            node=node,
            holder=self.holder,
            expired_lease=str(taken_over) if taken_over is not None else None,
        )
        return node

    async def _renew(self, node: int) -> bool:
        """True while the row is still ours; False if another process has taken it."""
        expires_at = utcnow() + self._lease
        async with self._db.write() as tx:
            result = await tx.conn.execute(
                update(id_nodes)
                .where(id_nodes.c.node == node, id_nodes.c.holder == self.holder)
                .values(expires_at=expires_at)
            )
        if result.rowcount == 1:
            self._expires_at = expires_at
            return True
        return False

    def _drop(self, event: str, **fields: object) -> None:
        log.error(event, node=self._node, holder=self.holder, **fields)
        self._node = None
        self._ids.set_node(None)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            node = self._node
            try:
                if node is None:
                    if await self._claim() is None:
                        log.warning("id_node_none_free", nodes=NODES)
                elif not await self._renew(node):
                    self._drop("id_node_lost", reason="another process holds it now")
            except Exception as exc:
                if node is None:
                    log.warning("id_node_claim_failed", error=repr(exc)[:200])
                # the next renewal would come too late: stop minting before the lease can
                # lapse and another process take the number
                elif utcnow() + timedelta(seconds=self._interval) >= self._expires_at:
                    self._drop("id_node_lease_expiring", error=repr(exc)[:200])
                else:
                    log.warning("id_node_renew_failed", node=node, error=repr(exc)[:200])
