"""No edge (``PICSCALE_CDN_URL`` empty): URLs are origin-relative, purges do nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


class NoEdge:
    def base_url(self) -> str:
        return ""

    async def purge(self, keys: Sequence[str]) -> None:
        return None

    async def watch(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def close(self) -> None:
        return None
