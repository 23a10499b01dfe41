"""Persistence: one data-access module per aggregate, the only code that builds SQL.

Each repository is given the database. Its reads open their own connection (a replica
may serve them, as read-your-writes allows); its writes take the transaction that the
calling action opened (``Database.write()``), so that one action is one transaction,
with its checks inside it. Stage 9 routes these by shard, stage 10 by data centre: no
other module reaches the database.

- ``schema``: the tables (Alembic's migrations are the source of truth).
- ``users``, ``photos`` (with their versions), ``follows``: the domain's aggregates.
- ``login_failures``: the log-in throttle's counters.
- ``sessions``: the embedded session store's table.
- ``jobs``: the job queue's table (state, outbox, dead letters) for every queue backend.
- ``invalidations``: the embedded cache's shared invalidation log.
"""
