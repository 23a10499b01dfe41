"""Job events: how a change a worker makes to a job reaches the web process streaming it.

An event carries no state, only "job N changed": the ``jobs`` row stays the truth and
the streaming side re-reads it, so a lost or duplicated event costs at most a moment's
delay (the stream also re-reads on a timer). Backends: ``redis`` (across hosts) and
``local`` (a counter in the data directory, for processes on one host).
"""

from __future__ import annotations

from typing import Protocol


class JobEvents(Protocol):
    async def notify(self, job_id: int) -> None:
        """Job ``job_id`` changed (never raises: an event is a hint)."""
        ...

    async def wait(self, job_id: int, seconds: float) -> None:
        """Until job ``job_id`` may have changed, or ``seconds`` have passed."""
        ...

    async def close(self) -> None: ...
