"""A render job run twice (at-least-once delivery) makes exactly one version."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import func, select, update

from picscale.data.schema import jobs, photo_versions
from picscale.imaging import Blur, Operation, Rendered, render
from picscale.jobs.render_version import KIND as RENDER_JOB
from picscale.services import build_services
from picscale.settings import load_settings
from picscale.tiers.db.migrate import upgrade
from picscale.worker import Worker
from tests.support.images import image_bytes
from tests.support.waiting import async_wait_until


async def test_running_a_job_twice_makes_one_version(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=tmp_path, job_workers=0)
    await asyncio.to_thread(upgrade, settings)
    services = build_services(settings)
    await services.start()

    async def renderer(source: bytes, ops: Sequence[Operation], max_pixels: int) -> Rendered:
        return await asyncio.to_thread(render, source, ops, max_pixels=max_pixels)

    worker = Worker(services, render=renderer)  # in this process: no pool to start
    try:
        user = await services.users.sign_up("twice", "password123", None)
        photo = await services.photos.upload(user, image_bytes(320, 240), "")
        first = await services.queue.claim("w1")
        assert first is not None and first.kind == RENDER_JOB
        assert await worker.process(first) == "done"
        spread = await services.queue.claim("w1")  # the upload's fan-out into timelines
        assert spread is not None and spread.kind == "fan_out"
        assert await worker.process(spread) == "done"
        edit = await services.photos.request_edit(user, photo.id, [Blur(sigma=2)])
        job = await services.queue.claim("w1")
        assert job is not None and job.id == edit.id

        # the same job delivered again, e.g. after a lost acknowledgement
        assert await worker.process(job) == "done"
        async with services.shards.write(job.id) as tx:
            await tx.conn.execute(update(jobs).where(jobs.c.id == job.id).values(status="running"))
        assert await worker.process(job) == "done"

        async with services.shards.read(photo.id) as conn:
            count = await conn.scalar(
                select(func.count())
                .select_from(photo_versions)
                .where(photo_versions.c.photo_id == photo.id)
            )
            status = await conn.scalar(select(jobs.c.status).where(jobs.c.id == job.id))
        assert count == 2  # version 1 from the upload, version 2 from the edit, once
        assert status == "done"
        current = await services.photos.require(photo.id)
        assert current.version == 2
    finally:
        await services.close()


async def test_worker_process_loop_runs_a_job(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=tmp_path, job_concurrency=1, job_poll_seconds=0.01)
    await asyncio.to_thread(upgrade, settings)
    services = build_services(settings)
    await services.start()
    stop = asyncio.Event()
    try:
        user = await services.users.sign_up("looper", "password123", None)
        photo = await services.photos.upload(user, image_bytes(320, 240), "")
        worker = Worker(services)
        task = asyncio.create_task(worker.run(stop))

        async def ready() -> bool:
            return (await services.photos.require(photo.id)).status == "ready"

        await async_wait_until(ready, within=60, what="the worker to render the upload")

        async def idle() -> bool:  # the upload's fan-out job too
            return worker.running == set()

        await async_wait_until(idle, within=60, what="the worker to finish its jobs")
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    finally:
        stop.set()
        await services.close()
