"""``render_version``: make one version of a photo (its variants, from the upload through
the whole chain of edits: no generation loss), and make it the photo's current one.

Idempotent: the version number is reserved when the job is queued, so a second run
writes the same media keys and its ``photo_versions`` row is left out as a duplicate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from picscale.data.photos import PhotoRepository
from picscale.domain.cache_keys import photo_changed
from picscale.domain.media import VARIANTS, photo_prefix, source_key, variant_key
from picscale.imaging import ImageRejected, Operation, Rendered
from picscale.jobs.handler import Completion, JobRefused
from picscale.tiers.cache import Cache
from picscale.tiers.db.shards import Shards
from picscale.tiers.queue import ClaimedJob, NewJob
from picscale.tiers.storage import MediaStore

KIND = "render_version"

Renderer = Callable[[bytes, Sequence[Operation], int], Awaitable[Rendered]]

_operations = msgspec.json.Decoder(list[Operation])


def new_job(
    job_id: int, *, photo_id: int, owner_id: int, version: int, operations: list[Any]
) -> NewJob:
    """The job making ``version`` of a photo from its upload with ``operations`` (the
    whole chain, as builtins)."""
    return NewJob(
        id=job_id,
        kind=KIND,
        payload={"photo_id": photo_id, "version": version, "operations": operations},
        photo_id=photo_id,
        owner_id=owner_id,
    )


class RenderVersion:
    kind: str = KIND
    time_limit: float | None = None

    def __init__(
        self,
        shards: Shards,
        cache: Cache,
        storage: MediaStore,
        render: Renderer,
        *,
        max_pixels: int,
    ) -> None:
        self._shards = shards
        self._photos = PhotoRepository(shards)
        self._cache = cache
        self._storage = storage
        self._render = render
        self._max_pixels = max_pixels

    async def run(self, job: ClaimedJob, completion: Completion) -> dict[str, Any]:
        photo_id = int(job.payload["photo_id"])
        version = int(job.payload["version"])
        operations = _operations.decode(msgspec.json.encode(job.payload["operations"]))
        # on the primary: the job must see the request that queued it
        photo = await self._photos.get_on_primary(photo_id)
        if photo is None or await self._photos.has_version(photo_id, version):
            return {"version": version, "skipped": True}
        source = await self._storage.get(source_key(photo_id))
        try:
            rendered = await self._render(source, operations, self._max_pixels)
        except ImageRejected as exc:
            raise JobRefused(exc.message) from None
        for variant in VARIANTS:
            await self._storage.put(
                variant_key(photo_id, version, variant, rendered.format.extension),
                rendered.variants[variant],
                rendered.format.content_type,
            )
        result: dict[str, Any] = {
            "version": version,
            "width": rendered.width,
            "height": rendered.height,
        }
        async with completion.storing(result) as tx:
            current = await self._photos.current_version(tx, photo_id)
            if current is None:  # deleted while we rendered: leave nothing behind
                result["skipped"] = True

                async def drop_media() -> None:
                    await self._storage.delete_prefix(photo_prefix(photo_id))

                tx.after_commit(drop_media)
                return result
            stored = await self._photos.add_version(
                tx,
                photo_id=photo_id,
                version=version,
                width=rendered.width,
                height=rendered.height,
                job_id=job.id,
                operations=job.payload["operations"],
            )
            if not stored:  # another run of this job stored it first: that is our result
                result["duplicate"] = True
                return result
            if version > current:
                await self._photos.make_current(
                    tx, photo_id, version, rendered.width, rendered.height
                )
            await self._cache.invalidate(
                tx, photo_changed(photo_id, photo.owner_id, photo.owner_username)
            )
        return result

    async def dead(self, job: ClaimedJob) -> None:
        """A photo whose first version could not be made says so."""
        photo_id = int(job.payload["photo_id"])
        async with self._shards.write(photo_id) as tx:
            photo = await self._photos.mark_failed(tx, photo_id)
            if photo is not None:
                await self._cache.invalidate(
                    tx, photo_changed(photo_id, photo.owner_id, photo.owner_username)
                )
