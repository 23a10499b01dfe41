"""What a job kind declares, and what the worker hands it when the job runs.

Each kind is one module of this package: its ``KIND``, a constructor for the job
(``new_job``: its payload and limits) and a handler with ``run`` (the work) and
``dead`` (what its failure for good means to users). The worker claims jobs, runs the
handler under the kind's time limit, and owns the outcome: it marks a job done in the
transaction that stores the result, or records the failure and retries it later.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from picscale.tiers.db import WriteTx
from picscale.tiers.queue import ClaimedJob


class JobRefused(Exception):
    """The job can never succeed (its input is bad): it is dead at once, not retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Completion(Protocol):
    def storing(self, result: dict[str, Any]) -> AbstractAsyncContextManager[WriteTx]:
        """A transaction in which the handler stores what the job made; the job is marked
        done with ``result`` (as it is when the block ends) in the same transaction. A
        job delivered again after that finds its work stored and does nothing twice."""
        ...


class JobHandler(Protocol):
    kind: str
    time_limit: float | None  # seconds a run may take (None: the worker's setting)

    async def run(self, job: ClaimedJob, completion: Completion) -> dict[str, Any]:
        """Do the job; returns its result. A handler that stores rows does so through
        ``completion.storing``; otherwise the worker marks the job done with the result.
        Raises JobRefused for input that can never work; anything else is retried."""
        ...

    async def dead(self, job: ClaimedJob) -> None:
        """The job ran out of attempts (or was refused): tell whoever waits for it."""
        ...
