"""Job events between processes on one host: workers bump ``<data>/job-epoch`` (a
memory-mapped counter, as the cache does); streams notice within milliseconds. Without a
shared data directory (PostgreSQL on several hosts) streams re-read every second."""

from __future__ import annotations

import asyncio
import time

from picscale.tiers.epoch import EpochFile

EPOCH_CHECK_SECONDS = 0.02


class LocalJobEvents:
    def __init__(self, epoch: EpochFile | None) -> None:
        self._epoch = epoch

    async def notify(self, job_id: int) -> None:
        if self._epoch is not None:
            self._epoch.bump()

    async def wait(self, job_id: int, seconds: float) -> None:
        if self._epoch is None:
            await asyncio.sleep(min(seconds, 1.0))
            return
        seen = self._epoch.read()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._epoch.read() != seen:
                return
            await asyncio.sleep(EPOCH_CHECK_SECONDS)

    async def close(self) -> None:
        return None
