"""/api/v1/jobs: a job's progress, read once or followed live (Server-Sent Events)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, get
from litestar.response import ServerSentEvent, ServerSentEventMessage

from picscale.web.auth import ProtectedController, current_user, services_of
from picscale.web.schemas import JobOut
from picscale.web.shared import parse_id

JOB_STREAM_SECONDS = 600.0  # a stream ends after this; EventSource reconnects
JOB_RECHECK_SECONDS = 5.0  # re-read the job at least this often, event or not


class JobsController(ProtectedController):
    path = "/jobs"

    @get("/{job_id:str}", summary="A job's progress")
    async def job(self, request: Request[Any, Any, Any], job_id: str) -> JobOut:
        user = await current_user(request)
        return JobOut.of(await services_of(request).photos.job(parse_id(job_id, "job"), user))

    @get(
        "/{job_id:str}/events",
        summary="A job's progress, live (Server-Sent Events)",
        description=(
            "An `event: status` message with the job (as `GET /jobs/{id}`) now and on every "
            "change; the stream ends after `done` or `failed` (or after ten minutes: "
            "reconnect)."
        ),
    )
    async def job_events(self, request: Request[Any, Any, Any], job_id: str) -> ServerSentEvent:
        user = await current_user(request)
        services = services_of(request)
        ident = parse_id(job_id, "job")
        first = await services.photos.job(ident, user)  # someone else's job: 404 here

        async def stream() -> AsyncIterator[ServerSentEventMessage]:
            job, last, sent = first, None, 0
            deadline = time.monotonic() + JOB_STREAM_SECONDS
            while True:
                state = (job.status, job.attempts, job.version, job.error)
                if state != last:
                    last, sent = state, sent + 1
                    body = msgspec.json.encode(JobOut.of(job)).decode()
                    yield ServerSentEventMessage(data=body, event="status", id=sent)
                if job.status in ("done", "failed") or time.monotonic() > deadline:
                    return
                await services.events.wait(ident, JOB_RECHECK_SECONDS)
                job = await services.photos.job(ident, user)

        return ServerSentEvent(stream(), headers={"Cache-Control": "no-store"})
