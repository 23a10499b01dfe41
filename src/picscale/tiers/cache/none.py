"""``none://``: every read goes to the database (for measurements and debugging)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from picscale.tiers.cache.port import Found
from picscale.tiers.db import WriteTx


class NoCache:
    """Caches nothing."""

    async def stats(self) -> dict[str, float]:
        return {}

    async def get_many(self, keys: Sequence[str]) -> dict[str, Found[Any]]:
        return {}

    def generation(self) -> int:
        return 0

    async def set_many(
        self, items: Mapping[str, Found[Any]], ttl: float, since: int | None = None
    ) -> None:
        return None

    async def delete_many(self, keys: Sequence[str]) -> None:
        return None

    async def invalidate(self, tx: WriteTx, keys: Sequence[str]) -> None:
        return None

    async def sync(self) -> None:
        return None

    async def claim_fill(self, key: str) -> bool:
        return True  # single-flight within the process is all an unshared cache needs

    async def release_fill(self, key: str) -> None:
        return None

    async def close(self) -> None:
        return None
