"""Copy every media object from one store to another (``picscale media migrate``).

Each object is read from the source and hashed (SHA-256); one already at the
destination with the same size and checksum is skipped, so an interrupted run can
simply be run again. Each copied object is read back from the destination and its
checksum compared with the source's: a mismatch is a failure, reported by key.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from picscale.tiers.storage.port import (
    MediaInfo,
    MediaNotFound,
    MediaStore,
    content_type_for,
)

Outcome = Literal["copied", "skipped", "gone", "failed"]


@dataclass(frozen=True, slots=True)
class Progress:
    done: int  # objects handled so far, this one included
    total: int
    key: str
    size: int
    outcome: Outcome
    bytes_done: int
    bytes_total: int
    detail: str = ""


@dataclass(slots=True)
class MigrationReport:
    total: int = 0
    total_bytes: int = 0
    copied: int = 0
    copied_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    gone: int = 0  # deleted from the source while the copy ran (a photo deleted meanwhile)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


async def sha256_of(store: MediaStore, key: str) -> tuple[str, int]:
    """Hex SHA-256 and size of an object, read through in chunks."""
    digest, size = hashlib.sha256(), 0
    async with await store.open(key) as stream:
        async for chunk in stream:
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def _copy_one(source: MediaStore, target: MediaStore, info: MediaInfo) -> Outcome:
    key = info.key
    sha256, size = await sha256_of(source, key)
    present = await target.stat(key)
    if present is not None and present.size == size:
        stored = present.sha256 or (await sha256_of(target, key))[0]
        if stored == sha256:
            return "skipped"
    async with await source.open(key) as stream:
        content_type = stream.info.content_type or content_type_for(key)
        await target.put_stream(key, stream, size=size, content_type=content_type, sha256=sha256)
    try:
        back, back_size = await sha256_of(target, key)
    except MediaNotFound:
        raise OSError("the destination does not have it after the copy") from None
    if (back, back_size) != (sha256, size):
        raise OSError(
            f"read back {back_size} bytes with SHA-256 {back}; "
            f"the source has {size} bytes with SHA-256 {sha256}"
        )
    return "copied"


async def migrate_media(
    source: MediaStore,
    target: MediaStore,
    *,
    progress: Callable[[Progress], None] = lambda _: None,
    concurrency: int = 4,
) -> MigrationReport:
    """Copy, skip or report every object of ``source``; ``progress`` hears of each."""
    objects = [info async for info in source.iter_objects()]
    report = MigrationReport(total=len(objects), total_bytes=sum(i.size for i in objects))
    pending = iter(objects)
    handled = 0
    bytes_done = 0

    async def worker() -> None:
        nonlocal handled, bytes_done
        for info in pending:  # shared: each object goes to one worker
            detail = ""
            try:
                outcome = await _copy_one(source, target, info)
            except MediaNotFound:
                outcome = "gone"
            except Exception as exc:  # one object's failure is reported, the rest go on
                outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
            handled += 1
            bytes_done += info.size
            if outcome == "copied":
                report.copied += 1
                report.copied_bytes += info.size
            elif outcome == "skipped":
                report.skipped += 1
                report.skipped_bytes += info.size
            elif outcome == "gone":
                report.gone += 1
            else:
                report.failed.append((info.key, detail))
            progress(
                Progress(
                    handled,
                    report.total,
                    info.key,
                    info.size,
                    outcome,
                    bytes_done,
                    report.total_bytes,
                    detail,
                )
            )

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return report
