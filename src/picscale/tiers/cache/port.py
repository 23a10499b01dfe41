"""The cache port: what every cache backend does, and the values it stores.

Values are cached wrapped in ``Found`` so that a cached "not found" (``Found(None)``) is
told apart from a miss (no entry at all).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from picscale.tiers.db import WriteTx

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Found(Generic[T]):
    value: T | None


class CacheBackend(Protocol):
    async def stats(self) -> dict[str, float]:
        """Figures of the store itself (entries, evictions, memory), for metrics."""
        ...

    async def get_many(self, keys: Sequence[str]) -> dict[str, Found[Any]]: ...

    def generation(self) -> int:
        """A number that changes whenever this process drops entries (see ``set_many``)."""
        ...

    async def set_many(
        self, items: Mapping[str, Found[Any]], ttl: float, since: int | None = None
    ) -> None:
        """Store ``items``, unless entries were dropped after ``generation()`` was ``since``:
        a value loaded while an invalidation went by may already be stale."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> None: ...

    def invalidate(self, tx: WriteTx, keys: Sequence[str]) -> Awaitable[None]:
        """Arrange for ``keys`` to be deleted once ``tx`` commits (and in every process)."""
        ...

    async def sync(self) -> None:
        """Catch up on invalidations made by other processes; called once per request."""
        ...

    async def claim_fill(self, key: str) -> bool:
        """Whether this process should load ``key`` now: False if another process is
        loading it (a shared cache's stampede lock). Unshared caches always say True."""
        ...

    async def release_fill(self, key: str) -> None: ...

    async def close(self) -> None: ...
