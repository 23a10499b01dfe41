"""A bounded LRU with per-entry expiry: the embedded cache's store, and Redis's near cache."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from picscale.tiers.cache.port import Found


class LruCache:
    """Bounded LRU with per-entry expiry; one process, one event loop."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, Found[Any]]] = OrderedDict()
        self.evictions = 0  # entries pushed out to make room (not expiries)

    def get(self, key: str) -> Found[Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def set(self, key: str, value: Found[Any], ttl: float) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
            self.evictions += 1

    def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
