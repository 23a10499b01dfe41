"""What a job carries from the request that queued it, on every queue backend."""

from __future__ import annotations

from typing import Any

import structlog

from picscale.tiers.db.read_your_writes import stamp_job


def traced(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with the current request's id (the job's log lines carry it too) and
    WAL position (the job reads what the request saw, whichever replica serves it)."""
    out = stamp_job(payload)
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id:
        out["request_id"] = request_id
    return out
