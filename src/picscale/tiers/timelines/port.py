"""What a timeline store does. A timeline is *warm* once built (by a read that found it
cold) and until it has not been read for its TTL; fan-out pushes only into warm ones, so
the cost of an upload is the number of followers who read their feed lately."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class TimelinesUnavailable(Exception):
    """The store cannot be reached for now (a Redis failover): feeds are pulled."""


class TimelineStore(Protocol):
    async def read(self, user_id: int, before: int | None, count: int) -> list[int] | None:
        """Up to ``count`` ids older than ``before``, newest first; None when cold."""
        ...

    async def build(self, user_id: int, photo_ids: Sequence[int]) -> None:
        """The timeline made anew from ``photo_ids`` (a pull), and warm."""
        ...

    async def push(self, user_ids: Sequence[int], photo_id: int) -> int:
        """``photo_id`` into the timelines of those of ``user_ids`` that are warm;
        returns how many took it."""
        ...

    async def drop(self, user_id: int) -> None:
        """Cold again (a follow or unfollow changes what it should hold)."""
        ...

    async def close(self) -> None: ...
